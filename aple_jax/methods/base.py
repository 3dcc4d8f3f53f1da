"""What every method shares: phases as data, and deep V-L prompts (IVLP) from which most methods are built.

A method knows how to initialise its prompt tree, how to turn it into the towers' prompt arguments, and its phase
schedule. It holds no training loop. With text depth 1 and no vision prompts the deep-prompt method is CoOp; with both
modalities it is IVLP; APLe and PromptSRC add phases, loss weights and the image adapter on top.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from aple_jax import prompts as P
from aple_jax.adapter import AdapterConfig, apply_adapter
from aple_jax.clip.backbone import Backbone
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax import losses as L
from aple_jax.losses import KLOptions

Array = jax.Array
MODALITIES = ("text", "vision")
# What the zero-shot teacher's image features are computed from: each step's augmented batch (one more image
# forward per step), or each training image once, test-transformed, cached for every epoch.
TEACHER_IMAGES = ("augmented", "cached")
# What the teacher sees with the adapter on: the fused image the student sees, or the original image.
TEACHER_INPUTS = ("fused", "original")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One sequential training phase: what trains, which prompts enter the towers, how long, which losses."""
    name: str
    train: tuple[str, ...]                      # selectors over prompt paths (see prompts.select)
    epochs: int
    lr: float
    present: tuple[str, ...] = MODALITIES       # modalities whose prompts enter the towers
    losses: tuple[tuple[str, float], ...] = (("ce", 1.0),)
    gpa: tuple[float, float] | None = None      # PromptSRC's Gaussian prompt aggregation (mean, std) over epochs
    optimizer: str = ""                         # "sgd", "adam" or "adamw"; "" for the config's optim.name
    iterations: int = 0                         # a budget in steps instead of epochs (resolved per dataset)
    lr_scales: tuple[tuple[str, float], ...] = ()   # (path regex, factor): leaves with a learning rate x factor

    def __post_init__(self) -> None:
        if self.epochs < 1 and not self.iterations:
            raise ValueError(f"phase {self.name!r}: epochs must be >= 1, got {self.epochs}")
        if not self.train:
            raise ValueError(f"phase {self.name!r} trains nothing: its selector list is empty")

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.losses)


@functools.partial(jax.jit, static_argnums=(0, 1))
def frozen_image_features(backbone: Backbone, adapter: AdapterConfig | None, params: Any, images: Array) -> Array:
    """Frozen-CLIP image features, through the image adapter when one is given (compiled once per shape)."""
    return backbone.image(params, images if adapter is None else apply_adapter(images, adapter))


def adapter_from_config(cfg: ml_collections.ConfigDict | None) -> AdapterConfig | None:
    if cfg is None or not cfg.get("enabled", False):
        return None
    return AdapterConfig(sigma=cfg.sigma, alpha=cfg.alpha, freq_units=cfg.freq_units, kernel_norm=cfg.kernel_norm)


class Method:
    """Deep, independent vision and language prompts (IVLP); depth 0 for a modality means no prompts there."""
    name = "ivlp"
    per_image_text = False   # True when text features depend on the image (CoCoOp): never cached
    needs_rng = False        # True when training draws random numbers (LoRA dropout): `features` gets an `rng`
    text_side = ("text/", "meta_net/")   # path prefixes of the leaves whose values change class text features
    # Loss terms the method computes itself (`own_loss_terms`), beside the shared ones of `losses.TERMS`, each with
    # what of the frozen zero-shot teacher it needs: "" nothing, "text", "image" or "both".
    own_terms: dict[str, str] = {}
    # True when a phase's constants (`phase_constants`) need the training images, test-transformed, on device.
    needs_train_images = False
    # True when the method trains on the unlabeled training images of every class, base and new (PromptKD): its
    # base-to-novel runs are transductive.
    trains_on_all_classes = False
    select_by = ""           # an evaluation set whose accuracy after each epoch picks the final prompts; "": the last

    def __init__(self, config: ml_collections.ConfigDict, backbone: Backbone, tokenizer: Tokenizer):
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        pc = config.prompts
        self.text_n_ctx, self.text_depth = pc.text.n_ctx, pc.text.depth
        self.vision_n_ctx, self.vision_depth = pc.vision.n_ctx, pc.vision.depth
        self.prefix, self.init_from_words = P.context_prefix(tokenizer, pc.text.init, self.text_n_ctx)
        self.adapter = adapter_from_config(config.get("adapter"))
        adapter_cfg = config.get("adapter") or {}
        self.adapter_train = self.adapter is not None and adapter_cfg.get("apply_train", True)
        self.adapter_test = self.adapter is not None and adapter_cfg.get("apply_test", True)
        self.teacher_sees_adapter = self.adapter_train and adapter_cfg.get("teacher_input", "fused") == "fused"
        self.teacher_images = (config.get("teacher") or {}).get("images", "augmented")
        if self.teacher_images not in TEACHER_IMAGES:
            raise ValueError(f"teacher.images={self.teacher_images!r}; expected one of {TEACHER_IMAGES}")
        kl = config.get("kl") or {}
        # One compiled text tower per method and class-set shape, for evaluation and the phases' text caches.
        self.text_features_jit = jax.jit(self.text_features, static_argnums=(3,))
        self.kl = KLOptions(kl.get("temperature", 1.0), kl.get("direction", "zs_p"), kl.get("reduction",
                                                                                           "sum_over_bc"))

    # ------------------------------------------------------------------------------------------------ prompts
    def init(self, rng: Array, clip_params: Any, classnames: Sequence[str] = ()) -> P.Tree:
        """The trainable tree at its start (`classnames`: the training classes, for trees with a row per class)."""
        k_ctx, k_txt, k_vis, k_deep = jax.random.split(rng, 4)
        tree: P.Tree = {}
        cfg = self.backbone.cfg
        if self.text_depth:
            ctx, _ = P.init_text_context(self.backbone, clip_params, self.tokenizer, self.config.prompts.text.init,
                                         self.text_n_ctx, k_ctx)
            tree["text"] = {"ctx": ctx}
            for i, p in enumerate(P.normal_prompts(k_txt, self.text_depth - 1, self.text_n_ctx, cfg.text_width), 1):
                tree["text"][f"deep_{i}"] = p
        if self.vision_depth:
            std = self.config.prompts.vision.get("init_std", 0.02)
            shallow = P.normal_prompts(k_vis, 1, self.vision_n_ctx, cfg.vision_width, std)[0]
            tree["vision"] = {"shallow": shallow}
            deep = P.normal_prompts(k_deep, self.vision_depth - 1, self.vision_n_ctx, cfg.vision_width, std)
            for i, p in enumerate(deep, 1):
                tree["vision"][f"deep_{i}"] = p
        return tree

    # ---------------------------------------------------------------------------------------------- class texts
    def class_texts(self, clip_params: Any, classnames: list[str], template: str = "") -> P.ClassTexts:
        """Tokenized `"{prefix} {class}."` embeddings, built once per class set on the host (a method without
        prompt tokens uses the dataset's `template` instead)."""
        return P.build_class_texts(self.backbone, clip_params, self.tokenizer, classnames, self.prefix)

    def eval_texts(self, classnames: list[str], dataset_template: str) -> list[str]:
        """The strings evaluation tokenizes for a class set (checked against the text context before training)."""
        return P.class_prompt_strings(classnames, self.prefix)

    def eval_text_features(self, prompts: P.Tree, clip_params: Any, classnames: list[str],
                           dataset_template: str) -> Array:
        """(C, P) class text features for evaluation, computed once per class set."""
        return self.text_features_jit(prompts, clip_params, self.class_texts(clip_params, classnames))

    # ------------------------------------------------------------------------------------------------ features
    def text_features(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts,
                      present: tuple[str, ...] = MODALITIES) -> Array:
        if "text" not in present or "text" not in prompts:
            return self.backbone.text(clip_params, texts.embeds, texts.eot_idx)
        tp = prompts["text"]
        embeds = P.with_context(texts.embeds, tp["ctx"])
        return self.backbone.text(clip_params, embeds, texts.eot_idx, P.deep_leaves(tp, self.text_depth))

    def image_features(self, prompts: P.Tree, clip_params: Any, images: Array,
                       present: tuple[str, ...] = MODALITIES) -> Array:
        if not self.uses_vision_prompts(prompts, present):
            return self.backbone.image(clip_params, images)
        vp = prompts["vision"]
        return self.backbone.image(clip_params, images, vp["shallow"], P.deep_leaves(vp, self.vision_depth))

    def uses_vision_prompts(self, prompts: P.Tree, present: tuple[str, ...]) -> bool:
        return "vision" in present and "vision" in prompts

    def features(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts, images: Array,
                 present: tuple[str, ...] = MODALITIES, text_cache: Array | None = None,
                 rng: Array | None = None) -> tuple[Array, Array]:
        """(image features (B, P), text features (C, P) or (B, C, P)) for training; `text_cache` skips the text
        tower; `rng` (methods with `needs_rng`) draws the step's random numbers."""
        img = self.image_features(prompts, clip_params, images, present)
        txt = text_cache if text_cache is not None else self.text_features(prompts, clip_params, texts, present)
        return img, txt

    def train_outputs(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts, images: Array,
                      present: tuple[str, ...] = MODALITIES, text_cache: Array | None = None,
                      rng: Array | None = None) -> dict[str, Array]:
        """What a training step computes from its batch: "image" (B, P) and "text" (C, P) or (B, C, P) features, the
        training logits' two sides, and whatever else the method's own loss terms use (one forward for both)."""
        img, txt = self.features(prompts, clip_params, texts, images, present, text_cache, rng=rng)
        return {"image": img, "text": txt}

    def phase_constants(self, phase: Phase, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts,
                        train_images: Mapping[str, Array] | None = None) -> dict[str, Any]:
        """Constants of the method's own for `phase`, computed once as it starts (or resumes); when there are any,
        every step of the phase passes them to `train_outputs` as `own=`, with the batch's labels as `labels=`.
        `train_images`: the training images (`needs_train_images`), "images" (N, H, W, 3) by example index."""
        return {}

    def own_loss_terms(self, outputs: dict[str, Array], logits: Array, batch: Mapping[str, Array],
                       teacher: Mapping[str, Array], weights: Mapping[str, float]) -> dict[str, Array]:
        """The method's own terms named in `own_terms` (those with a weight in `weights`), from the step's
        `outputs`, its (B, C) `logits` and the frozen teacher's "text" (C, P) and "image" (B, P) features."""
        return {}

    def teacher_image_features(self, clip_params: Any, images: Array, adapter: bool) -> Array:
        """(B, P) features the cached teacher keeps of test-transformed training images (`teacher.images =
        "cached"`): frozen CLIP's here, through the image adapter when `adapter`."""
        return frozen_image_features(self.backbone, self.adapter if adapter else None, clip_params, images)

    def eval_logits(self, prompts: P.Tree, clip_params: Any, class_side: Any, images: Array, split: str) -> Array:
        """(B, C) test logits on `split` ("base", "new", "all", or a transfer target's name); `class_side` is the
        cached class text features (or the ClassTexts when `per_image_text`). The same for every split here; a
        method may score base classes differently from new ones."""
        if self.per_image_text:
            img, txt = self.features(prompts, clip_params, class_side, images)
        else:
            img, txt = self.image_features(prompts, clip_params, images), class_side
        return L.cosine_logits(self.backbone.logit_scale(clip_params), img, txt)

    # ------------------------------------------------------------------------------------------------- phases
    def phases(self) -> list[Phase]:
        """One phase training every prompt leaf with the configured loss weights."""
        c = self.config
        return [Phase("train", (".*",), c.optim.epochs, c.optim.lr, MODALITIES,
                      tuple(sorted(c.get("loss_weights", {"ce": 1.0}).items())), self.gpa())]

    def begin_phase(self, index: int, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts) -> P.Tree:
        """The tree as phase `index` starts (not when a run resumes inside it); unchanged unless a method sets
        leaves from what earlier phases learned (2SFS's head)."""
        return prompts

    def gpa(self) -> tuple[float, float] | None:
        g = self.config.get("gpa")
        return (g.mean, g.std) if g is not None and g.get("enabled", False) else None


class TemplateTexts:
    """Class texts from the dataset's hand-crafted template ("a photo of a {}." when none is given), for methods
    without prompt tokens (CLIP-LoRA, 2SFS); mixed in before `Method`."""
    DEFAULT_TEMPLATE = "a photo of a {}."

    def class_texts(self, clip_params: Any, classnames: list[str], template: str = "") -> P.ClassTexts:
        return P.template_texts(self.backbone, clip_params, self.tokenizer, classnames,
                                template or self.DEFAULT_TEMPLATE)

    def eval_texts(self, classnames: list[str], dataset_template: str) -> list[str]:
        template = dataset_template or self.DEFAULT_TEMPLATE
        return [template.format(name.replace("_", " ")) for name in classnames]

    def eval_text_features(self, prompts: P.Tree, clip_params: Any, classnames: list[str],
                           dataset_template: str) -> Array:
        return self.text_features_jit(prompts, clip_params, self.class_texts(clip_params, classnames,
                                                                            dataset_template))


def loss_weights(weights: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((k, float(v)) for k, v in weights.items() if v))
