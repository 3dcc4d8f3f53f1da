"""The base method's rows beside a plug-in run (`config.base_run`): what a researcher compares a plug-in with.

"train": the config without its plug-in, the same seeds, data and recipe, run in `<workdir>/base` (a run directory
of its own that resumes, reports and compares like any other); a path: a finished run directory of the base method
(packed seeds under `seed<s>/`), whose results.json per seed must be of the same method, dataset and setting.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from aple_jax import paths
from aple_jax.errors import ConfigError

TRAIN = "train"


def seeds(config: ml_collections.ConfigDict) -> list[int]:
    """The seeds a run trains: its packed seeds, or its seed."""
    packed = [int(s) for s in str(config.pack_seeds).split(",") if s.strip()]
    return packed or [config.seed]


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config of the plug-in run's base method: the same, without the plug-in and its settings."""
    out = config.copy_and_resolve_references()
    with out.unlocked():
        if config.plugin in out:
            del out[config.plugin]
        out.plugin, out.base_run = "", ""
    return out


def read(config: ml_collections.ConfigDict, source: str) -> list[dict[str, Any]]:
    """Each seed's results.json of the finished base run `source`, checked against the plug-in run's config."""
    found = []
    for seed in seeds(config):
        candidates = [paths.join(source, f"seed{seed}", "results.json"), paths.join(source, "results.json")]
        path = next((p for p in candidates if p.exists()), None)
        results = paths.read_json(path) if path is not None else None
        if results is None or results.get("seed") != seed:
            raise ConfigError(f"base_run={source!r} holds no finished run of seed {seed} (looked for "
                              f"{', '.join(map(str, candidates))})",
                              hint=f"give a finished run directory of {config.method} with the same seeds, or "
                                   f"base_run={TRAIN!r} to train it")
        ran = {"method": results.get("method"), "dataset.name": results.get("config", {}).get("dataset", {}).get("name"),
               "setting": results.get("setting")}
        diff = [f"{k}={v!r} (expected {_value(config, k)!r})" for k, v in ran.items() if v != _value(config, k)]
        if diff:
            raise ConfigError(f"base_run: {path} is not a run of this plug-in run's base method: {', '.join(diff)}")
        found.append(results)
    return found


def _value(config: ml_collections.ConfigDict, dotted: str) -> Any:
    for key in dotted.split("."):
        config = config[key]
    return config
