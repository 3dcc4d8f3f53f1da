"""Methods by name. A method is a way of building the towers' prompt arguments plus a phase schedule."""
from __future__ import annotations

import ml_collections

from aple_jax.clip.backbone import Backbone
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.methods.aple import APLe
from aple_jax.methods.base import Method, Phase
from aple_jax.methods.clip_lora import CLIPLoRA
from aple_jax.methods.cocoop import CoCoOp
from aple_jax.methods.maple import MaPLe
from aple_jax.methods.mma import MMA
from aple_jax.methods.mmrl import MMRL
from aple_jax.methods.promptkd import PromptKD
from aple_jax.methods.twostage import TwoStage
from aple_jax.methods.zeroshot import ZeroShot

METHODS: dict[str, type[Method]] = {
    "zeroshot": ZeroShot,
    "coop": Method,       # deep-prompt method with text depth 1 and no vision prompts
    "kgcoop": Method,     # CoOp + the text_cos loss term
    "cocoop": CoCoOp,
    "maple": MaPLe,
    "ivlp": Method,
    "promptsrc": Method,  # IVLP + kl, l1_text, l1_image terms + GPA
    "aple": APLe,
    "clip_lora": CLIPLoRA,
    "mma": MMA,
    "twostage": TwoStage,
    "mmrl": MMRL,
    "promptkd": PromptKD,  # a student distilled from a larger CLIP's teacher (transductive)
}


def build_method(config: ml_collections.ConfigDict, backbone: Backbone, tokenizer: Tokenizer) -> Method:
    """The config's method, with its plug-in (`config.plugin`) on when it names one."""
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; expected one of {sorted(METHODS)}")
    plugin = config.get("plugin", "")
    if not plugin:
        return METHODS[config.method](config, backbone, tokenizer)
    from aple_jax import plugins   # plug-ins build on the methods above: imported once those are
    why = plugins.problem(config.method, plugin)
    if why:
        raise ValueError(why)
    return plugins.compose(config.method, plugin)(config, backbone, tokenizer)


__all__ = ["METHODS", "Method", "Phase", "build_method"]
