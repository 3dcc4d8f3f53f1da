"""Official prompt checkpoints <-> our prompt trees, strictly: every tensor is mapped, or checked and ignored, or
named in one error.

Import maps every trainable tensor (and PromptKD's BatchNorm statistics) onto the method's prompt tree (Linear and
1x1 conv weights transposed, all cast to fp32), checks the frozen CLIP towers and the fixed token buffers against the
backbone's shapes and ignores their values,
and refuses any missing, unexpected or mis-shaped tensor, another method's checkpoint and another backbone's.
Export writes the trainable tensors under the official names, in fp32 (the official `load_state_dict` casts them to
the model's precision).
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections
import numpy as np

from aple_jax import prompt_files
from aple_jax import prompts as P
from aple_jax.clip.model import CLIPConfig
from aple_jax.errors import CheckpointError, ConfigError
from aple_jax.interop import dassl
from aple_jax.interop.mapping import (COMPATIBLE, DISPLAY, KGCOOP_FROZEN, MODEL_NAMES, NOT_SUPPORTED, PROMPTKD_PREFIX,
                                      SUPPORTED, Rule, buffers, detect_method, frozen_keys, official_key,
                                      prompt_shape)

MAX_LISTED = 12


def check_supported(method: str) -> None:
    """Refuses methods without an official checkpoint format (APLe, zero-shot) and unknown names."""
    if method in NOT_SUPPORTED:
        raise ConfigError(f"method {method!r}: {NOT_SUPPORTED[method]}")
    if method not in SUPPORTED:
        raise ConfigError(f"method {method!r} has no official checkpoint format; expected one of {list(SUPPORTED)}")


def check_no_plugin(plugin: str, where: str) -> None:
    """Refuses a run with a plug-in: the official files of its base method hold none of the plug-in's leaves (DePT's
    head, DPC's two prompts and mixing), so they would stand for another model."""
    if plugin:
        raise ConfigError(f"{where}: a run with the {plugin!r} plug-in has no official checkpoint format (the base "
                          f"method's official files hold neither its plug-in's leaves nor its logits); expected a "
                          f"run without a plug-in", hint="evaluate the run directory itself (eval_only_from=RUN_DIR)")


def made_by(ckpt: dassl.DasslCheckpoint, method: str | None = None) -> str:
    """The method whose official trainer wrote `ckpt`: `method` when given, else detected from its keys."""
    if method:
        check_supported(method)
        return method
    found = detect_method(ckpt.state_dict)
    if found is None:
        sample = ", ".join(repr(k) for k in list(ckpt.state_dict)[:6]) or "no tensors"
        raise CheckpointError(f"{ckpt.path} is not a prompt checkpoint of {', '.join(DISPLAY[m] for m in SUPPORTED)}: "
                              f"its {len(ckpt.state_dict)} tensors are {sample}...",
                              hint="expected keys like 'ctx' or 'prompt_learner.ctx' (docs/migrating.md)")
    return found


def method_for(ckpt: dassl.DasslCheckpoint, config_method: str, method: str | None = None) -> str:
    """The config's method, once the checkpoint's keys (or `method`, when given) say that its trainer wrote it."""
    check_supported(config_method)
    found = made_by(ckpt, method)
    if config_method not in COMPATIBLE.get(found, (found,)):
        raise CheckpointError(f"{ckpt.path} is a {DISPLAY[found]} checkpoint ({MODEL_NAMES[found]}), but this "
                              f"config's method is {config_method!r}", hint=f"use configs/{found}.py")
    return config_method


def source_info(ckpt: dassl.DasslCheckpoint, method: str) -> dict[str, Any]:
    """The provenance entry of prompts imported from `ckpt`."""
    return {"checkpoint": ckpt.path, "epoch": ckpt.epoch, "method": method, "format": "dassl",
            "model_name": MODEL_NAMES[method]}


def checkpoint_meta(path: str, method: str | None = None) -> dict[str, Any]:
    """The provenance of an official checkpoint: its source and what its keys say (method, prompt lengths and
    depths), for `prompt_files.check_provenance`."""
    ckpt = dassl.read(path)
    found = made_by(ckpt, method)
    shapes = {k: tuple(v.shape) for k, v in ckpt.state_dict.items()}
    detected = prompt_shape(found, shapes)
    if found not in COMPATIBLE:      # an ambiguous layout's method is checked when its tensors are mapped
        detected["method"] = found
    return {"version": 1, "source": source_info(ckpt, found), "detected": detected}


def expected_keys(method: str, prompts_like: Any) -> dict[str, tuple[str, Rule, tuple[int, ...]]]:
    """{official key: (our leaf path, its rule, official shape)} of a prompt tree."""
    out = {}
    for path, leaf in P.flatten(prompts_like).items():
        try:
            key, rule = official_key(method, path)
        except KeyError as e:   # e.g. MMRL++ (mmrl.plus), whose official trainer is another one
            raise ConfigError(f"{e.args[0]}: this config's trainable tree has no official checkpoint layout",
                              hint="MMRL++ (mmrl.plus) checkpoints are not read or written yet") from None
        out[key] = (path, rule, rule.official_shape(tuple(leaf.shape)))
    return out


def to_prompts(ckpt: dassl.DasslCheckpoint, config: ml_collections.ConfigDict, backbone: CLIPConfig,
               prompts_like: Any, method: str | None = None) -> Any:
    """The prompt tree of `ckpt` for `config`'s method and `backbone`, after every check."""
    check_no_plugin(config.get("plugin", ""), f"{ckpt.path} with plugin={config.get('plugin', '')}")
    found = method_for(ckpt, config.method, method)
    expected = expected_keys(found, prompts_like)
    problems = _problems(ckpt.state_dict, found, expected, backbone, config.prompts.text.n_ctx)
    if problems:
        raise CheckpointError(f"{ckpt.path} ({DISPLAY[found]} checkpoint) does not fit this config: "
                              + "; ".join(_differences(ckpt, found, config, backbone, expected) + problems),
                              hint="evaluate it with the prompt lengths, depths and backbone it was trained with")
    flat = {}
    for key, (path, rule, _) in expected.items():
        flat[path] = rule.to_ours(np.asarray(ckpt.state_dict[key], np.float32))
    return P.unflatten(prompt_files.check_leaves(flat, prompts_like, ckpt.path))


def _problems(sd: Mapping[str, np.ndarray], method: str, expected: Mapping[str, tuple[str, Rule, tuple[int, ...]]],
              backbone: CLIPConfig, n_ctx: int) -> list[str]:
    """Missing, unexpected and mis-shaped tensors of a state dict, as message parts."""
    frozen = frozen_keys(method, backbone)
    fixed = buffers(method, backbone, n_ctx)
    unexpected, misshaped = [], []
    present = {group: 0 for group, _ in frozen.values()}
    for key, value in sd.items():
        shape = tuple(value.shape)
        if key in expected:
            want = expected[key][2]
        elif key in frozen:
            present[frozen[key][0]] += 1
            want = frozen[key][1]
        elif key in fixed:
            want = shape[:1] + fixed[key]     # (classes, tokens, width): any number of classes
        elif method == "kgcoop" and key in KGCOOP_FROZEN:
            continue
        else:
            unexpected.append(key)
            continue
        if shape != want:
            misshaped.append(f"{key} {shape} (expected {want})")
    missing = [k for k in expected if k not in sd]
    for group, count in present.items():   # a frozen tower is optional (exported files have none), but whole
        if count:
            missing += [k for k, (g, _) in frozen.items() if g == group and k not in sd]
    out = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f", ... ({len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
            out.append(f"{name} ({len(keys)}): " + ", ".join(keys[:MAX_LISTED]) + more)
    ctx_key = "prompt_learner.ctx" if "prompt_learner.ctx" in sd else "ctx"
    if ctx_key in sd and sd[ctx_key].ndim == 3:
        out.append(f"{ctx_key} is a class-specific context (CSC=True, shape {tuple(sd[ctx_key].shape)}), which "
                   "aple-jax does not support: only a generic context shared by all classes")
    return out


def _differences(ckpt: dassl.DasslCheckpoint, method: str, config: ml_collections.ConfigDict, backbone: CLIPConfig,
                 expected: Mapping[str, tuple[str, Rule, tuple[int, ...]]]) -> list[str]:
    """How the checkpoint's prompt shape and widths differ from the config's, as message parts."""
    shapes = {k: tuple(v.shape) for k, v in ckpt.state_dict.items()}
    current = prompt_files.prompt_config(config)
    out = [f"checkpoint {k}={v}, config {current.get(k)}" for k, v in prompt_shape(method, shapes).items()
           if current.get(k) != v]
    ctx = shapes.get("prompt_learner.ctx", shapes.get("ctx"))
    if ctx and ctx[-1] != backbone.text_width:
        out.append(f"checkpoint text width {ctx[-1]}, backbone {config.backbone.name!r} text width "
                   f"{backbone.text_width}")
    conv = shapes.get("image_encoder.conv1.weight")
    if conv and conv != (backbone.vision_width, 3, backbone.vision_patch_size, backbone.vision_patch_size):
        out.append(f"checkpoint CLIP vision width {conv[0]} patch {conv[-1]}, backbone {config.backbone.name!r} "
                   f"vision width {backbone.vision_width} patch {backbone.vision_patch_size}")
    key = PROMPTKD_PREFIX + "3.weight"
    if method == "promptkd" and key in shapes and key in expected and shapes[key][0] != expected[key][2][0]:
        out.append(f"checkpoint's projector maps to a {shapes[key][0]}-wide teacher, this config's teacher "
                   f"(kd.teacher={config.kd.teacher!r}) is {expected[key][2][0]} wide")
    return out


def to_state_dict(method: str, prompts: Any) -> dict[str, np.ndarray]:
    """A prompt tree under the official names of `method` (fp32; Linear weights as (out, in), 1x1 convs' as
    (out, in, 1, 1))."""
    check_supported(method)
    out = {}
    for path, leaf in P.flatten(prompts).items():
        key, rule = official_key(method, path)
        out[key] = rule.to_official(np.asarray(leaf, np.float32))
    return out


def projector_width(ckpt: dassl.DasslCheckpoint) -> int | None:
    """The teacher's width a PromptKD student's projector maps to (None when the file has no projector)."""
    for leaf in ("3.weight", "3.bias", "1.weight", "0.weight"):
        value = ckpt.state_dict.get(PROMPTKD_PREFIX + leaf)
        if value is not None and value.ndim:
            return int(value.shape[0])
    return None
