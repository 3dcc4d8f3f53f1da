"""Dassl checkpoint files (`<output>/<ModelName>/model.pth.tar-<epoch>`): read and write; torch is needed only here.

Dassl's `save_checkpoint` pickles a dict with `state_dict`, `epoch`, `optimizer`, `scheduler` (and, in newer
releases, `val_result`) and writes a `checkpoint` text file naming the newest file beside it. A file is data, never
code: it is read by torch's `weights_only` unpickler (tensors, plain containers) with inert stand-ins for the
optimizer and scheduler objects Dassl pickles (`DASSL_OBJECTS`; prompts never need them), and any other class or
function it names is refused by name (`aple_jax/pickles.py`). Storages tagged `cuda:0` load on the CPU.
"""
from __future__ import annotations

import dataclasses
import io
import re
from typing import Any

import numpy as np

from aple_jax import paths, pickles
from aple_jax.errors import CheckpointError, StorageError

TORCH_PIN = "torch==2.13.0"
# File names the official code writes or users pass: model.pth.tar-5, model-best.pth.tar, a bare state dict.
CHECKPOINT_NAME = re.compile(r"^(model\.pth\.tar-\d+|model-best\.pth\.tar|.+\.pth|.+\.pt|.+\.pth\.tar)$")
# The objects Dassl's save_checkpoint pickles besides tensors: the scheduler's state holds its successor scheduler
# (and that the optimizer), built by dassl.optim's build_optimizer / build_lr_scheduler. Each is read as an inert
# stand-in; nothing in them is used.
DASSL_OBJECTS = (
    "torch.optim.sgd.SGD", "torch.optim.adam.Adam", "torch.optim.adamw.AdamW", "torch.optim.rmsprop.RMSprop",
    "dassl.optim.radam.RAdam", "dassl.optim.radam.PlainRAdam", "dassl.optim.radam.AdamW",
    "torch.optim.lr_scheduler.StepLR", "torch.optim.lr_scheduler.MultiStepLR",
    "torch.optim.lr_scheduler.CosineAnnealingLR", "dassl.optim.lr_scheduler.ConstantWarmupScheduler",
    "dassl.optim.lr_scheduler.LinearWarmupScheduler",
)


def is_checkpoint_name(path: paths.PathLike) -> bool:
    """Whether a path is named like an official (PyTorch) checkpoint file."""
    return bool(CHECKPOINT_NAME.match(paths.as_path(path).name))


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise CheckpointError("reading or writing official PyTorch checkpoints needs torch, which is not installed",
                              hint=f"pip install {TORCH_PIN} (the CPU build is enough)") from None
    return torch


@dataclasses.dataclass(frozen=True)
class DasslCheckpoint:
    """The tensors of a checkpoint's state dict as numpy arrays (dtypes as stored) and its epoch."""
    path: str
    state_dict: dict[str, np.ndarray]
    epoch: int | None


def read(path: paths.PathLike) -> DasslCheckpoint:
    """A Dassl checkpoint (a dict with `state_dict`) or a bare state dict, local or gs://."""
    torch = _torch()
    path = paths.as_path(path)
    if not path.exists():
        raise StorageError(f"checkpoint {path} does not exist",
                           hint="official trainers write <output>/<ModelName>/model.pth.tar-<epoch>")
    data = path.read_bytes()
    try:
        obj = pickles.torch_load(data, DASSL_OBJECTS)
    except pickles.RefusedGlobalError as e:
        raise CheckpointError(
            pickles.refusal(path, e, "official checkpoints hold tensors, plain containers and Dassl's optimizer and "
                                     "scheduler objects only"),
            hint="this file was not written by Dassl's save_checkpoint (or was altered); do not run it with torch.load "
                 "either. See docs/errors.md (checkpoint files)") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(f"cannot read PyTorch checkpoint {path}: {type(e).__name__}: {e}",
                              hint="the file is truncated, corrupt or not a PyTorch checkpoint") from None
    epoch = None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        epoch = obj.get("epoch")
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a Dassl checkpoint or a state dict")
    sd = {}
    for key, value in obj.items():
        if not torch.is_tensor(value):
            raise CheckpointError(f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        value = value.detach().cpu()
        sd[key] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return DasslCheckpoint(str(path), sd, int(epoch) if isinstance(epoch, int) else None)


def write(path: paths.PathLike, state_dict: dict[str, np.ndarray], epoch: int, pointer: bool = False) -> None:
    """A checkpoint as Dassl's `save_checkpoint` writes it (no optimizer or scheduler state), written atomically;
    with `pointer`, also the `checkpoint` file beside it that names it."""
    torch = _torch()
    path = paths.as_path(path)
    state = {"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()},
             "epoch": int(epoch), "optimizer": None, "scheduler": None, "val_result": None}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    paths.write_bytes_atomic(path, buffer.getvalue())
    if pointer:
        paths.write_text_atomic(path.parent / "checkpoint", f"{path.name}\n")
