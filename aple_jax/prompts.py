"""Prompt pytrees, kept apart from CLIP parameters, and the builders that turn them into tower arguments.

A prompt tree is a nested dict of arrays. Paths are `/`-joined keys, e.g. `text/ctx`, `text/deep_3`,
`vision/shallow`, `vision/deep_1`; a phase selects leaves (or token rows of a leaf) by patterns over these paths.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct, traverse_util

from aple_jax.clip.backbone import Backbone, embed_tokens
from aple_jax.clip.tokenizer import Tokenizer

Array = jax.Array
Tree = dict[str, Any]


# ---------------------------------------------------------------------------------------------------- class texts

@struct.dataclass
class ClassTexts:
    """Token embeddings of `"{prefix} {classname}."` for every class, cut after the last EOT (a pytree).

    The learned context replaces slots 1..n_ctx; the EOT index is that of the full string and never moves.
    """
    embeds: Array      # (C, L, D) frozen token embeddings (no positions)
    eot_idx: Array     # (C,)
    classnames: tuple[str, ...] = struct.field(pytree_node=False)


def class_prompt_strings(classnames: list[str], prefix: str) -> list[str]:
    return [f"{prefix} {name.replace('_', ' ')}." for name in classnames]


def truncate_after_eot(ids: np.ndarray, eot_idx: np.ndarray) -> np.ndarray:
    """Tokens past the last EOT never reach a causal EOT feature: cut them (static length per class set)."""
    return ids[:, : int(eot_idx.max()) + 1]


def build_class_texts(backbone: Backbone, clip_params: Any, tokenizer: Tokenizer, classnames: list[str],
                      prefix: str, cut_after_eot: bool = True) -> ClassTexts:
    ids, eot = tokenizer.tokenize(class_prompt_strings(classnames, prefix), backbone.cfg.context_length)
    if cut_after_eot:
        ids = truncate_after_eot(ids, eot)
    embeds = embed_tokens(backbone, clip_params, jnp.asarray(ids))
    return ClassTexts(embeds, jnp.asarray(eot), tuple(classnames))


def template_texts(backbone: Backbone, clip_params: Any, tokenizer: Tokenizer, classnames: list[str],
                   template: str) -> ClassTexts:
    """Hand-crafted prompts `template.format(classname)` (zero-shot CLIP and teachers)."""
    texts = [template.format(name.replace("_", " ")) for name in classnames]
    ids, eot = tokenizer.tokenize(texts, backbone.cfg.context_length)
    ids = truncate_after_eot(ids, eot)
    return ClassTexts(embed_tokens(backbone, clip_params, jnp.asarray(ids)), jnp.asarray(eot), tuple(classnames))


def with_context(embeds: Array, ctx: Array) -> Array:
    """Class token embeddings `(C, L, D)` with slots 1..n replaced by the context `(n, D)` or `(C, n, D)`."""
    c, n = embeds.shape[0], ctx.shape[-2]
    ctx = jnp.broadcast_to(ctx, (c,) + ctx.shape[-2:]).astype(embeds.dtype)
    return jnp.concatenate([embeds[:, :1], ctx, embeds[:, 1 + n:]], axis=1)


# ---------------------------------------------------------------------------------------------- initialisation

def context_prefix(tokenizer: Tokenizer, init: str, n_ctx: int) -> tuple[str, bool]:
    """The string whose first n_ctx token slots the context replaces, and whether it initialises the context.

    As in MaPLe/IVLP: with an init string of at least n_ctx tokens the prompt is that string (so with n_ctx = 2,
    "of a" stays as fixed tokens); otherwise n_ctx placeholder words "X" and a random N(0, 0.02) init.
    """
    if init and init != "random" and int(tokenizer.tokenize([init])[1][0]) - 1 >= n_ctx:
        return init, True
    return " ".join(["X"] * n_ctx), False


def init_text_context(backbone: Backbone, clip_params: Any, tokenizer: Tokenizer, init: str, n_ctx: int,
                      rng: Array) -> tuple[Array, str]:
    """(ctx (n_ctx, D), prefix string) for a text context."""
    prefix, from_words = context_prefix(tokenizer, init, n_ctx)
    if from_words:
        ids, _ = tokenizer.tokenize([prefix], backbone.cfg.context_length)
        emb = backbone.embed(clip_params, jnp.asarray(ids[:1, 1:1 + n_ctx]))[0]
        return jnp.asarray(emb, jnp.float32), prefix
    return 0.02 * jax.random.normal(rng, (n_ctx, backbone.cfg.text_width), jnp.float32), prefix


def normal_prompts(rng: Array, count: int, n_ctx: int, width: int, std: float = 0.02) -> list[Array]:
    return list(std * jax.random.normal(rng, (count, n_ctx, width), jnp.float32))


def deep_leaves(prompts: Mapping[str, Array], depth: int) -> list[Array] | None:
    """`[deep_1, ..., deep_{depth-1}]` of a modality's subtree, or None for depth 1."""
    return [prompts[f"deep_{i}"] for i in range(1, depth)] or None


# ------------------------------------------------------------------------------------------ paths and selections

def flatten(tree: Tree) -> dict[str, Array]:
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: Mapping[str, Array]) -> Tree:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


_SELECTOR = re.compile(r"^(?P<pattern>[^\[\]]+)(\[(?P<start>\d+)(?P<colon>:(?P<stop>\d+)?)?\])?$")


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which leaves a phase trains and, for partially trained leaves, a 0/1 mask over their token rows."""
    leaves: tuple[str, ...]
    row_masks: Mapping[str, np.ndarray]

    def labels(self, tree: Tree) -> Tree:
        """optax.partition labels: 'train' for selected leaves, 'freeze' for the rest."""
        return unflatten({p: ("train" if p in self.leaves else "freeze") for p in flatten(tree)})


def select(tree: Tree, selectors: tuple[str, ...]) -> Selection:
    """Resolves selectors `regex` or `regex[i]` / `regex[i:j]` (token rows) against the tree's leaf paths.

    A regex must match a whole path; every selector must match at least one leaf.
    """
    flat = flatten(tree)
    rows: dict[str, np.ndarray] = {}
    whole: set[str] = set()
    for selector in selectors:
        m = _SELECTOR.match(selector.strip())
        if not m:
            raise ValueError(f"phase selector {selector!r} is not 'regex' or 'regex[i]' / 'regex[i:j]'")
        regex = re.compile(m["pattern"])
        matched = [p for p in flat if regex.fullmatch(p)]
        if not matched:
            raise ValueError(f"phase selector {selector!r} matches no prompt leaf; leaves are {sorted(flat)}")
        for path in matched:
            if m["start"] is None:
                whole.add(path)
                continue
            start = int(m["start"])
            stop = int(m["stop"]) if m["stop"] else (start + 1 if not m["colon"] else flat[path].shape[0])
            if not 0 <= start < stop <= flat[path].shape[0]:
                raise ValueError(f"phase selector {selector!r}: rows {start}:{stop} outside leaf {path!r} of "
                                 f"{flat[path].shape[0]} rows")
            mask = rows.setdefault(path, np.zeros(flat[path].shape[0], np.float32))
            mask[start:stop] = 1.0
    for path in whole:
        rows.pop(path, None)
    leaves = tuple(sorted(whole | set(rows)))
    return Selection(leaves, rows)


def split(tree: Tree, leaves: tuple[str, ...]) -> tuple[dict[str, Array], dict[str, Array]]:
    """(selected, rest) as flat dicts."""
    flat = flatten(tree)
    return ({p: v for p, v in flat.items() if p in leaves}, {p: v for p, v in flat.items() if p not in leaves})


def merge(*parts: Mapping[str, Array]) -> Tree:
    out: dict[str, Array] = {}
    for part in parts:
        out.update(part)
    return unflatten(out)


def count_params(tree: Tree) -> int:
    return int(sum(np.prod(v.shape) for v in jax.tree.leaves(tree)))
