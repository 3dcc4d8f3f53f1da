"""Run logs: progress (aple_jax/progress.py), metrics as JSONL and TensorBoard (docs/logs.md: the row schema)."""
from __future__ import annotations

import json
import os
from typing import Any

import jax

from aple_jax.progress import make_progress


class MetricWriter:
    """Writes `metrics.jsonl` and TensorBoard events in the run directory (process 0 only)."""

    def __init__(self, workdir: str, total_steps: int, initial_step: int = 0, enabled: bool | None = None,
                 progress: bool = True, progress_every_seconds: float = 30.0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        self.progress = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
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
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch"}
        for key, value in scalars.items():
            self.tb.add_scalar(f"{metrics.get('phase', 'eval')}/{key}", value, step)
        if self.progress is not None and "loss" in metrics:
            self.progress.metrics(metrics.get("epoch"), metrics["loss"], metrics.get("accuracy"))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.tb is not None:
            self.tb.close()
