"""Paths that may be local or `gs://`: one type (`etils.epath.Path`, as orbax and tfds use) and atomic writes.

Every user path (run directories, data roots, weights, prompts files) goes through `as_path`; nothing below the
entry points calls `open()`, `os.path` or `os.makedirs` on it. A write is atomic: locally a temporary file in the
same folder renamed over the target; on a bucket one object upload (GCS objects appear whole or not at all).
"""
from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

from etils import epath

PathLike = str | os.PathLike | epath.Path


def as_path(path: PathLike) -> epath.Path:
    """The `epath.Path` of a local path or `gs://bucket/...` URI."""
    return path if isinstance(path, epath.Path) else epath.Path(path)


def is_remote(path: PathLike) -> bool:
    """Whether the path lives in a bucket (`gs://`, `s3://`, ...) rather than on local disk."""
    return "://" in os.fspath(path)


def join(path: PathLike, *parts: str) -> epath.Path:
    return as_path(path).joinpath(*parts)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Writes `data` so that readers see the old file or the new one, never a part."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        path.write_bytes(data)           # one object upload: whole or absent
        return
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def write_npz_atomic(path: PathLike, arrays: dict[str, Any]) -> None:
    """`np.savez` of `arrays`, written atomically."""
    import numpy as np
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def read_json(path: PathLike, hint: str = "") -> Any:
    """A JSON file (local or gs://); a missing or half-written one is a CheckpointError naming the path."""
    from aple_jax.errors import CheckpointError
    path = as_path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist", hint=hint) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}): a half-written or "
                              f"edited file?", hint=hint) from None
