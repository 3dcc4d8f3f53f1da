"""Run checkpoints with orbax: the trainable state and where the run stands; never CLIP weights."""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from aple_jax import paths


class RunCheckpoints:
    """An orbax CheckpointManager in `<workdir>/checkpoints`, keyed by the global step."""

    def __init__(self, workdir: paths.PathLike, keep: int = 2):
        workdir = workdir if paths.is_remote(workdir) else os.path.abspath(workdir)
        self.directory = paths.join(workdir, "checkpoints")     # an epath: local or gs://
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep), create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_meta(self, step: int) -> dict[str, Any]:
        """Where the run stood at `step` (phase, epoch, data-iterator state, ...)."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_state(self, step: int, like: Any) -> Any:
        """The state saved at `step`, with the structure, shapes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return restored["state"]

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> "RunCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
