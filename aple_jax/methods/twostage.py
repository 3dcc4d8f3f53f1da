"""2SFS (two-stage few-shot): tune the LayerNorms of both towers, then a linear head initialised from the class text
features on the frozen (adapted) image features; selective inference: base classes through the head, new classes
through the adapted text tower.

As in FarinaMatteo/rethinking_fewshot_vlms (`fs/twostage.py`, `fs/utils/model_utils.py`): stage 1 trains the
`ln_1` and `ln_2` scale and bias of every residual block with CE on the dataset's template; `ln_pre`, `ln_post` and
`ln_final` stay frozen, because `named_modules_with_index` yields them a second time with block index -1, which turns
their gradients off again (the paper speaks of all LayerNorms; we follow the code). The trained values replace the
frozen leaves inside the step (`mods.replace_leaves`); they start as CLIP's own. Stage 2 trains `head/classifier`
(C, P), set at its start to the adapted text tower's normalised class features, as `logit_scale * cos(image, row)`.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from aple_jax import losses as L
from aple_jax import prompts as P
from aple_jax.clip.backbone import Backbone
from aple_jax.clip.mods import replace_leaves
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.methods.base import Method, Phase, TemplateTexts

Array = jax.Array
TOWER_PATHS = {"text": "text/transformer", "vision": "visual/transformer"}
HEAD = ("head",)   # the `present` of the head phase
BOTH = ("text", "vision")


class TwoStage(TemplateTexts, Method):
    name = "twostage"
    text_side = ("text/", "head/")   # the head is the class side of the head phase's logits

    def __init__(self, config: ml_collections.ConfigDict, backbone: Backbone, tokenizer: Tokenizer):
        super().__init__(config, backbone, tokenizer)
        tc = config.twostage
        if not 0 < tc.stage1_fraction < 1 or tc.iterations_per_shot < 0:
            raise ValueError(f"twostage.stage1_fraction={tc.stage1_fraction} must be in (0, 1) and "
                             f"twostage.iterations_per_shot={tc.iterations_per_shot} >= 0")

    # ------------------------------------------------------------------------------------------------ the tree
    def init(self, rng: Array, clip_params: Any, classnames: Sequence[str] = ()) -> P.Tree:
        """Copies of CLIP's block LayerNorms (stage 1; copies, as the train state is donated) and a zero head of one
        row per training class (set as stage 2 starts)."""
        tree: P.Tree = {}
        frozen = P.flatten(clip_params)
        for tower, prefix in TOWER_PATHS.items():
            tree[tower] = {}
            layers = self.backbone.cfg.text_layers if tower == "text" else self.backbone.cfg.vision_layers
            for i in range(layers):
                tree[tower][f"block_{i}"] = {ln: {k: jnp.copy(frozen[f"{prefix}/resblocks.{i}/{ln}/{k}"])
                                                  for k in ("scale", "bias")} for ln in ("ln_1", "ln_2")}
        tree["head"] = {"classifier": jnp.zeros((max(len(classnames), 1), self.backbone.cfg.embed_dim), jnp.float32)}
        return tree

    def tuned_params(self, prompts: P.Tree, clip_params: Any, tower: str) -> Any:
        """CLIP's parameters with the tower's block LayerNorms replaced by the tuned ones."""
        if tower not in prompts:
            return clip_params
        prefix = TOWER_PATHS[tower]
        return replace_leaves(clip_params, {f"{prefix}/resblocks.{block.removeprefix('block_')}/{path}": value
                                            for block, lns in prompts[tower].items()
                                            for path, value in P.flatten(lns).items()})

    def begin_phase(self, index: int, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts) -> P.Tree:
        """At the head phase's start, the head's rows become the adapted text tower's normalised class features."""
        if index != 1:
            return prompts
        head = L.normalize(self.text_features_jit(prompts, clip_params, texts))
        return {**prompts, "head": {"classifier": head}}

    # ---------------------------------------------------------------------------------------------- features
    def text_features(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts,
                      present: tuple[str, ...] = BOTH) -> Array:
        if present == HEAD:
            return prompts["head"]["classifier"]
        params = self.tuned_params(prompts, clip_params, "text")
        return self.backbone.text(params, texts.embeds, texts.eot_idx)

    def image_features(self, prompts: P.Tree, clip_params: Any, images: Array,
                       present: tuple[str, ...] = BOTH) -> Array:
        return self.backbone.image(self.tuned_params(prompts, clip_params, "vision"), images)

    def uses_vision_prompts(self, prompts: P.Tree, present: tuple[str, ...]) -> bool:
        return "vision" in prompts

    def eval_logits(self, prompts: P.Tree, clip_params: Any, class_side: Any, images: Array, split: str) -> Array:
        """Selective inference: the head on the classes it was trained on ("base", and "all" in the all-class
        setting), once stage 2 has set it; the adapted text tower's features on any other split."""
        img = self.image_features(prompts, clip_params, images)
        scale = self.backbone.logit_scale(clip_params)
        text_logits = L.cosine_logits(scale, img, class_side)
        head = prompts["head"]["classifier"]
        if split not in ("base", "all") or head.shape != class_side.shape:
            return text_logits
        return jnp.where(jnp.any(head != 0), L.cosine_logits(scale, img, head), text_logits)

    # ------------------------------------------------------------------------------------------------ phases
    def phases(self) -> list[Phase]:
        """LayerNorms for `stage1_fraction` of the `iterations_per_shot` x shots steps (official: int(300 x shots x
        0.6)), then the head for the rest; with no step budget (shots 0, or 0 per shot) `optim.epochs` each."""
        c, tc = self.config, self.config.twostage
        total = int(tc.iterations_per_shot) * int(c.dataset.shots)
        first = int(total * tc.stage1_fraction)
        return [Phase("ln", ("text/.*", "vision/.*"), c.optim.epochs, c.optim.lr, BOTH, iterations=first),
                Phase("head", ("head/.*",), c.optim.epochs, c.optim.lr, HEAD, iterations=total - first)]
