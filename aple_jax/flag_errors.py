"""launch.py's flag parsing behind the error boundary: absl's and ml_collections' parse errors become one
`error:` line with exit status 2, an unknown `--config.key` names the closest known key."""
from __future__ import annotations

import importlib.util
import os
import re
from typing import Any

from absl import flags

from aple_jax.errors import TRACEBACK_ENV, AplejaxError, ConfigError, did_you_mean, error_boundary

OVERRIDE_PREFIX = "--config."


def wants_traceback(argv: list[str]) -> bool:
    """Whether argv asks for `--verbosity` >= 1 (`-v` too), which keeps user errors' tracebacks."""
    for i, arg in enumerate(argv):
        name, sep, value = arg.partition("=")
        if name in ("--verbosity", "-v"):
            value = value if sep else (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                return int(value) >= 1
            except ValueError:
                return False
    return False


def parse_flags(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
    """`flag_values(argv)`, with every parse error a user error (an `error:` line and exit status 2)."""
    if wants_traceback(argv):
        os.environ[TRACEBACK_ENV] = "1"
    with error_boundary():
        path = config_spec(argv).partition(":")[0]
        if path and not os.path.isfile(path):
            raise ConfigError(f"--config {path}: no such config file", hint="pick one of configs/*.py")
        try:
            return flag_values(argv)
        except flags.Error as e:
            raise _cause(e) or unknown_override(flag_values, argv) or ConfigError(str(e)) from None
        except (AttributeError, KeyError) as e:
            raise unknown_override(flag_values, argv) or ConfigError(str(e)) from None


def _cause(error: BaseException) -> AplejaxError | None:
    """The user error that absl wrapped (a config file's own `:argument` check), if any. ml_collections re-raises
    a config file's error as the same type with the formatted traceback as message: its last line is the message."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, AplejaxError):
            found = re.findall(r"^aple_jax\.[\w.]+: (.*)$", str(error), flags=re.MULTILINE)
            return type(error)(found[-1], getattr(error, "hint", "")) if found else error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def override_keys(argv: list[str]) -> list[str]:
    """The dotted keys of argv's `--config.key=value` overrides."""
    return [arg[len(OVERRIDE_PREFIX):].partition("=")[0] for arg in argv if arg.startswith(OVERRIDE_PREFIX)]


def unknown_override(flag_values: flags.FlagValues, argv: list[str]) -> ConfigError | None:
    """A ConfigError naming the first `--config.key` the loaded config lacks, with the closest known key."""
    config = load_config(argv)
    if config is None:
        return None
    known = sorted(_flat_keys(config.to_dict()))
    for key in override_keys(argv):
        if key not in known and not any(k.startswith(key + ".") for k in known):
            return ConfigError(f"unknown config key {key!r}{did_you_mean(key, known)}",
                               hint="the method's configs/*.py file lists every key")
    return None


def config_spec(argv: list[str]) -> str:
    """The value of argv's `--config` (`file.py[:args]`), or ''."""
    return next((argv[i + 1] if a == "--config" and i + 1 < len(argv) else a.partition("=")[2]
                 for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")), "")


def load_config(argv: list[str]) -> Any:
    """The config that argv's `--config file.py[:args]` names, loaded again (None where it cannot be)."""
    path, _, arg = config_spec(argv).partition(":")
    if not os.path.isfile(path):
        return None
    module_spec = importlib.util.spec_from_file_location("launch_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(arg or None)
    except Exception:  # noqa: BLE001 - the parse error itself is reported instead
        return None


def _flat_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        out += _flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return out
