"""Run checkpoints with orbax: the trainable state and where the run stands; never CLIP weights."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
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
    """Drops orbax's error logs (each with a traceback) of a failing save: the error they describe is raised to
    the caller, which reports it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def _closed_loop_quiet(hook: Callable) -> Callable:
    """`hook` without the "Event loop is closed" RuntimeErrors that tensorstore prints (through sys.excepthook)
    when a write of a failed save completes after orbax closed the save's event loop."""
    def quiet(kind, value, tb):
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            hook(kind, value, tb)
    return quiet


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
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep), create=True)
        with self._faults("create"):
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    @contextlib.contextmanager
    def _faults(self, doing: str) -> Iterator[None]:
        quiet = _OrbaxErrorLogs()
        logging.getLogger("absl").addFilter(quiet)
        hook = sys.excepthook
        sys.excepthook = _closed_loop_quiet(hook)
        try:
            with paths.faults_named(self.directory, doing):
                yield
        except BaseException:
            raise      # the quiet hook stays: tensorstore's callbacks of the failed write may still fire
        else:
            sys.excepthook = hook
        finally:
            logging.getLogger("absl").removeFilter(quiet)

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
