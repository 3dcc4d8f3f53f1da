"""PromptKD (Li et al., CVPR'24): a student CLIP with deep vision prompts and a projector, distilled from a larger
teacher's logits on unlabeled training images of every class (transductive), scored against the teacher's text
features; the student has no text tower at all.

As in zhengli97/PromptKD (`trainers/promptkd.py`, `configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml`):
- student: the IVLP vision prompts (4 tokens, depth 9 on ViT-B/16, std 0.02) and `Feature_Trans_Module_two_layer`,
  1x1 conv (= Linear) from the student's embedding to the teacher's, BatchNorm, ReLU, 1x1 conv; the projected image
  features are L2-normalised and scored as `student logit_scale * img @ teacher_text.T`;
- the teacher's text features: its text tower (with its prompts) run once per class set and kept;
- loss: `KD_WEIGHT * T^2 * sum(KL(softmax(teacher / T) || softmax(student / T))) / (B * C)`, no CE (the labels are
  never read); T 1, KD_WEIGHT 1000 (200 on Aircraft, Flowers, DTD);
- data: the training images of base *and* new classes (`trains_on_all_classes`), so runs are transductive;
- BatchNorm as torch's: batch statistics in training, running statistics (momentum 0.1, unbiased variance) at test.
Ours: the teacher's image features of each training image are computed once, test-transformed, and kept (the
engine's `teacher.images = "cached"`); the official code runs the teacher on every augmented batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aple_jax import losses as L
from aple_jax import prompts as P
from aple_jax.clip.backbone import Backbone
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.methods.base import MODALITIES, Method, Phase

Array = jax.Array
SELECT = ("best_base", "last")   # official `TEST.FINAL_MODEL best_val` (its val split is the base test set), or last
BN_EPS, BN_MOMENTUM = 1e-5, 0.1
STATS = "proj_stats"             # the projector's BatchNorm running statistics: buffers, never trained


def init_projector(rng: Array, d_in: int, d_out: int) -> tuple[P.Tree, P.Tree]:
    """(trainable projector, its BatchNorm statistics), initialised as torch's Conv2d (uniform in +-1/sqrt(fan_in))
    and BatchNorm2d (scale 1, bias 0, mean 0, variance 1)."""
    keys = jax.random.split(rng, 4)

    def uniform(key: Array, shape: tuple[int, ...], fan_in: int) -> Array:
        bound = 1.0 / np.sqrt(fan_in)
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

    proj = {"fc1": {"kernel": uniform(keys[0], (d_in, d_out), d_in), "bias": uniform(keys[1], (d_out,), d_in)},
            "bn": {"scale": jnp.ones((d_out,)), "bias": jnp.zeros((d_out,))},
            "fc2": {"kernel": uniform(keys[2], (d_out, d_out), d_out), "bias": uniform(keys[3], (d_out,), d_out)}}
    return proj, {"mean": jnp.zeros((d_out,)), "var": jnp.ones((d_out,))}


def project(proj: P.Tree, stats: P.Tree, x: Array, train: bool) -> tuple[Array, P.Tree]:
    """(projected features, BatchNorm statistics after this batch): batch statistics in training (and the running
    ones updated with the unbiased variance), running statistics otherwise (returned unchanged)."""
    h = x @ proj["fc1"]["kernel"] + proj["fc1"]["bias"]
    if train:
        mean, var = h.mean(0), h.var(0)
        n = h.shape[0]
        unbiased = var * n / max(n - 1, 1)
        new = {"mean": (1 - BN_MOMENTUM) * stats["mean"] + BN_MOMENTUM * mean,
               "var": (1 - BN_MOMENTUM) * stats["var"] + BN_MOMENTUM * unbiased}
    else:
        mean, var, new = stats["mean"], stats["var"], stats
    h = (h - mean) * jax.lax.rsqrt(var + BN_EPS) * proj["bn"]["scale"] + proj["bn"]["bias"]
    h = jax.nn.relu(h)
    return h @ proj["fc2"]["kernel"] + proj["fc2"]["bias"], jax.tree.map(jax.lax.stop_gradient, new)


@dataclasses.dataclass(frozen=True)
class TeacherWidth:
    """A teacher known by its width alone: enough to build a student's tree (to import its official checkpoint),
    not to score it."""
    embed_dim: int


def kd_loss(student_logits: Array, teacher_logits: Array, temperature: float) -> Array:
    """The official L_ukd: T^2 * sum of KL(teacher || student) over the batch and classes / (B * C)."""
    t = jax.nn.softmax(teacher_logits / temperature, -1)
    log_s = jax.nn.log_softmax(student_logits / temperature, -1)
    kl = jnp.sum(jax.scipy.special.xlogy(t, t) - t * log_s)
    return kl * temperature ** 2 / student_logits.size


class PromptKD(Method):
    name = "promptkd"
    own_terms = {"kd": "image"}      # the teacher's cached image features of each training image
    text_side = ("text/",)           # the student has no text side: class features are the teacher's, cached
    trains_on_all_classes = True     # unlabeled images of base and new classes: transductive

    def __init__(self, config: ml_collections.ConfigDict, backbone: Backbone, tokenizer: Tokenizer,
                 teacher: Any = None):
        super().__init__(config, backbone, tokenizer)
        kd = config.kd
        if kd.select not in SELECT:
            raise ValueError(f"kd.select={kd.select!r}; expected one of {SELECT}")
        if self.text_depth or self.adapter is not None:
            raise ValueError("promptkd's student has no text prompts and no adapter: prompts.text.depth=0, "
                             "adapter.enabled=False")
        if teacher is None:
            from aple_jax import distill   # loads another backbone and method: imported where it is needed
            teacher = distill.load_teacher(config)
        self.teacher = teacher
        self.teacher_images = "cached"
        self.temperature = float(kd.temperature)
        self.select_by = "base" if kd.select == "best_base" else ""
        self._texts: dict[tuple, P.ClassTexts] = {}
        self._teacher_text: dict[int, tuple[P.ClassTexts, Array]] = {}
        self.text_features_jit = self.cached_teacher_text   # phase caches go through the teacher, once per class set

    # ------------------------------------------------------------------------------------------------ the tree
    def init(self, rng: Array, clip_params: Any, classnames: Sequence[str] = ()) -> P.Tree:
        k_vis, k_proj = jax.random.split(rng)
        tree = super().init(k_vis, clip_params, classnames)
        tree["proj"], tree[STATS] = init_projector(k_proj, self.backbone.cfg.embed_dim, self.teacher.embed_dim)
        return tree

    # ---------------------------------------------------------------------------------------- the teacher's side
    def class_texts(self, clip_params: Any, classnames: list[str], template: str = "") -> P.ClassTexts:
        """The teacher's tokenized class texts (its prompts' form), one object per class set."""
        key = (tuple(classnames), template)
        if key not in self._texts:
            self._texts[key] = self.teacher.class_texts(list(classnames), template)
        return self._texts[key]

    def eval_texts(self, classnames: list[str], dataset_template: str) -> list[str]:
        return self.teacher.method.eval_texts(classnames, dataset_template)

    def cached_teacher_text(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts,
                            present: tuple[str, ...] = MODALITIES) -> Array:
        """The teacher's (C, P_teacher) text features of a class set: its text tower runs once per class set."""
        if id(texts) not in self._teacher_text:   # the entry keeps `texts` alive, so its id stays its own
            self._teacher_text[id(texts)] = (texts, self.teacher.text_features(texts))
        return self._teacher_text[id(texts)][1]

    def eval_text_features(self, prompts: P.Tree, clip_params: Any, classnames: list[str],
                           dataset_template: str) -> Array:
        return self.cached_teacher_text(prompts, clip_params, self.class_texts(clip_params, classnames,
                                                                               dataset_template))

    def teacher_image_features(self, clip_params: Any, images: Array, adapter: bool) -> Array:
        """The teacher's image features (with its prompts) of test-transformed training images, for the cache."""
        return self.teacher.image_features(images)

    # -------------------------------------------------------------------------------------------- the student
    def image_features(self, prompts: P.Tree, clip_params: Any, images: Array,
                       present: tuple[str, ...] = MODALITIES) -> Array:
        feats = super().image_features(prompts, clip_params, images, present)
        return project(prompts["proj"], prompts[STATS], feats, train=False)[0]

    def train_outputs(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts, images: Array,
                      present: tuple[str, ...] = MODALITIES, text_cache: Array | None = None,
                      rng: Array | None = None) -> dict[str, Any]:
        if text_cache is None:
            raise ValueError("promptkd scores against the teacher's cached text features; none were given")
        feats = super().image_features(prompts, clip_params, images, present)
        img, stats = project(prompts["proj"], prompts[STATS], feats, train=True)
        return {"image": img, "text": text_cache, "buffers": {f"{STATS}/{k}": v for k, v in stats.items()}}

    def own_loss_terms(self, outputs: dict[str, Array], logits: Array, batch: Mapping[str, Array],
                       teacher: Mapping[str, Array], weights: Mapping[str, float]) -> dict[str, Array]:
        teacher_logits = L.cosine_logits(self.teacher.logit_scale, teacher["image"], outputs["text"])
        return {"kd": kd_loss(logits, teacher_logits, self.temperature)}

    # ------------------------------------------------------------------------------------------------- phases
    def phases(self) -> list[Phase]:
        """One phase: the vision prompts and the projector by the KD term (its weight is `loss_weights.kd`)."""
        c = self.config
        return [Phase("distill", ("vision/.*", "proj/.*"), c.optim.epochs, c.optim.lr, ("vision",),
                      tuple(sorted((k, float(v)) for k, v in c.loss_weights.items() if v)))]


def trainable_count(tree: P.Tree) -> int:
    """Trained parameters of a PromptKD tree (the BatchNorm statistics are buffers)."""
    return P.count_params({k: v for k, v in tree.items() if k != STATS})
