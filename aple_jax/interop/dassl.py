"""Dassl checkpoint files (`<output>/<ModelName>/model.pth.tar-<epoch>`): read and write; torch is needed only here.

Dassl's `save_checkpoint` pickles a dict with `state_dict`, `epoch`, `optimizer`, `scheduler` (and, in newer
releases, `val_result`) and writes a `checkpoint` text file naming the newest file beside it. Official files hold a
pickled scheduler object, so they cannot be read with `weights_only=True`: such a file is unpickled in full, as the
official `load_checkpoint` does (read only checkpoints you trust). Storages tagged `cuda:0` load on the CPU.
"""
from __future__ import annotations

import dataclasses
import io
import re
from typing import Any

import numpy as np

from aple_jax import paths
from aple_jax.errors import CheckpointError, StorageError

TORCH_PIN = "torch==2.13.0"
# File names the official code writes or users pass: model.pth.tar-5, model-best.pth.tar, a bare state dict.
CHECKPOINT_NAME = re.compile(r"^(model\.pth\.tar-\d+|model-best\.pth\.tar|.+\.pth|.+\.pt|.+\.pth\.tar)$")


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
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - pickled scheduler objects: unpickle in full, as Dassl does
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
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
