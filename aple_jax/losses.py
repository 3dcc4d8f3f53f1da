"""Loss terms shared by the methods; a phase weights them by name.

Every term is a function of the student's and the frozen teachers' features, so a method is a choice of weights:
APLe Stage I = ce + kl, KgCoOp = ce + text_cos, PromptSRC = ce + kl + l1_text + l1_image.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
KL_DIRECTIONS = ("zs_p", "p_zs")
KL_REDUCTIONS = ("sum_over_bc", "batchmean")
TERMS = ("ce", "kl", "l1_text", "l1_image", "text_cos")


@dataclasses.dataclass(frozen=True)
class KLOptions:
    temperature: float = 1.0
    direction: str = "zs_p"          # KL(p_zs || p), as PromptSRC
    reduction: str = "sum_over_bc"   # sum / (B * C), as PromptSRC

    def __post_init__(self) -> None:
        if self.direction not in KL_DIRECTIONS:
            raise ValueError(f"kl direction {self.direction!r}; expected one of {KL_DIRECTIONS}")
        if self.reduction not in KL_REDUCTIONS:
            raise ValueError(f"kl reduction {self.reduction!r}; expected one of {KL_REDUCTIONS}")


def normalize(x: Array) -> Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def cosine_logits(scale: Array, image_features: Array, text_features: Array) -> Array:
    """`scale * cos`: text features (C, P) shared, or (B, C, P) per image (CoCoOp)."""
    img = normalize(image_features)
    txt = normalize(text_features)
    if txt.ndim == 3:
        return scale * jnp.einsum("bp,bcp->bc", img, txt)
    return scale * img @ txt.T


def cross_entropy(logits: Array, labels: Array) -> Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def kl_to_zero_shot(logits: Array, zs_logits: Array, opts: KLOptions) -> Array:
    """KL between the zero-shot and prompted predictions at temperature T."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32) / opts.temperature, axis=-1)
    log_q = jax.nn.log_softmax(jax.lax.stop_gradient(zs_logits).astype(jnp.float32) / opts.temperature, axis=-1)
    if opts.direction == "zs_p":
        pointwise = jnp.exp(log_q) * (log_q - log_p)
    else:
        pointwise = jnp.exp(log_p) * (log_p - log_q)
    denom = logits.size if opts.reduction == "sum_over_bc" else logits.shape[0]
    return pointwise.sum() / denom


def l1_to_frozen(features: Array, frozen: Array) -> Array:
    """Mean absolute difference of normalised features (PromptSRC's L_txt and L_img)."""
    return jnp.abs(normalize(features) - jax.lax.stop_gradient(normalize(frozen))).mean()


def text_cosine(features: Array, frozen: Array) -> Array:
    """KgCoOp's 1 - mean cosine between prompted and hand-crafted class text features."""
    cos = (normalize(features) * jax.lax.stop_gradient(normalize(frozen))).sum(-1)
    return 1.0 - cos.mean()
