"""Zero-shot CLIP: class text features from hand-crafted templates; also the frozen teachers of other methods."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from aple_jax import prompts as P
from aple_jax.clip.backbone import Backbone, encode_text
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.losses import normalize
from aple_jax.methods.base import Method, Phase

Array = jax.Array
ENSEMBLE_MODES = ("normalized_mean", "raw_mean")
TEMPLATE_CHOICES = ("dataset", "photo", "ensemble")   # zeroshot.templates and teacher.templates


def template_text_features(backbone: Backbone, clip_params: Any, tokenizer: Tokenizer, classnames: list[str],
                           templates: list[str], mode: str = "normalized_mean") -> Array:
    """(C, P) frozen text features averaged over templates.

    `normalized_mean` is CLIP's ensemble (normalise per template, average, renormalise); `raw_mean` averages the
    unnormalised features, as PromptSRC's text teacher does.
    """
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"template ensemble mode {mode!r}; expected one of {ENSEMBLE_MODES}")
    total = None
    for template in templates:
        texts = P.template_texts(backbone, clip_params, tokenizer, classnames, template)
        f = encode_text(backbone, clip_params, texts.embeds, texts.eot_idx)
        f = normalize(f) if mode == "normalized_mean" else f
        total = f if total is None else total + f
    mean = total / len(templates)
    return normalize(mean) if mode == "normalized_mean" else mean


class ZeroShot(Method):
    """No prompts: the dataset's hand-crafted template, or CLIP's ImageNet template ensemble."""
    name = "zeroshot"

    def init(self, rng: Array, clip_params: Any, classnames: Sequence[str] = ()) -> P.Tree:
        return {}

    def eval_text_features(self, prompts: P.Tree, clip_params: Any, classnames: list[str],
                           dataset_template: str) -> Array:
        templates = self.templates(dataset_template)
        return template_text_features(self.backbone, clip_params, self.tokenizer, classnames, templates)

    def eval_texts(self, classnames: list[str], dataset_template: str) -> list[str]:
        return [t.format(name.replace("_", " ")) for t in self.templates(dataset_template) for name in classnames]

    def templates(self, dataset_template: str) -> list[str]:
        from aple_jax.data.templates import IMAGENET_TEMPLATES
        choice = self.config.zeroshot.templates
        options = {"dataset": [dataset_template], "photo": ["a photo of a {}."], "ensemble": list(IMAGENET_TEMPLATES)}
        if choice not in options:
            raise ValueError(f"zeroshot.templates={choice!r}; expected one of {sorted(options)}")
        return options[choice]

    def phases(self) -> list[Phase]:
        return []
