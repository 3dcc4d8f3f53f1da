"""TorchScript archives (OpenAI's `ViT-B-16.pt`) read as data: the state dict, without running the archive.

`torch.jit.load` compiles the archive's code and runs parts of it while loading (a class's `__setstate__`), so a
file from elsewhere could act. Here nothing in the archive runs: its `data.pkl` is unpickled by `aple_jax.pickles`
(the archive's own classes as inert stand-ins, tensors rebuilt with numpy from its `data/<key>` records), and which
attributes are parameters and buffers is read from each class's `__parameters__` / `__buffers__` line in its code
file (parsed, not run). The result is what `torch.jit.load(path).state_dict()` gives, and needs no torch.
"""
from __future__ import annotations

import ast
import collections
import io
import re
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from aple_jax import pickles

STORAGE_DTYPES = {"HalfStorage": np.float16, "FloatStorage": np.float32, "DoubleStorage": np.float64,
                  "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
                  "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
_CLASS = re.compile(r"^class (\w+)\(Module\):\n((?:[ \t]+.*\n|\n)*)", re.M)
_DECLARED = re.compile(r"^[ \t]+__(parameters|buffers)__ = (\[.*\])[ \t]*$", re.M)


def is_torchscript(path: str) -> bool:
    """Whether `path` is a TorchScript archive (a zip with code and constants) rather than a `torch.save` file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *unused: Any) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2` in numpy: a strided view of the storage, copied."""
    del unused
    size, stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or min((offset, *size, *stride), default=0) < 0:
        raise ValueError(f"tensor record offset {offset}, size {size}, stride {stride} is not a tensor layout")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= storage.size:   # as_strided does not check: a crafted record must not read past its storage
        raise ValueError(f"tensor record offset {offset}, size {size}, stride {stride} reaches element {last} "
                         f"of a storage of {storage.size}")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * storage.itemsize for s in stride))
    return np.array(view)


def _declarations(z: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """`__torch__.<module>.<Class>` -> its parameter and buffer names, from the archive's code files."""
    out: dict[str, set[str]] = {}
    for name in z.namelist():
        if not (name.startswith(f"{prefix}code/") and name.endswith(".py")):
            continue
        module = name[len(f"{prefix}code/"):-len(".py")].replace("/", ".")
        for cls, body in _CLASS.findall(z.read(name).decode("utf-8")):
            names = set()
            for _, listed in _DECLARED.findall(body):
                names.update(ast.literal_eval(listed))
            out[f"{module}.{cls}"] = names
    return out


def _walk(obj: pickles.Standin, declared: dict[str, set[str]], prefix: str, out: dict[str, np.ndarray]) -> None:
    if obj.pickled_name not in declared or not isinstance(obj.state, dict):
        raise ValueError(f"{prefix or 'the root'} is a {obj.pickled_name} whose code file declares no module")
    for attr, value in obj.state.items():
        if isinstance(value, pickles.Standin):
            _walk(value, declared, f"{prefix}{attr}.", out)
        elif attr in declared[obj.pickled_name] and isinstance(value, np.ndarray):
            out[f"{prefix}{attr}"] = value


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The parameters and buffers of the module a TorchScript archive holds, by their dotted names; raises
    `pickles.RefusedGlobalError` for a global that is neither the archive's own class nor tensor data."""
    with zipfile.ZipFile(path) as z:
        data_pkl = next(n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
        prefix = data_pkl[:-len("data.pkl")]
        if z.namelist().count(f"{prefix}byteorder") and z.read(f"{prefix}byteorder").strip() != b"little":
            raise ValueError("a big-endian archive")
        data = z.read(data_pkl)
        allowed: dict[str, Any] = {name: pickles.standin(name) for name in pickles.globals_named(data)
                                   if name.startswith("__torch__.")}
        allowed.update({f"torch.{s}": dtype for s, dtype in STORAGE_DTYPES.items()})
        allowed.update({"torch._utils._rebuild_tensor_v2": _rebuild_tensor,
                        "collections.OrderedDict": collections.OrderedDict})

        def storage(pid: Any) -> np.ndarray:
            kind, dtype, key, _, numel = pid
            if kind != "storage" or dtype not in STORAGE_DTYPES.values():
                raise ValueError(f"persistent id {pid!r} is not a tensor storage")
            return np.frombuffer(z.read(f"{prefix}data/{key}"), dtype, count=int(numel))

        root = pickles.load(io.BytesIO(data), allowed, storage)
        declared = _declarations(z, prefix)
    if not isinstance(root, pickles.Standin):
        raise ValueError(f"data.pkl holds a {type(root).__name__}, not a module")
    out: dict[str, np.ndarray] = {}
    _walk(root, declared, "", out)
    return out
