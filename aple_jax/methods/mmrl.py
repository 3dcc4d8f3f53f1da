"""MMRL (Multi-Modal Representation Learning): a few representation tokens in a space of their own, projected per
layer into both towers from a middle block on; a second image feature pooled from them; CE on both logits, cosine
regularisers towards frozen CLIP; class and representation logits fused only on the classes it trained on.

As yunncheng/MMRL has it (`trainers/mmrl.py`, `clip/model_mmrl.py`): `rep_tokens` (n, rep_dim), normal with std
0.02, are mapped by one `nn.Linear(rep_dim, width)` per block from `start` to the last and per tower (all the
per-block copies of a tower start equal: `_get_clones` deep-copies one layer) and inserted after CLS / SOT before
block `start`, replaced before each later one. The text tower pools its EOT where the tokens moved it; the image
tower also pools `ln_post` of the representation tokens, averaged, through `proj_rep` (width, embed), trained from
a random start (`width ** -0.5 * randn`; the official loader is `strict=False` and CLIP has no such weight). The
training texts are the dataset's hand-crafted template (CoOp's `CUSTOM_TEMPLATES`), no context tokens.

Loss: `alpha CE(class logits) + (1 - alpha) CE(rep logits) + reg (1 - cos(image, CLIP image)) + reg (1 - cos(text,
CLIP text))`, the CLIP image features from the same augmented batch, the CLIP text ones from the template. At test
time `alpha class + (1 - alpha) rep` logits on the training classes (B2N base, few-shot, cross-dataset source),
class logits alone on any other class set (B2N new, transfer targets).

Trainable leaves and the official state_dict keys (prefix `representation_learner.` unless said):
`rep_tokens` = `compound_rep_tokens`; `text/r2tproj_{k}/kernel` = `compound_rep_tokens_r2tproj.{k}.weight`
transposed, `/bias` = `.bias`; `vision/r2vproj_{k}/...` likewise for `compound_rep_tokens_r2vproj.{k}`;
`vision/proj_rep` = `image_encoder.proj_rep` (same layout). Projection k feeds block `start + k` (from 1).

MMRL++ (`mmrl.plus`, `trainers/mmrlpp.py`, `clip/model_mmrlpp.py`): each later block's tokens are `beta * new +
(1 - beta) * their previous output`; `text/srra/kernel` = `srra_r2tproj.weight` transposed and
`text/srra_{k}/{a,b,bias}` = `srra_r2tproj.srra.{k}.{A,B,bias}` (likewise `vision/` for `srra_r2vproj`),
`vision/proj_rep_{a,b}` = `image_encoder.{A,B}`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from aple_jax import losses as L
from aple_jax import prompts as P
from aple_jax.clip.backbone import Backbone
from aple_jax.clip.mods import TowerMods
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.methods.base import MODALITIES, Method, Phase, TemplateTexts, loss_weights
from aple_jax.methods.maple import linear, torch_linear_init

Array = jax.Array


def _kaiming_uniform(rng: Array, shape: tuple[int, int]) -> Array:
    """PyTorch's `kaiming_uniform_(a=sqrt(5))` of a (out, in) tensor: uniform in +-1/sqrt(in)."""
    bound = shape[1] ** -0.5
    return jax.random.uniform(rng, shape, jnp.float32, -bound, bound)


class MMRL(TemplateTexts, Method):
    name = "mmrl"
    text_side = ("text/", "rep_tokens")
    # The representation CE needs no teacher; the regularisers need frozen CLIP's image and text features.
    own_terms = {"ce_rep": "", "reg_image": "image", "reg_text": "text"}

    def __init__(self, config: ml_collections.ConfigDict, backbone: Backbone, tokenizer: Tokenizer):
        super().__init__(config, backbone, tokenizer)
        mc = config.mmrl
        layers = min(backbone.cfg.text_layers, backbone.cfg.vision_layers)
        if not (1 <= mc.start <= layers and mc.n_tokens >= 1 and mc.rep_dim >= 1 and 0 <= mc.alpha <= 1
                and mc.reg_weight >= 0):
            raise ValueError(f"mmrl.start={mc.start} must be a block in 1..{layers}, mmrl.n_tokens={mc.n_tokens} and "
                             f"mmrl.rep_dim={mc.rep_dim} >= 1, mmrl.alpha={mc.alpha} in [0, 1] and "
                             f"mmrl.reg_weight={mc.reg_weight} >= 0")
        if dict(config.get("loss_weights", {"ce": 1.0})) != {"ce": 1.0}:
            raise ValueError(f"mmrl takes its loss weights from mmrl.alpha and mmrl.reg_weight; leave loss_weights "
                             f"at {{'ce': 1.0}} (got {dict(config.loss_weights)})")
        self.first = int(mc.start) - 1                    # the first block (from 0) that sees the tokens
        self.blocks = layers - self.first                  # how many blocks get a projection of them
        self.n_tokens, self.rep_dim = int(mc.n_tokens), int(mc.rep_dim)
        self.alpha, self.reg_weight = float(mc.alpha), float(mc.reg_weight)
        self.plus = bool(mc.get("plus", False))
        if self.plus and not (0 <= mc.beta <= 1 and mc.res_rank >= 1 and mc.proj_rank >= 1):
            raise ValueError(f"MMRL++ needs mmrl.beta={mc.beta} in [0, 1], mmrl.res_rank={mc.res_rank} and "
                             f"mmrl.proj_rank={mc.proj_rank} >= 1")
        self.beta = float(mc.beta) if self.plus else 1.0
        # The split that scores the classes it trained on: base, all, or the transfer source (its dataset's name).
        self.fused_splits = ("base", "all", config.dataset.name)

    # ------------------------------------------------------------------------------------------------ the tree
    def init(self, rng: Array, clip_params: Any, classnames: Sequence[str] = ()) -> P.Tree:
        if self.plus:
            return self.init_plus(rng)
        cfg = self.backbone.cfg
        k_tok, k_txt, k_vis, k_proj = jax.random.split(rng, 4)
        r2t = torch_linear_init(k_txt, self.rep_dim, cfg.text_width)     # one layer per tower, cloned per block
        r2v = torch_linear_init(k_vis, self.rep_dim, cfg.vision_width)
        copy = lambda layer: jax.tree.map(jnp.copy, layer)
        return {
            "rep_tokens": 0.02 * jax.random.normal(k_tok, (self.n_tokens, self.rep_dim), jnp.float32),
            "text": {f"r2tproj_{k}": copy(r2t) for k in range(self.blocks)},
            "vision": {**{f"r2vproj_{k}": copy(r2v) for k in range(self.blocks)},
                       "proj_rep": cfg.vision_width ** -0.5 * jax.random.normal(
                           k_proj, (cfg.vision_width, cfg.embed_dim), jnp.float32)},
        }

    def init_plus(self, rng: Array) -> P.Tree:
        """MMRL++: per tower one shared projection (`srra/kernel`) and per block a rank-r residual `a @ b` (a as
        PyTorch's `kaiming_uniform_(a=sqrt(5))`, b zero) with its own bias (each a copy of the shared layer's);
        the image representation projection is CLIP's `proj` plus a rank-64 `proj_rep_a @ proj_rep_b` (b zero)."""
        cfg, mc = self.backbone.cfg, self.config.mmrl
        k_tok, k_proj, *keys = jax.random.split(rng, 4 + 2 * self.blocks)
        tree: P.Tree = {"rep_tokens": 0.02 * jax.random.normal(k_tok, (self.n_tokens, self.rep_dim), jnp.float32)}
        for tower, width, k_base, k_blocks in (("text", cfg.text_width, keys[0], keys[2:2 + self.blocks]),
                                               ("vision", cfg.vision_width, keys[1], keys[2 + self.blocks:])):
            base = torch_linear_init(k_base, self.rep_dim, width)
            tree[tower] = {"srra": {"kernel": base["kernel"]}}
            for k, key in enumerate(k_blocks):
                tree[tower][f"srra_{k}"] = {"a": _kaiming_uniform(key, (width, mc.res_rank)),
                                            "b": jnp.zeros((mc.res_rank, self.rep_dim), jnp.float32),
                                            "bias": jnp.copy(base["bias"])}
        tree["vision"]["proj_rep_a"] = _kaiming_uniform(k_proj, (cfg.vision_width, mc.proj_rank))
        tree["vision"]["proj_rep_b"] = jnp.zeros((mc.proj_rank, cfg.embed_dim), jnp.float32)
        return tree

    def mods(self, prompts: P.Tree, clip_params: Any, tower: str, present: tuple[str, ...]) -> TowerMods | None:
        """The tower's representation tokens per block (and, for the image tower, their pooling projection)."""
        if tower not in present or "rep_tokens" not in prompts:
            return None
        tokens, layers = prompts["rep_tokens"], prompts[tower]
        if self.plus:   # F.linear(x, W + A_k B_k, bias_k), with our kernel = W^T
            shared = layers["srra"]["kernel"]
            inserted = [tokens @ (shared + (layers[f"srra_{k}"]["a"] @ layers[f"srra_{k}"]["b"]).T)
                        + layers[f"srra_{k}"]["bias"] for k in range(self.blocks)]
            proj = (clip_params["visual"]["proj"]["kernel"] + layers["proj_rep_a"] @ layers["proj_rep_b"]
                    if tower == "vision" else None)
        else:
            name = "r2tproj" if tower == "text" else "r2vproj"
            inserted = [linear(layers[f"{name}_{k}"], tokens) for k in range(self.blocks)]
            proj = layers["proj_rep"] if tower == "vision" else None
        return TowerMods(inserted=inserted, inserted_from=self.first, inserted_proj=proj, inserted_beta=self.beta)

    # ---------------------------------------------------------------------------------------------- features
    def text_features(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts,
                      present: tuple[str, ...] = MODALITIES) -> Array:
        mods = self.mods(prompts, clip_params, "text", present)
        return self.backbone.text(clip_params, texts.embeds, texts.eot_idx, mods=mods)

    def image_outputs(self, prompts: P.Tree, clip_params: Any, images: Array,
                      present: tuple[str, ...] = MODALITIES) -> tuple[Array, Array | None]:
        """(class image features (B, P), representation features (B, P) or None without the tokens)."""
        mods = self.mods(prompts, clip_params, "vision", present)
        if mods is None:
            return self.backbone.image(clip_params, images), None
        return self.backbone.image(clip_params, images, mods=mods)

    def image_features(self, prompts: P.Tree, clip_params: Any, images: Array,
                       present: tuple[str, ...] = MODALITIES) -> Array:
        return self.image_outputs(prompts, clip_params, images, present)[0]

    def uses_vision_prompts(self, prompts: P.Tree, present: tuple[str, ...]) -> bool:
        return "vision" in present and "rep_tokens" in prompts

    def train_outputs(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts, images: Array,
                      present: tuple[str, ...] = MODALITIES, text_cache: Array | None = None,
                      rng: Array | None = None) -> dict[str, Array]:
        img, rep = self.image_outputs(prompts, clip_params, images, present)
        txt = text_cache if text_cache is not None else self.text_features(prompts, clip_params, texts, present)
        scale = self.backbone.logit_scale(clip_params)
        return {"image": img, "text": txt, "rep_logits": L.cosine_logits(scale, img if rep is None else rep, txt)}

    def own_loss_terms(self, outputs: dict[str, Array], logits: Array, batch: Mapping[str, Array],
                       teacher: Mapping[str, Array], weights: Mapping[str, float]) -> dict[str, Array]:
        terms = {}
        if "ce_rep" in weights:
            terms["ce_rep"] = L.cross_entropy(outputs["rep_logits"], batch["label"])
        if "reg_image" in weights:
            terms["reg_image"] = L.text_cosine(outputs["image"], teacher["image"])
        if "reg_text" in weights:
            terms["reg_text"] = L.text_cosine(outputs["text"], teacher["text"])
        return terms

    def eval_logits(self, prompts: P.Tree, clip_params: Any, class_side: Any, images: Array, split: str) -> Array:
        """`alpha class + (1 - alpha) rep` logits on the classes it trained on, class logits on any other split."""
        img, rep = self.image_outputs(prompts, clip_params, images)
        scale = self.backbone.logit_scale(clip_params)
        logits = L.cosine_logits(scale, img, class_side)
        if rep is None or split not in self.fused_splits:
            return logits
        return self.alpha * logits + (1.0 - self.alpha) * L.cosine_logits(scale, rep, class_side)

    # ------------------------------------------------------------------------------------------------ phases
    def phases(self) -> list[Phase]:
        c, a, r = self.config, self.alpha, self.reg_weight
        terms = loss_weights({"ce": a, "ce_rep": 1.0 - a, "reg_image": r, "reg_text": r})
        return [Phase("train", (".*",), c.optim.epochs, c.optim.lr, MODALITIES, terms)]
