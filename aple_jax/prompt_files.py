"""Prompt files (`prompts.npz`) and their provenance: what a trained prompt tree was trained with, checked before
anyone evaluates it.

A prompts file is a flat `.npz` (leaf paths like `text/ctx`) plus a JSON `__meta__` entry: the PROMPT_KEYS and
SETTING_KEYS of the training config (with its plug-in's `eval_settings`), the whole config and the dataset and class
names it was trained on. Paths may be local or `gs://`.
"""
from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import jax
import ml_collections
import numpy as np

from aple_jax import interop, paths
from aple_jax import prompts as P
from aple_jax.errors import CheckpointError, StorageError

PROMPTS_META_KEY = "__meta__"
# What must agree between a trained run and an evaluation of its prompts (`mma.`: MMA's adapted blocks, width and
# scale, which its trees alone do not say; MMRL's token count, width and first block, not its training weights).
PROMPT_KEYS = ("method", "plugin", "backbone.name", "backbone.weights", "prompts", "mma.", "mmrl.start",
               "mmrl.n_tokens", "mmrl.rep_dim")
# Settings that change what a trained tree computes without changing its leaves' names or shapes: CLIP-LoRA's scale
# alpha / sqrt(rank), MMRL's fusion of class and representation logits and MMRL++'s token mixing, APLe's image
# adapter at test; a plug-in names its own (`eval_settings`, e.g. DePT's and DPC's mixing weights). A file written
# before they were recorded is held to what its `run_config` says; one without a run_config is not checked on them.
SETTING_KEYS = ("lora.alpha", "mmrl.alpha", "mmrl.plus", "mmrl.beta", "adapter.enabled", "adapter.apply_test",
                "adapter.sigma", "adapter.alpha", "adapter.freq_units", "adapter.kernel_norm")


def flatten_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as `{"a.b.c": value}`, tuples as lists (as JSON reads them back)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def prompt_config(config: ml_collections.ConfigDict | dict[str, Any]) -> dict[str, Any]:
    """The PROMPT_KEYS and SETTING_KEYS fields of a config, flat (no `plugin` when none is on, as before plug-ins
    existed), and its plug-in's `eval_settings` (at the plug-in's defaults where the config has no section)."""
    tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    flat = {k: v for k, v in flatten_config(tree).items()
            if k.startswith(PROMPT_KEYS + SETTING_KEYS) and (k, v) != ("plugin", "")}
    return {**flat, **plugin_settings(tree)}


def plugin_settings(tree: dict[str, Any]) -> dict[str, Any]:
    """`{"<plugin>.<key>": value}` of the config's plug-in's `eval_settings` (none without a plug-in)."""
    from aple_jax import plugins   # plugins import dpc, which imports this module
    name = tree.get("plugin", "")
    mixin = plugins.PLUGINS.get(name)
    if mixin is None:
        return {}
    values = {**mixin.defaults, **(tree.get(name) or {})}
    return flatten_config({name: {k: values[k] for k in getattr(mixin, "eval_settings", ())}})


def prompts_meta(config: ml_collections.ConfigDict | dict[str, Any] | None,
                 classnames: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """What a prompts file records of its training: the PROMPT_KEYS of its config (checked before its prompts are
    evaluated), the whole config (`run_config`: what `aple_jax.predict` rebuilds the model from), its dataset and
    classes, and `extra` entries (e.g. `source` for imported checkpoints)."""
    meta: dict[str, Any] = {"version": 1, **extra}
    if config is not None:
        meta["config"] = prompt_config(config)
        meta["run_config"] = json.loads(config.to_json()) if isinstance(config, ml_collections.ConfigDict) else config
    if classnames is not None:
        meta["train"] = {"dataset": classnames["dataset"], "classnames": list(classnames["classnames"])}
    return meta


def run_dir_meta(run_dir: paths.PathLike) -> dict[str, Any] | None:
    """The provenance of a run directory from its config.json and classnames.json; None without either."""
    found = []
    for name in ("config.json", "classnames.json"):
        path = paths.join(run_dir, name)
        found.append(paths.read_json(path) if path.exists() else None)
    return None if found == [None, None] else prompts_meta(*found)


def save_prompts(path: paths.PathLike, prompts: Any, meta: dict[str, Any] | None = None) -> None:
    """The prompt tree as a flat `.npz`, written atomically, with `meta` (default: the provenance of the run
    directory holding `path`) as a JSON string under `__meta__`."""
    path = paths.as_path(path)
    if meta is None:
        meta = run_dir_meta(path.parent)
    arrays = {k: np.asarray(v) for k, v in P.flatten(jax.device_get(prompts)).items()}
    if PROMPTS_META_KEY in arrays:
        raise ValueError(f"a prompt leaf may not be named {PROMPTS_META_KEY!r}")
    if meta is not None:
        arrays[PROMPTS_META_KEY] = np.asarray(json.dumps(meta, sort_keys=True))
    paths.write_npz_atomic(path, arrays)


def _load_npz(path: paths.PathLike) -> dict[str, np.ndarray]:
    """Every entry of a `.npz` (local or gs://), or a CheckpointError naming the file."""
    path = paths.as_path(path)
    if not path.exists():
        raise StorageError(f"prompts file {path} does not exist")
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"prompts file {path} is not a readable .npz ({e})",
                              hint="write it again, or point to the run directory that made it") from None


def read_prompts_meta(path: paths.PathLike) -> dict[str, Any] | None:
    """The `__meta__` entry of a prompts file, or None for files written before it existed."""
    loaded = _load_npz(path)
    return json.loads(str(loaded[PROMPTS_META_KEY][()])) if PROMPTS_META_KEY in loaded else None


def read_leaves(path: paths.PathLike) -> dict[str, np.ndarray]:
    """The flat leaves of a prompts file, as stored (no tree to check them against)."""
    return {k: v for k, v in _load_npz(path).items() if k != PROMPTS_META_KEY}


def read_prompts(path: paths.PathLike, prompts_like: Any) -> Any:
    """Prompts from a prompts file; its leaves must match the method's prompt tree in names and shapes, be
    floating point and finite."""
    loaded = read_leaves(path)
    return P.unflatten({k: jax.numpy.asarray(v) for k, v in check_leaves(loaded, prompts_like, str(path)).items()})


def check_leaves(loaded: dict[str, np.ndarray], prompts_like: Any, source: str) -> dict[str, np.ndarray]:
    """`loaded` as float32 leaves, after checking names, shapes, dtypes and finiteness against `prompts_like`."""
    expected = {k: tuple(v.shape) for k, v in P.flatten(prompts_like).items()}
    got = {k: tuple(v.shape) for k, v in loaded.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        shapes = sorted(f"{k}: {got[k]} (expected {expected[k]})" for k in set(got) & set(expected)
                        if got[k] != expected[k])
        raise CheckpointError(f"prompts in {source} do not fit this method and backbone: missing {missing}, "
                              f"unexpected {unexpected}, mis-shaped {shapes}")
    for key, value in loaded.items():
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f"prompts in {source}: leaf {key} has dtype {value.dtype}, expected floating point")
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"prompts in {source}: leaf {key} holds NaN or inf values")
    return {k: v.astype(np.float32) for k, v in loaded.items()}


def check_provenance(source: paths.PathLike, meta: dict[str, Any] | None, config: ml_collections.ConfigDict,
                     base_name: str | None, base_classnames: list[str] | None) -> None:
    """Refuses prompts trained for another method, backbone or prompt shape, or for other base classes.

    `meta` is the provenance read from `source` (None for files written before it existed: nothing to check).
    """
    if meta is None:
        return
    if "detected" in meta:       # an official checkpoint: what its keys say
        current = prompt_config(config)
        diff = sorted(k for k, v in meta["detected"].items() if current.get(k) != v)
        if diff:
            details = ", ".join(f"{k}: checkpoint {meta['detected'][k]!r}, now {current.get(k)!r}" for k in diff)
            raise CheckpointError(f"{source} is an official checkpoint of another method/prompt shape ({details})",
                                  hint="evaluate it with the config of the method, lengths and depths it was "
                                       "trained with")
    if "config" in meta:
        trained, current = (_effective(c) for c in (recorded_prompt_config(meta), prompt_config(config)))
        diff = sorted(k for k in set(trained) | set(current) if trained.get(k) != current.get(k)
                      and (k.startswith(PROMPT_KEYS) or k in trained))   # a setting recorded in neither: unchecked
        details = lambda keys: ", ".join(f"{k}: trained {trained.get(k)!r}, now {current.get(k)!r}" for k in keys)
        shape = [k for k in diff if k.startswith(PROMPT_KEYS)]
        if shape:
            raise CheckpointError(f"prompts in {source} were trained with another method/backbone/prompt shape "
                                  f"({details(shape)})")
        if diff:
            raise CheckpointError(f"prompts in {source} were trained with other settings, which change their "
                                  f"logits ({details(diff)})",
                                  hint="evaluate them with the values they were trained with ("
                                       + ", ".join(f"{k}={trained[k]!r}" for k in diff) + ")")
    trained = meta.get("train")
    if base_classnames is not None and trained is not None:
        if trained["dataset"] == base_name and trained["classnames"] != list(base_classnames):
            raise CheckpointError(f"prompts in {source} were trained on the base classes "
                                  f"{trained['classnames'][:5]}..., but this evaluation's base classes are "
                                  f"{list(base_classnames)[:5]}...: use the dataset, seed and shots of the training "
                                  f"run")


def _effective(settings: dict[str, Any]) -> dict[str, Any]:
    """A flat prompt config without the settings its switches leave without effect: MMRL++'s token mixing
    (`mmrl.beta`) in plain MMRL (a file recorded before `mmrl.plus` was: plain MMRL)."""
    return settings if settings.get("mmrl.plus") else {k: v for k, v in settings.items() if k != "mmrl.beta"}


def recorded_prompt_config(meta: dict[str, Any]) -> dict[str, Any]:
    """What a file's provenance records of its config: its `config` entry over what its `run_config` says (a file
    recorded before a key was added to SETTING_KEYS or PROMPT_KEYS holds it there, if it holds a run_config)."""
    run_config = meta.get("run_config")
    return {**(prompt_config(run_config) if run_config else {}), **meta["config"]}


def source_meta(source: paths.PathLike) -> dict[str, Any] | None:
    """The provenance of an eval-only source: a run directory (its config.json and classnames.json, else its
    prompts.npz), a prompts file or an official checkpoint (what its keys say)."""
    source = paths.as_path(source)
    if not source.exists():
        raise StorageError(f"eval_only_from={str(source)!r} does not exist",
                              hint="give a run directory, a prompts .npz or an official checkpoint file")
    if interop.is_official_checkpoint(source):
        return interop.checkpoint_meta(source)
    if not source.is_dir():
        return read_prompts_meta(source)
    meta = run_dir_meta(source)
    if meta is None and (source / "prompts.npz").exists():
        meta = read_prompts_meta(source / "prompts.npz")
    return meta
