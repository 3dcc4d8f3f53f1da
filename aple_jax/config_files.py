"""Config files (`configs/<method>.py:arguments`, whose `get_config(arg)` builds the config) and `key=value`
overrides typed like the field they set, as launch.py's `--config.key=value`: for the command lines that take a
config without absl's flags (sweeps, predictions)."""
from __future__ import annotations

import ast
import importlib.util
import os
from types import ModuleType
from typing import Any, Sequence

import ml_collections

from aple_jax.errors import ConfigError, did_you_mean
from aple_jax.prompt_files import flatten_config


def load_config_module(path: str) -> ModuleType:
    """A configs/*.py file as a module (it must define get_config(arg))."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist", hint="pick one of configs/*.py")
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"aple_jax_config_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config(arg)")
    return module


def apply_override(c: ml_collections.ConfigDict, item: str) -> None:
    """`key.sub=value` set on the config, typed like the current value (as launch.py's `--config.key=value`)."""
    key, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} is not key=value")
    *parents, last = key.split(".")
    node = c
    for p in parents:
        if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
            raise _unknown_key(c, item, key)
        node = node[p]
    if last not in node:
        raise _unknown_key(c, item, key)
    node[last] = parse_value(node[last], text, key)


def _unknown_key(c: ml_collections.ConfigDict, item: str, key: str) -> ConfigError:
    known = sorted(flatten_config(c.to_dict()))
    return ConfigError(f"override {item!r}: unknown config key {key!r}{did_you_mean(key, known)}")


def parse_value(current: Any, text: str, key: str) -> Any:
    """`text` converted to the type of the field's `current` value."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"override {key}={text!r}: expected true or false")
        return text.lower() in ("true", "1")
    if isinstance(current, str):
        return text
    try:
        return type(current)(text) if isinstance(current, (int, float)) else ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"override {key}={text!r}: expected a value like {current!r}") from None


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config of `configs/<method>.py:arguments`, with `key=value` overrides applied."""
    path, _, arg = spec.partition(":")
    config = load_config_module(path).get_config(arg)
    for item in overrides:
        apply_override(config, item)
    return config
