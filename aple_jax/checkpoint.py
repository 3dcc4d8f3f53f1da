"""Run checkpoints with orbax: the trainable state and where the run stands; never CLIP weights."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from typing import Any, Callable, Iterator

import jax
import orbax.checkpoint as ocp

from aple_jax import paths
from aple_jax.errors import CheckpointError, StorageFaultLogs, storage_fault

log = logging.getLogger(__name__)


class BrokenCheckpointWarning(UserWarning):
    """The newest checkpoint could not be restored; the run goes on from an older one."""


class _OrbaxErrorLogs(logging.Filter):
    """Drops the error logs (each with a traceback) of orbax's background saves, and asyncio's of their tasks: orbax
    raises each error again in the caller, which reports it once (one line, or a traceback for a bug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        error_tb = record.exc_info[2] if record.exc_info else None
        return not (f"{os.sep}orbax{os.sep}" in record.pathname or _through_orbax(error_tb))


def _closed_loop(error: BaseException | None) -> bool:
    """tensorstore's report of a write that completed after orbax closed the save's event loop (a failed save)."""
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _through_orbax(tb: Any) -> bool:
    while tb is not None:
        if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _quiet_hooks() -> None:
    """Drops, process-wide, what orbax's and tensorstore's background threads print of a failed save: orbax raises
    the error again in the caller (one line at the boundary, or a traceback for a bug), and the "Event loop is
    closed" callbacks that tensorstore fires late (through sys.excepthook or sys.unraisablehook) tell nothing
    more."""
    if getattr(sys.excepthook, "aple_jax_quiet", False):
        return
    process_hook, thread_hook, unraisable_hook = sys.excepthook, threading.excepthook, sys.unraisablehook
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_OrbaxErrorLogs())

    def unraisable_quiet(unraisable):
        if not _closed_loop(unraisable.exc_value):
            unraisable_hook(unraisable)

    def process_quiet(kind, value, tb):
        if not _closed_loop(value):
            process_hook(kind, value, tb)

    def thread_quiet(args):
        if not (_closed_loop(args.exc_value) or _through_orbax(args.exc_traceback)):
            thread_hook(args)

    process_quiet.aple_jax_quiet = True
    sys.excepthook, threading.excepthook, sys.unraisablehook = process_quiet, thread_quiet, unraisable_quiet


# orbax's asyncio futures of a failed write are logged again when collected ("exception was never retrieved").
for _name in ("asyncio", "absl"):
    logging.getLogger(_name).addFilter(StorageFaultLogs())


class RunCheckpoints:
    """An orbax CheckpointManager in `<workdir>/checkpoints`, keyed by the global step.

    A storage fault (full or read-only disk, unreachable server) while saving or listing is one StorageFaultError
    naming the directory; orbax writes each step into a temporary directory first, so the steps saved before stay
    whole.
    """

    def __init__(self, workdir: paths.PathLike, keep: int = 2):
        workdir = workdir if paths.is_remote(workdir) else os.path.abspath(workdir)
        self.directory = paths.join(workdir, "checkpoints")     # an epath: local or gs://
        if paths.is_remote(workdir):
            from aple_jax import gcs
            gcs.bound_orbax_retries()
        _quiet_hooks()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep), create=True)
        with self._faults("create"):
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    @contextlib.contextmanager
    def _faults(self, doing: str) -> Iterator[None]:
        with paths.faults_named(self.directory, doing):
            yield

    def latest_step(self) -> int | None:
        with self._faults("read"):
            return self.manager.latest_step()

    def restore_meta(self, step: int) -> dict[str, Any]:
        """Where the run stood at `step` (phase, epoch, data-iterator state, ...)."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_state(self, step: int, like: Any) -> Any:
        """The state saved at `step`, with the structure, shapes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return restored["state"]

    def restore_newest(self, like: Callable[[dict[str, Any]], Any],
                       delete: bool = True) -> tuple[int, dict[str, Any], Any] | None:
        """(step, meta, state) of the newest checkpoint that restores, `like(meta)` giving the state's structure;
        None when there is none. A newer one that does not restore (a truncated or half-written file) is named in
        a warning and, with `delete` (training, which saves its step afresh), deleted; else it is left as it is."""
        with self._faults("read"):
            steps = sorted(self.manager.all_steps(), reverse=True)
        errors = []
        for step in steps:
            try:
                meta = self.restore_meta(step)
                return step, meta, self.restore_state(step, like(meta))
            except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds for a broken file
                fault = storage_fault(e, str(self.directory / str(step)), "read checkpoint")
                if fault is not None:   # the storage failed, not the file: delete nothing
                    raise fault from e
                errors.append(f"step {step}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
                if step == steps[-1]:
                    break
                msg = (f"checkpoint step {step} in {self.directory} cannot be restored ({errors[-1]}); " +
                       ("it is deleted and the run resumes from the newest older checkpoint" if delete else
                        "the newest older checkpoint is used"))
                log.warning(msg)
                warnings.warn(msg, BrokenCheckpointWarning, stacklevel=2)
                if delete:
                    self.manager.delete(step)
        if not steps:
            return None
        raise CheckpointError(f"no checkpoint in {self.directory} can be restored ({'; '.join(errors)})",
                              hint=f"delete {self.directory} to start the run afresh, or use the same config "
                                   f"that made it")

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        with self._faults(f"write checkpoint step {step} in"):
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)), force=True)
            self.manager.wait_until_finished()

    def close(self) -> None:
        with self._faults("close"):
            self.manager.close()

    def __enter__(self) -> "RunCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
