"""CLIP-LoRA: low-rank updates of chosen attention projections in both towers, trained with CE on hand-crafted
class prompts (the dataset's template); no prompt tokens.

Each chosen projection W (out, in) becomes `W + s B A` with A (r, in), B (out, r), s = alpha / sqrt(r) (the official
loralib's scaling; the LoRA paper's is alpha / r), applied on the input path `y + s (dropout(x) A^T) B^T` as the
official `LinearLoRA` does when it has dropout: the frozen weights are never merged, copied or changed. A starts
as PyTorch's `kaiming_uniform_(a=sqrt(5))` (uniform in +-1/sqrt(in)), B at zero, so training starts at plain CLIP.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from aple_jax import prompts as P
from aple_jax.clip.backbone import Backbone
from aple_jax.clip.mods import PROJECTIONS, TowerMods, lora_hook
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.methods.base import MODALITIES, Method, Phase, TemplateTexts

Array = jax.Array
TOWERS = ("text", "vision")


class CLIPLoRA(TemplateTexts, Method):
    name = "clip_lora"
    needs_rng = True   # LoRA's input dropout

    def __init__(self, config: ml_collections.ConfigDict, backbone: Backbone, tokenizer: Tokenizer):
        super().__init__(config, backbone, tokenizer)
        lc = config.lora
        self.towers = tuple(lc.towers)
        self.matrices = tuple(lc.matrices)
        bad = [t for t in self.towers if t not in TOWERS] + [m for m in self.matrices if m not in PROJECTIONS]
        if bad or not self.towers or not self.matrices:
            raise ValueError(f"lora.towers={self.towers} / lora.matrices={self.matrices}: expected some of {TOWERS} "
                             f"and of {PROJECTIONS}")
        if lc.rank < 1 or not 0 <= lc.dropout < 1:
            raise ValueError(f"lora.rank={lc.rank} must be >= 1 and lora.dropout={lc.dropout} in [0, 1)")
        self.rank, self.dropout = int(lc.rank), float(lc.dropout)
        self.scale = float(lc.alpha) / math.sqrt(self.rank)

    def layers(self, tower: str) -> tuple[int, ...]:
        """The tower's blocks with LoRA: `lora.layers` ("all", or block indices from 0)."""
        n = self.backbone.cfg.text_layers if tower == "text" else self.backbone.cfg.vision_layers
        chosen = self.config.lora.layers
        if chosen == "all":
            return tuple(range(n))
        if isinstance(chosen, str) or any(not 0 <= int(i) < n for i in chosen):
            raise ValueError(f"lora.layers={chosen!r}: expected 'all' or block indices in [0, {n})")
        return tuple(sorted({int(i) for i in chosen}))

    # ------------------------------------------------------------------------------------------------ the tree
    def init(self, rng: Array, clip_params: Any, classnames: Sequence[str] = ()) -> P.Tree:
        tree: P.Tree = {}
        for tower in self.towers:
            width = self.backbone.cfg.text_width if tower == "text" else self.backbone.cfg.vision_width
            bound = width ** -0.5
            tree[tower] = {}
            for i in self.layers(tower):
                tree[tower][f"block_{i}"] = {}
                for name in self.matrices:
                    rng, key = jax.random.split(rng)
                    tree[tower][f"block_{i}"][name] = {
                        "a": jax.random.uniform(key, (self.rank, width), jnp.float32, -bound, bound),
                        "b": jnp.zeros((width, self.rank), jnp.float32)}
        return tree

    def mods(self, prompts: P.Tree, tower: str, rng: Array | None) -> TowerMods | None:
        """The tower's LoRA hook (dropout when an `rng` is given, i.e. while training)."""
        if tower not in prompts:
            return None
        factors = {(int(block.removeprefix("block_")), name): (ab["a"], ab["b"])
                   for block, matrices in prompts[tower].items() for name, ab in matrices.items()}
        return TowerMods(projection=lora_hook(factors, self.scale, self.dropout, rng))

    # ---------------------------------------------------------------------------------------------- features
    def text_features(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts,
                      present: tuple[str, ...] = MODALITIES, rng: Array | None = None) -> Array:
        mods = self.mods(prompts, "text", rng) if "text" in present else None
        return self.backbone.text(clip_params, texts.embeds, texts.eot_idx, mods=mods)

    def image_features(self, prompts: P.Tree, clip_params: Any, images: Array,
                       present: tuple[str, ...] = MODALITIES, rng: Array | None = None) -> Array:
        mods = self.mods(prompts, "vision", rng) if "vision" in present else None
        return self.backbone.image(clip_params, images, mods=mods)

    def uses_vision_prompts(self, prompts: P.Tree, present: tuple[str, ...]) -> bool:
        return "vision" in present and "vision" in prompts

    def features(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts, images: Array,
                 present: tuple[str, ...] = MODALITIES, text_cache: Array | None = None,
                 rng: Array | None = None) -> tuple[Array, Array]:
        k_img, k_txt = (None, None) if rng is None else jax.random.split(rng)
        img = self.image_features(prompts, clip_params, images, present, k_img)
        txt = text_cache if text_cache is not None else self.text_features(prompts, clip_params, texts, present,
                                                                           k_txt)
        return img, txt

    # ------------------------------------------------------------------------------------------------ phases
    def phases(self) -> list[Phase]:
        """One phase over every LoRA factor; its budget is `lora.iterations_per_shot` x shots steps (official:
        500 x shots), or `optim.epochs` when that is 0 or the run uses every training image (shots 0)."""
        c = self.config
        per_shot, shots = int(c.lora.iterations_per_shot), int(c.dataset.shots)
        iterations = per_shot * shots if per_shot and shots else 0
        return [Phase("train", (".*",), c.optim.epochs, c.optim.lr, MODALITIES, iterations=iterations)]
