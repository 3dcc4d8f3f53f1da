"""What a method may add inside a frozen tower besides prompts: residual adapters, hooks on the attention
projections (LoRA), tokens inserted from a layer on, and replaced or shifted leaves of the frozen parameter tree.

Every mechanism is an argument, like the prompts: CLIP's parameters are never copied into the trainable tree nor
changed, and each one absent (or zero) gives plain CLIP bit for bit.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import traverse_util

Array = jax.Array
PROJECTIONS = ("query", "key", "value", "out")   # an attention block's four projections, OpenAI's q, k, v, out_proj

# (block index from 0, ln_1(x) of the block's input) -> a residual added to the block's output, or None.
Residual = Callable[[int, Array], Array | None]
# (block index, projection name, its input (..., D), its frozen output (..., D)) -> the output to use.
ProjectionHook = Callable[[int, str, Array, Array], Array]


@dataclasses.dataclass(frozen=True, eq=False)
class TowerMods:
    """A tower's additions (all optional; the tower computes plain CLIP where one is None).

    - `residual`: MMA's adapters. Block i computes `x + attn(ln_1 x) + mlp(ln_2 .) + residual(i, ln_1 x)`.
    - `projection`: LoRA's x-path. Block i's projection `name` returns `projection(i, name, input, W input)`.
    - `inserted`: MMRL's representation tokens. `inserted[k]` (n, D) sits right after the first token (CLS or SOT)
      before block `inserted_from + k`: inserted before block `inserted_from`, replaced before each later one. The
      text tower pools the EOT token where it moved to (n places on); the vision tower also returns the mean of
      `ln_post` of the inserted tokens through `inserted_proj` (width, embed_dim) as a second output. With
      `inserted_beta` b != 1 (MMRL++) a later block's tokens are `b * inserted[k] + (1 - b) * their previous output`.
    """
    residual: Residual | None = None
    projection: ProjectionHook | None = None
    inserted: Sequence[Array] | None = None
    inserted_from: int = 0
    inserted_proj: Array | None = None
    inserted_beta: float = 1.0

    def block_hooks(self, i: int) -> tuple[Callable | None, Callable | None]:
        """Block i's (residual, projection) hooks with the block index bound (static arguments of the block)."""
        residual = None if self.residual is None else (lambda h: self.residual(i, h))
        projection = None if self.projection is None else (lambda name, x, y: self.projection(i, name, x, y))
        return residual, projection


# ----------------------------------------------------------------------------------- frozen leaves, replaced

def replace_leaves(params: Any, leaves: Mapping[str, Array]) -> Any:
    """`params` with the leaves at `/`-joined paths replaced (a new tree of the same arrays; nothing is copied)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    unknown = sorted(set(leaves) - set(flat))
    if unknown:
        raise ValueError(f"no CLIP parameters at {unknown}")
    for path, value in leaves.items():
        if value.shape != flat[path].shape:
            raise ValueError(f"replacement for {path} has shape {value.shape}, the frozen leaf {flat[path].shape}")
    return traverse_util.unflatten_dict({**flat, **leaves}, sep="/")


def add_deltas(params: Any, deltas: Mapping[str, Array]) -> Any:
    """`params` with `W + delta` at the deltas' paths, computed inside the caller's jit (one pass per leaf)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return replace_leaves(params, {p: flat[p] + d.astype(flat[p].dtype) for p, d in deltas.items()})


# ---------------------------------------------------------------------------------------------------- LoRA

def lora_hook(factors: Mapping[tuple[int, str], tuple[Array, Array]], scale: float, dropout: float = 0.0,
              rng: Array | None = None) -> ProjectionHook:
    """LoRA on chosen projections: `y + scale * (dropout(x) @ A^T) @ B^T` for `factors[(block, name)] = (A, B)`,
    A (r, D_in) and B (D_out, r) laid out as PyTorch's `nn.Linear` weights; dropout only with an `rng`.

    The x-path never forms B @ A: two rank-r matmuls per token instead of a pass over the D x D matrix, and it is
    the form where the input dropout of CLIP-LoRA's `LinearLoRA` exists. With B = 0 the output is `y + 0`, plain
    CLIP bit for bit.
    """
    def hook(i: int, name: str, x: Array, y: Array) -> Array:
        if (i, name) not in factors:
            return y
        a, b = factors[(i, name)]
        if rng is not None and dropout > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(jax.random.fold_in(rng, i), PROJECTIONS.index(name)),
                                        1.0 - dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - dropout), 0.0).astype(x.dtype)
        low = (x @ a.T.astype(x.dtype)) @ b.T.astype(x.dtype)
        return y + (scale * low).astype(y.dtype)

    return hook


def lora_delta(a: Array, b: Array, scale: float) -> Array:
    """The same update as a dense `scale * B @ A` (D_out, D_in), for merging or checking the x-path."""
    return scale * b @ a


# ------------------------------------------------------------------------------------------------ gradients

@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(x: Array, factor: float) -> Array:
    """The identity, whose gradient is multiplied by `factor` (MMA's `gradient_scale_layer`)."""
    return x


def _scale_fwd(x, factor):
    return x, None


def _scale_bwd(factor, _, g):
    return (g * factor,)


scale_gradient.defvjp(_scale_fwd, _scale_bwd)
