"""Every rule a run's config must follow, in one place: `validate(config)` runs before anything heavy.

run() and sweep planning call it before CLIP weights load or data is read, so a wrong config fails in seconds
with one ConfigError naming every offending key, its value and what was expected. The enum sets come from the
modules that use them; nothing here duplicates a list of choices.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Callable, Iterator

import ml_collections

from aple_jax import paths, plugins
from aple_jax.adapter import FREQ_UNITS, KERNEL_NORMS
from aple_jax.clip.backbone import DTYPES
from aple_jax.clip.model import PRESETS
from aple_jax.errors import AplejaxError, ConfigError, did_you_mean
from aple_jax.prompt_files import flatten_config as flatten
from aple_jax.losses import KL_DIRECTIONS, KL_REDUCTIONS, TERMS
from aple_jax.methods import METHODS
from aple_jax.methods.aple import GRANULARITIES, ORDERS, STAGE2_LOSSES, TRAINED_MODALITY, UNTRAINED_MODALITY
from aple_jax.methods.base import TEACHER_IMAGES, TEACHER_INPUTS
from aple_jax.methods.promptkd import SELECT as KD_SELECT
from aple_jax.methods.zeroshot import ENSEMBLE_MODES, TEMPLATE_CHOICES
from aple_jax.train import OPTIMIZERS, SCHEDULES
from aple_jax.world.zeroshot import WORLD_BACKBONES
from configs.common import SETTINGS

Check = Callable[[Any], bool]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _non_negative(v: Any) -> bool:
    return _number(v) and v >= 0


def _int_at_least(low: int) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _unit(v: Any) -> bool:
    return _number(v) and 0 <= v <= 1


def _momentum(v: Any) -> bool:
    return _number(v) and 0 <= v < 1


# key -> (check, what is expected). Keys a method lacks (stage1.* outside APLe) are skipped.
RANGES: dict[str, tuple[Check, str]] = {
    "seed": (_int_at_least(0), "an integer >= 0"),
    "optim.lr": (_positive, "a finite number > 0"),
    "optim.epochs": (_int_at_least(1), "an integer >= 1"),
    "optim.epoch_scale": (_positive, "a finite number > 0"),
    "optim.momentum": (_momentum, "a number in [0, 1)"),
    "optim.weight_decay": (_non_negative, "a finite number >= 0"),
    "optim.warmup_epochs": (_int_at_least(0), "an integer >= 0"),
    "optim.warmup_lr": (_positive, "a finite number > 0"),
    "optim.eps": (_positive, "a finite number > 0"),
    "optim.min_lr": (_non_negative, "a finite number >= 0"),
    "batch_size": (_int_at_least(1), "an integer >= 1"),
    "eval_batch_size": (_int_at_least(1), "an integer >= 1"),
    "log_every": (_int_at_least(1), "an integer >= 1"),
    "curve_points": (_int_at_least(0), "an integer >= 0 (0: no curve, evaluate at the end only)"),
    "checkpoint_every_steps": (_int_at_least(0), "an integer >= 0 (0: at epoch ends only)"),
    "checkpoint_min_steps": (_int_at_least(0), "an integer >= 0 (0: a checkpoint at every epoch end)"),
    "dataset.shots": (_int_at_least(0), "an integer >= 1, or 0 for the full training set"),
    "dataset.num_workers": (_int_at_least(0), "an integer >= 0"),
    "dataset.synthetic.num_classes": (_int_at_least(2), "an integer >= 2"),
    "dataset.synthetic.train_per_class": (_int_at_least(1), "an integer >= 1"),
    "dataset.synthetic.test_per_class": (_int_at_least(1), "an integer >= 1"),
    "dataset.synthetic.image_size": (_int_at_least(1), "an integer >= 1"),
    "prompts.text.n_ctx": (_int_at_least(1), "an integer >= 1"),
    "prompts.text.depth": (_int_at_least(0), "an integer >= 0 (0: no text prompts)"),
    "prompts.vision.n_ctx": (_int_at_least(1), "an integer >= 1"),
    "prompts.vision.depth": (_int_at_least(0), "an integer >= 0 (0: no vision prompts)"),
    "prompts.vision.init_std": (_non_negative, "a finite number >= 0"),
    "adapter.sigma": (_positive, "a finite number > 0"),
    "adapter.alpha": (_unit, "a number in [0, 1]"),
    "kl.temperature": (_positive, "a finite number > 0"),
    "gpa.mean": (_number, "a finite number"),
    "gpa.std": (_positive, "a finite number > 0"),
    "stage1.epochs": (_int_at_least(1), "an integer >= 1"),
    "stage1.kl_weight": (_non_negative, "a finite number >= 0"),
    "stage2.epochs": (_int_at_least(1), "an integer >= 1"),
    "cocoop.prompts_per_pass": (_int_at_least(0), "an integer >= 0 (0: all prompts in one pass)"),
    "distributed.num_processes": (_int_at_least(0), "an integer >= 0 (0: from the environment)"),
    "lora.rank": (_int_at_least(1), "an integer >= 1"),
    "lora.alpha": (_positive, "a finite number > 0"),
    "lora.dropout": (_momentum, "a number in [0, 1)"),
    "lora.iterations_per_shot": (_int_at_least(0), "an integer >= 0 (0: optim.epochs)"),
    "mma.start": (_int_at_least(1), "an integer >= 1 (blocks counted from 1)"),
    "mma.end": (_int_at_least(1), "an integer >= 1 (blocks counted from 1)"),
    "mma.dim": (_int_at_least(1), "an integer >= 1"),
    "mma.scale": (_positive, "a finite number > 0"),
    "twostage.iterations_per_shot": (_int_at_least(0), "an integer >= 0 (0: optim.epochs per stage)"),
    "twostage.stage1_fraction": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "mmrl.start": (_int_at_least(1), "an integer >= 1 (the first block with tokens, counted from 1)"),
    "mmrl.n_tokens": (_int_at_least(1), "an integer >= 1"),
    "mmrl.rep_dim": (_int_at_least(1), "an integer >= 1"),
    "mmrl.alpha": (_unit, "a number in [0, 1]"),
    "mmrl.reg_weight": (_non_negative, "a finite number >= 0"),
    "mmrl.beta": (_unit, "a number in [0, 1]"),
    "mmrl.res_rank": (_int_at_least(1), "an integer >= 1"),
    "mmrl.proj_rank": (_int_at_least(1), "an integer >= 1"),
    "dept.weight": (_unit, "a number in [0, 1] (the head's share of the loss and of the base-class logits)"),
    "dept.head_lr_scale": (_positive, "a finite number > 0"),
    "dpc.weight": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1] (the parallel prompt is P + (M - P) / w)"),
    "dpc.weight_new": (_unit, "a number in [0, 1] (0: new classes keep the stage-1 prompts)"),
    "dpc.top_k": (_int_at_least(2), "an integer >= 2"),
    "dpc.min_negatives": (_int_at_least(0), "an integer >= 0"),
    "dpc.epochs": (_int_at_least(1), "an integer >= 1"),
    "dpc.lr": (_positive, "a finite number > 0"),
    "kd.temperature": (_positive, "a finite number > 0"),
}

ENUMS: dict[str, tuple[str, ...]] = {
    "method": tuple(METHODS),
    "setting": SETTINGS,
    "backbone.dtype": tuple(DTYPES),
    "adapter.freq_units": FREQ_UNITS,
    "adapter.kernel_norm": KERNEL_NORMS,
    "adapter.teacher_input": TEACHER_INPUTS,
    "kl.direction": KL_DIRECTIONS,
    "kl.reduction": KL_REDUCTIONS,
    "teacher.templates": TEMPLATE_CHOICES,
    "teacher.ensemble": ENSEMBLE_MODES,
    "teacher.images": TEACHER_IMAGES,
    "zeroshot.templates": TEMPLATE_CHOICES,
    "stage1.order": tuple(ORDERS),
    "stage1.granularity": GRANULARITIES,
    "stage1.untrained_modality": UNTRAINED_MODALITY,
    "stage1.trained_modality": TRAINED_MODALITY,
    "stage2.loss": STAGE2_LOSSES,
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "kd.select": KD_SELECT,
}

# The fewest text tokens a class prompt needs besides its context: start, one class-name token, ".", end.
MIN_TEXT_TOKENS = 4


def known_keys(method: str, plugin: str = "") -> list[str] | None:
    """The keys of `configs/<method>.py`'s config (with `plugin=<plugin>`'s section when that is a plug-in), or
    None where the method has no such file."""
    import importlib
    try:
        module = importlib.import_module(f"configs.{method}")
    except ImportError:
        return None
    arg = f"plugin={plugin}" if plugin in plugins.PLUGINS else None
    return sorted(flatten(module.get_config(arg).to_dict()))


def backbone_shape(config: ml_collections.ConfigDict) -> dict[str, int] | None:
    """Layer counts and context length of the configured backbone, read without loading any weights: from a
    preset, or a Hugging Face directory's config.json; None where neither tells."""
    b = config.backbone
    weights = b.weights
    if not weights and b.name in WORLD_BACKBONES:
        weights = WORLD_BACKBONES[b.name]
    cfg_path = os.path.join(weights, "config.json") if weights else ""
    if cfg_path and os.path.isfile(cfg_path):
        try:
            with open(cfg_path) as f:
                hf = json.load(f)
            t, v = hf["text_config"], hf["vision_config"]
            return dict(text_layers=int(t["num_hidden_layers"]), vision_layers=int(v["num_hidden_layers"]),
                        context_length=int(t.get("max_position_embeddings", 77)))
        except (OSError, ValueError, KeyError, TypeError):
            return None   # the weights loader names what is wrong with the file
    if b.name in PRESETS:
        p = PRESETS[b.name]
        return dict(text_layers=p.text_layers, vision_layers=p.vision_layers, context_length=p.context_length)
    return None


def problems(config: ml_collections.ConfigDict, check_paths: bool = True) -> Iterator[str]:
    """One line per broken rule; `check_paths`: local paths must exist (not where commands are only printed)."""
    flat = flatten(config.to_dict())
    plugin_problem = plugins.problem(flat.get("method", ""), flat.get("plugin", ""))
    if plugin_problem:
        yield plugin_problem
    if flat.get("base_run") and not flat.get("plugin"):
        yield (f"base_run={flat['base_run']!r} prints the base method beside a plug-in run; expected base_run='' "
               f"without a plugin")
    known = known_keys(flat.get("method", ""), flat.get("plugin", ""))
    if known is not None:
        for key in sorted(set(flat) - set(known)):
            yield f"unknown config key {key!r}{did_you_mean(key, known)}"
    for key, (check, expected) in RANGES.items():
        if key in flat and not check(flat[key]):
            yield f"{key}={flat[key]!r}; expected {expected}"
    for key, options in ENUMS.items():
        if key in flat and flat[key] not in options:
            yield f"{key}={flat[key]!r}; expected one of {', '.join(map(repr, options))}"
    yield from _loss_weights(flat)
    yield from _dpc(flat)
    yield from _paths(flat)
    yield from _dataset(config, check_paths)
    yield from _backbone(config, check_paths)
    yield from _pack_seeds(flat.get("pack_seeds", ""))


def _loss_weights(flat: dict[str, Any]) -> Iterator[str]:
    method = METHODS.get(flat.get("method"))
    known = TERMS + tuple(method.own_terms if method is not None else ())
    for key, value in flat.items():
        if key.startswith("loss_weights."):
            term = key[len("loss_weights."):]
            if term not in known:
                yield f"unknown loss term {key!r}; expected loss_weights.<term> with <term> one of {', '.join(known)}"
            elif not _non_negative(value):
                yield f"{key}={value!r}; expected a finite number >= 0"
    l1 = flat.get("stage1.feature_l1")
    if l1 is not None and not (isinstance(l1, (tuple, list)) and len(l1) == 2 and all(map(_non_negative, l1))):
        yield f"stage1.feature_l1={l1!r}; expected two finite numbers >= 0 (text, image)"


def _dpc(flat: dict[str, Any]) -> Iterator[str]:
    """DPC's rules across its keys: no more forced negatives than top-k slots; the decoupled leaves as regexes."""
    top_k, least = flat.get("dpc.top_k"), flat.get("dpc.min_negatives")
    if _int_at_least(2)(top_k) and _int_at_least(0)(least) and least > top_k:
        yield f"dpc.min_negatives={least!r}; expected at most dpc.top_k={top_k!r}"
    decoupled = flat.get("dpc.decoupled", [])
    if not isinstance(decoupled, (list, tuple)) or not all(isinstance(p, str) for p in decoupled):
        yield f"dpc.decoupled={decoupled!r}; expected a list of regular expressions over trained leaf paths"
        return
    for pattern in decoupled:
        try:
            re.compile(pattern)
        except re.error as e:
            yield f"dpc.decoupled={decoupled!r}: {pattern!r} is not a regular expression ({e})"


# Every config key that holds a path (local or gs://).
PATH_KEYS = ("dataset.root", "backbone.weights", "backbone.tokenizer", "eval_only_from", "base_run", "kd.teacher",
             "dpc.stage1_from")


def _paths(flat: dict[str, Any]) -> Iterator[str]:
    for key in PATH_KEYS:
        value = flat.get(key)
        problem = paths.path_problem(value) if isinstance(value, str) and value else None
        if problem:
            yield f"{key}: {problem}"


def _dataset(config: ml_collections.ConfigDict, check_paths: bool) -> Iterator[str]:
    d = config.dataset
    scale = tuple(d.crop_scale)
    if not (len(scale) == 2 and all(map(_number, scale)) and 0 < scale[0] <= scale[1] <= 1):
        yield f"dataset.crop_scale={scale!r}; expected (low, high) with 0 < low <= high <= 1"
    for key, name in [("dataset.name", d.name)] + [("dataset.eval_datasets", n) for n in d.eval_datasets]:
        try:
            _check_dataset_name(name)
        except AplejaxError as e:
            yield f"{key}={name!r}: {e}"
    if check_paths and d.root and not paths.is_remote(d.root) and not os.path.exists(d.root):
        what = "a custom dataset's split JSON" if d.root.endswith(".json") else "the data directory"
        yield f"dataset.root={d.root!r} does not exist; expected {what}"


def _check_dataset_name(name: str) -> None:
    from aple_jax.data.names import canonical_name
    if name.startswith("world:"):
        from aple_jax.world.datasets import parse_name
        parse_name(name[len("world:"):])
    elif not name.startswith("tfds:"):
        canonical_name(name)


def _backbone(config: ml_collections.ConfigDict, check_paths: bool) -> Iterator[str]:
    b, p = config.backbone, config.prompts
    if not b.weights and b.name != "tiny" and b.name not in WORLD_BACKBONES:
        known = ", ".join(sorted(PRESETS) + list(WORLD_BACKBONES))
        if b.name not in PRESETS:
            yield f"backbone.name={b.name!r}; expected one of {known} (or any name with backbone.weights)"
            return
    if b.tokenizer and not b.weights and b.name == "tiny":
        yield (f"backbone.tokenizer={b.tokenizer!r} means nothing to the tiny backbone, whose random weights come "
               f"with a built-in tokenizer; expected backbone.tokenizer='' (or backbone.weights with it)")
    if check_paths:
        yield from _local_weights(b)
    shape = backbone_shape(config)
    if shape is None:
        return
    text_depth, vision_depth = p.text.depth, p.vision.depth
    if isinstance(text_depth, int) and text_depth > shape["text_layers"]:
        yield (f"prompts.text.depth={text_depth}; the {b.name} text tower has {shape['text_layers']} layers, "
               f"so expected at most {shape['text_layers']}")
    if isinstance(vision_depth, int) and vision_depth > shape["vision_layers"]:
        yield (f"prompts.vision.depth={vision_depth}; the {b.name} vision tower has {shape['vision_layers']} layers, "
               f"so expected at most {shape['vision_layers']}")
    if config.method == "maple" and isinstance(text_depth, int) and text_depth > shape["vision_layers"]:
        yield (f"prompts.text.depth={text_depth}; MaPLe couples it to the {shape['vision_layers']}-layer vision "
               f"tower, so expected at most {shape['vision_layers']}")
    layers = min(shape["text_layers"], shape["vision_layers"])
    start = (config.get("mmrl") or {}).get("start") if config.method == "mmrl" else None
    if isinstance(start, int) and start > layers:
        yield (f"mmrl.start={start}; the {b.name} towers have {layers} blocks, so expected a block in 1..{layers} "
               f"(ViT-B/16's recipe starts at 6 of 12)")
    n_ctx = p.text.n_ctx
    if text_depth and isinstance(n_ctx, int) and n_ctx + MIN_TEXT_TOKENS > shape["context_length"]:
        yield (f"prompts.text.n_ctx={n_ctx} leaves no room for a class name in the {b.name} text context of "
               f"{shape['context_length']} tokens; expected at most {shape['context_length'] - MIN_TEXT_TOKENS}")


def _local_weights(b: ml_collections.ConfigDict) -> Iterator[str]:
    """A local tokenizer path that does not exist, and a weights directory without weights files (a weights path
    that does not exist is refused by `check_weights`, before anything loads, with how to get weights)."""
    from aple_jax.clip.weights import missing_weights_message
    value = b.tokenizer
    if value and not paths.is_remote(value) and not paths.path_problem(value) and not os.path.exists(value):
        yield f"backbone.tokenizer={value!r} does not exist"
    if b.weights and not paths.is_remote(b.weights) and os.path.isdir(b.weights):
        message = missing_weights_message(b.weights)
        if message:
            yield f"backbone.weights: {message}"


def _pack_seeds(text: str) -> Iterator[str]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        yield f"pack_seeds={text!r}; expected comma-separated integers such as '1,2,3'"
        return
    if any(s < 0 for s in seeds):
        yield f"pack_seeds={text!r}; expected seeds >= 0"


def validate(config: ml_collections.ConfigDict, check_paths: bool = True) -> None:
    """Raises one ConfigError listing every broken rule of `config`; reads no weights and no data."""
    found = list(problems(config, check_paths))
    if found:
        more = f" (and {len(found) - 1} more: {'; '.join(found[1:])})" if len(found) > 1 else ""
        raise ConfigError(found[0] + more, hint="fix the key with --config.<key>=<value>; docs/errors.md lists "
                                                "the rules")
