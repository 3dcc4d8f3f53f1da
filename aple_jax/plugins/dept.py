"""DePT (Koorye/DePT, CVPR'24): a channel-adjusted linear head for the base classes beside the method's CLIP head.

Both towers' features (unnormalised, as the method computes them) pass a channel-wise affine map ("CAT", FiLM: scale
from 1, bias from 0), one for images and one for texts, into a linear layer over the training classes (PyTorch's
init). Training mixes the losses: the method's CE weighted (1 - w), the head's CE weighted w, where the head is fed
the batch's image features and its labels' class text features as extra samples (2B rows, labels twice); the
method's other terms keep their weights. The head trains with the prompts at `head_lr_scale` times the phase's
learning rate (official: 0.0035 x 6.5 against 0.0035). At test time the classes the head was trained on (the
"base" split, the "all" split, the transfer source) get `(1 - w) * CLIP logits + w * head logits`; any other
split (new classes, transfer targets) the method's own logits, untouched.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from aple_jax import losses as L
from aple_jax import plugins
from aple_jax import prompts as P
from aple_jax.methods.base import MODALITIES, Phase
from aple_jax.methods.maple import linear, torch_linear_init

Array = jax.Array
HEAD = "dept"
HEAD_LEAVES = f"{HEAD}/.*"
_HEAD_KEY = 0x0DE9   # the head's init key is folded from the run's key: the method's own leaves start as without it


def film_init(dim: int) -> dict[str, Array]:
    return {"scale": jnp.ones((dim,), jnp.float32), "bias": jnp.zeros((dim,), jnp.float32)}


def head_logits(head: dict[str, Any], film: str, features: Array) -> Array:
    """(N, C) logits of the head on (N, P) features through the named channel-wise affine map."""
    f = head[film]
    return linear(head["linear"], features * f["scale"] + f["bias"])


def mixed_losses(losses: tuple[tuple[str, float], ...], weight: float) -> tuple[tuple[str, float], ...]:
    """The phase's CE split into (1 - w) CE + w DePT CE; the other terms as they were."""
    out = [(k, v * (1.0 - weight)) if k == "ce" else (k, v) for k, v in losses]
    ce = dict(losses)["ce"]
    return tuple(sorted(out + [(HEAD, ce * weight)]))


class DePT:
    """DePT on top of a method (mixed in before its class by aple_jax.plugins.compose)."""
    defaults = {"weight": 0.7, "head_lr_scale": 6.5}
    eval_settings = ("weight",)   # what changes the logits of trained prompts (recorded in prompts files)
    own_terms = {HEAD: ""}

    def _settings(self) -> dict[str, Any]:
        return plugins.settings(self.config, HEAD)

    def init(self, rng: Array, clip_params: Any, classnames: Sequence[str] = ()) -> P.Tree:
        """The method's tree (from the same key), and the head over the training `classnames`."""
        tree = super().init(rng, clip_params, classnames)
        dim = self.backbone.cfg.embed_dim
        tree[HEAD] = {"film_image": film_init(dim), "film_text": film_init(dim),
                      "linear": torch_linear_init(jax.random.fold_in(rng, _HEAD_KEY), dim, len(classnames))}
        return tree

    def phases(self) -> list[Phase]:
        """Each of the method's phases with a CE term also trains the head, with the mixed losses."""
        s = self._settings()
        return [dataclasses.replace(p, train=p.train + (HEAD_LEAVES,), losses=mixed_losses(p.losses, s["weight"]),
                                    lr_scales=p.lr_scales + ((HEAD_LEAVES, s["head_lr_scale"]),))
                if p.weights.get("ce") else p for p in super().phases()]

    def train_outputs(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts, images: Array,
                      present: tuple[str, ...] = MODALITIES, text_cache: Array | None = None,
                      rng: Array | None = None) -> dict[str, Array]:
        """The method's outputs, and the head's logits of the batch's images (B, C) and of every class text (C, C)."""
        out = super().train_outputs(prompts, clip_params, texts, images, present, text_cache, rng=rng)
        head = prompts[HEAD]
        return {**out, "dept_image": head_logits(head, "film_image", out["image"]),
                "dept_text": head_logits(head, "film_text", out["text"])}

    def own_loss_terms(self, outputs: dict[str, Array], logits: Array, batch: Any, teacher: Any,
                       weights: Any) -> dict[str, Array]:
        """The head's CE over the batch's images and its labels' class texts (official: both as samples)."""
        terms = super().own_loss_terms(outputs, logits, batch, teacher, weights)
        if weights.get(HEAD):
            labels = batch["label"]
            head_logits_ = jnp.concatenate([outputs["dept_text"][labels], outputs["dept_image"]])
            terms[HEAD] = L.cross_entropy(head_logits_, jnp.concatenate([labels, labels]))
        return terms

    def head_splits(self) -> tuple[str, ...]:
        """The splits scored over the classes the head was trained on."""
        return ("base", "all", self.config.dataset.name)

    def eval_logits(self, prompts: P.Tree, clip_params: Any, class_side: Any, images: Array, split: str) -> Array:
        """On the head's classes the fused logits; on any other split the method's own."""
        head = prompts[HEAD]
        if split not in self.head_splits() or head["linear"]["bias"].shape[0] != class_side.shape[0]:
            return super().eval_logits(prompts, clip_params, class_side, images, split)
        img = self.image_features(prompts, clip_params, images)
        logits = L.cosine_logits(self.backbone.logit_scale(clip_params), img, class_side)
        w = self._settings()["weight"]
        return (1.0 - w) * logits + w * head_logits(head, "film_image", img)
