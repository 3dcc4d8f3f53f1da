"""Evaluation over every device: class text features once, image batches sharded on the data axis, the last
batch padded and masked, top-1 and per-class accuracy summed on device and fetched once per evaluation."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from aple_jax import losses as L
from aple_jax import prompts as P
from aple_jax import sharding
from aple_jax.adapter import AdapterConfig, apply_adapter
from aple_jax.clip.backbone import Backbone
from aple_jax.methods.base import Method

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EvalResult:
    accuracy: float              # micro top-1, in percent
    per_class_accuracy: list[float]
    num_examples: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def _iterating(batches: Iterable[dict[str, Array]]) -> Iterator[Iterator[dict[str, Array]]]:
    """An iterator over `batches`, closed on the way out (a loader's worker processes stop) even after an error."""
    iterator = iter(batches)
    try:
        yield iterator
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


def make_eval_step(method: Method):
    """jit `(prompts, clip_params, class_side, batch) -> (correct per class, examples per class)`.

    `class_side` is the cached (C, P) text features, or the ClassTexts for methods whose text depends on the image.
    """
    def step(prompts, clip_params, class_side, batch):
        images = apply_adapter(batch["image"], method.adapter) if method.adapter_test else batch["image"]
        if method.per_image_text:
            img, txt = method.features(prompts, clip_params, class_side, images)
        else:
            img, txt = method.image_features(prompts, clip_params, images), class_side
        logits = L.cosine_logits(method.backbone.logit_scale(clip_params), img, txt)
        num_classes = logits.shape[-1]
        onehot = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.int32) * batch["mask"][:, None]
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.int32)
        return (onehot * correct[:, None]).sum(0), onehot.sum(0)

    return jax.jit(step)


def class_side(method: Method, prompts: P.Tree, clip_params: Any, classnames: list[str], template: str) -> Any:
    """What the evaluation step needs of the classes, computed once per evaluation."""
    if method.per_image_text:
        return method.class_texts(clip_params, classnames)
    return method.eval_text_features(prompts, clip_params, classnames, template)


def evaluate_batches(method: Method, prompts: P.Tree, clip_params: Any, classnames: list[str], template: str,
                     batches: Iterable[dict[str, Array]], step=None) -> EvalResult:
    """Accuracy of `prompts` over padded, masked batches (any number of devices)."""
    step = step or make_eval_step(method)
    side = class_side(method, prompts, clip_params, classnames, template)
    correct = count = None
    with _iterating(batches) as iterator:
        for batch in iterator:
            c, n = step(prompts, clip_params, side, batch)
            correct, count = (c, n) if correct is None else (correct + c, count + n)
    if correct is None:
        raise ValueError("the evaluation split is empty")
    correct, count = (np.asarray(x) for x in jax.device_get((correct, count)))
    total = int(count.sum())
    per_class = [float(100.0 * c / n) if n else float("nan") for c, n in zip(correct, count)]
    return EvalResult(float(100.0 * correct.sum() / total), per_class, total)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _frozen_image_features(backbone: Backbone, adapter: AdapterConfig | None, params: Any, images: Array) -> Array:
    """Frozen-CLIP image features, through the image adapter when one is given (compiled once per shape)."""
    return backbone.image(params, images if adapter is None else apply_adapter(images, adapter))


def dataset_image_features(method: Method, clip_params: Any, batches: Iterable[dict[str, Array]], num_examples: int,
                           mesh: Any, adapter: bool) -> Array:
    """(N, P) frozen-CLIP image features of the first `num_examples` examples of sequential padded batches, in
    order, kept on device and replicated over `mesh` (the zero-shot teacher's per-example cache)."""
    adapter_config = method.adapter if adapter else None
    with _iterating(batches) as iterator:
        chunks = [_frozen_image_features(method.backbone, adapter_config, clip_params, batch["image"])
                  for batch in iterator]
    if not chunks:
        raise ValueError("no batches to compute image features from")
    gather = jax.jit(lambda xs: jnp.concatenate(xs)[:num_examples], out_shardings=sharding.replicated(mesh))
    return gather(chunks)
