"""Pickles from users are data, never code: every pickle aple-jax reads goes through here.

A pickle names the classes and functions it wants called. The readers here rebuild plain containers, tensors
(torch's `weights_only` unpickler) and, for the names their caller allows, an inert `Standin` that keeps the pickled
state and runs nothing. Any other name (`builtins.exec`, `os.system`, ...) is refused with `RefusedGlobalError`
before anything is called.
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
import re
from typing import IO, Any, Callable, Collection, Mapping


class Standin:
    """An inert object in place of an instance of an allowed class: takes any arguments, runs nothing and keeps its
    pickled state (a plain value) as `state`; `pickled_name` is the class it stands for (see `standin`)."""

    pickled_name = ""
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def standin(name: str) -> type[Standin]:
    """A `Standin` class that records the pickled class `name` it stands for."""
    return type(name.rpartition(".")[2] or "Standin", (Standin,), {"pickled_name": name})


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle names a class or function that is neither plain data nor allowed; `name` is `module.qualname`."""

    def __init__(self, name: str):
        super().__init__(f"refusing {name}")
        self.name = name


def refusal(path: Any, error: RefusedGlobalError, holds: str) -> str:
    """The message for a refused file: it names the file, the global and what such files hold instead."""
    return f"refusing to read {path}: it names {error.name}, which is not data ({holds}; nothing in a file is run)"


class _RestrictedUnpickler(pickle.Unpickler):
    """Python's unpickler with every global looked up in `allowed`, else refused; persistent ids only through
    `persistent`."""

    def __init__(self, file: IO[bytes], allowed: Mapping[str, Any], persistent: Callable[[Any], Any] | None):
        super().__init__(file)
        self.allowed, self.persistent = allowed, persistent

    def find_class(self, module: str, name: str) -> Any:
        full = _python3_name(f"{module}.{name}")
        if full in self.allowed:
            return self.allowed[full]
        raise RefusedGlobalError(full)

    def persistent_load(self, pid: Any) -> Any:
        if self.persistent is None:
            raise pickle.UnpicklingError("a persistent id, which this file may not hold")
        return self.persistent(pid)


def load(file: IO[bytes], allowed: Mapping[str, Any] | Collection[str] = (),
         persistent: Callable[[Any], Any] | None = None) -> Any:
    """A plain pickle: containers, strings and numbers, and for each `allowed` global either the object it maps to
    (data constructors the caller vouches for) or, given as a bare name, a `standin` class."""
    if not isinstance(allowed, Mapping):
        allowed = {name: standin(name) for name in allowed}
    return _RestrictedUnpickler(file, allowed, persistent).load()


def globals_named(data: bytes) -> set[str]:
    """Every `module.name` a pickle's GLOBAL opcodes name (read, not run)."""
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "INST")}


def _plain_dict(*args: Any) -> dict:
    """A `defaultdict` read as a plain dict (its default factory is never called)."""
    del args
    return {}


# Containers an optimizer's pickled state holds besides what `weights_only` allows (OrderedDict, Counter, set).
_TORCH_CONTAINERS = [(_plain_dict, "collections.defaultdict"), dict]
# torch's refusal, inside its advice (which we do not repeat): "WeightsUnpickler error: <reason>\n\nCheck the ..."
_TORCH_REASON = re.compile(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", re.S)
_TORCH_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def torch_load(data: bytes, allowed: Collection[str] = ()) -> Any:
    """A `torch.save` file (zip or legacy format) read by torch's `weights_only` unpickler: tensors on the CPU, plain
    containers, and `Standin`s for the `allowed` class names; needs torch."""
    import torch

    safe = _TORCH_CONTAINERS + [(standin(name), name) for name in allowed]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _TORCH_REASON.search(str(e))
        reason = reason.group(1) if reason else str(e)
        name = _TORCH_GLOBAL.search(reason)
        if name:
            raise RefusedGlobalError(_python3_name(name.group(1))) from None
        raise pickle.UnpicklingError(reason) from None


def _python3_name(name: str) -> str:
    """A global as torch's refusal names it (protocol 2: Python 2 module names; builtins without a module), as
    Python 3 names it: `exec` -> `builtins.exec`, `commands.check_call` -> `subprocess.check_call`."""
    module, _, attr = name.rpartition(".")
    module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (module, attr))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module) or 'builtins'}.{attr}"
