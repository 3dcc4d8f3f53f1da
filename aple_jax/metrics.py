"""Run logs: progress (aple_jax/progress.py), metrics as JSONL and TensorBoard (docs/logs.md: the row schema)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from typing import Any

import jax

from aple_jax import paths
from aple_jax.errors import storage_faults
from aple_jax.progress import make_progress

REMOTE_FLUSH_SECONDS = 30.0   # a bucket's metrics.jsonl and events are rewritten at most this often between flushes


class MetricWriter:
    """Writes `metrics.jsonl` and TensorBoard events in the run directory (process 0 only).

    In a bucket, where objects cannot be appended to, the rows are kept in memory and the whole object is
    rewritten by `flush()` (at each checkpoint, every REMOTE_FLUSH_SECONDS and at close); TensorBoard events are
    written to a local folder and uploaded to `<workdir>/tensorboard` at the same points.
    """

    def __init__(self, workdir: paths.PathLike, total_steps: int, initial_step: int = 0, enabled: bool | None = None,
                 progress: bool = True, progress_every_seconds: float = 30.0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = paths.join(workdir, "metrics.jsonl")
        self.tb_dir = paths.join(workdir, "tensorboard")
        self.remote = paths.is_remote(workdir)
        self.rows: list[str] = []
        self.flushed_at = time.monotonic()
        self.tb = None
        self.progress = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter
        if self.remote:
            self.rows = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
            self.tb_local = tempfile.mkdtemp(prefix="aple_jax_tb_")
        self.tb = SummaryWriter(self.tb_local if self.remote else os.fspath(self.tb_dir))
        self.progress = make_progress(total_steps, initial_step, progress, progress_every_seconds)

    def start_phase(self, name: str, index: int, step: int, epochs: int = 0) -> None:
        if self.progress is not None:
            self.progress.start_phase(name, index, step, epochs)

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.advance(step)

    def end_epoch(self, epoch: int, step: int) -> None:
        """Epoch `epoch` (1-based, within its phase) ended at `step`: a progress line in a log file."""
        if self.progress is not None:
            self.progress.end_epoch(epoch, step)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = json.dumps({"step": step, **metrics}) + "\n"
        if self.remote:
            self.rows.append(row)
        else:
            with storage_faults(self.path), open(self.path, "a") as f:
                f.write(row)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch"}
        for key, value in scalars.items():
            self.tb.add_scalar(f"{metrics.get('phase', 'eval')}/{key}", value, step)
        if self.progress is not None and "loss" in metrics:
            self.progress.metrics(metrics.get("epoch"), metrics["loss"], metrics.get("accuracy"))
        if self.remote and time.monotonic() - self.flushed_at > REMOTE_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Makes every row and event written so far durable (in a bucket: one upload of each object)."""
        if self.tb is None:
            return
        with storage_faults(self.tb_local if self.remote else self.tb_dir):
            self.tb.flush()
        if self.remote:
            paths.write_text_atomic(self.path, "".join(self.rows))
            for name in os.listdir(self.tb_local):
                with open(os.path.join(self.tb_local, name), "rb") as f:
                    paths.write_bytes_atomic(self.tb_dir / name, f.read())
            self.flushed_at = time.monotonic()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.tb is not None:
            try:
                self.flush()
            except BaseException:
                self._drop_events()
                raise
            self.tb.close()
            self.tb = None

    def abandon(self) -> None:
        """Ends the logs of a run that stops on an error (which may be its disk's): writes what can be written,
        raises nothing, and leaves no TensorBoard thread or exit hook to write again."""
        if self.progress is not None:
            self.progress.close()
        if self.tb is not None:
            with contextlib.suppress(Exception):
                self.flush()
            self._drop_events()

    def _drop_events(self) -> None:
        """After a failed flush (a full or read-only disk): marks the TensorBoard writer closed without writing
        again, so that neither its exit hook nor its worker thread prints a traceback after the run's error line."""
        events = self.tb.file_writer.event_writer
        events._closed = True
        with contextlib.suppress(Exception):
            events._worker.stop()        # ends its thread now, not reading a queue closed at exit
        self.tb = None
