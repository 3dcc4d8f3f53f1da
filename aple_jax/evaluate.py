"""Evaluation over every device: class text features once, image batches sharded on the data axis, the last
batch padded and masked, the (true class, predicted class) confusion counts summed on device and fetched once per
evaluation; top-1 and per-class accuracy come from them."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from aple_jax import prompts as P
from aple_jax import sharding
from aple_jax.adapter import apply_adapter
from aple_jax.methods.base import Method

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EvalResult:
    accuracy: float              # micro top-1, in percent
    per_class_accuracy: list[float]
    num_examples: int
    classnames: list[str]
    per_class_correct: list[int]
    per_class_total: list[int]
    confusion: np.ndarray        # (C, C) int64: row = true class, column = predicted class (not in to_json)

    @classmethod
    def from_confusion(cls, confusion: np.ndarray, classnames: list[str]) -> EvalResult:
        """Accuracy, per-class accuracy and counts of a confusion matrix."""
        confusion = np.asarray(confusion, np.int64)
        correct, total = np.diagonal(confusion), confusion.sum(1)
        per_class = [float(100.0 * c / n) if n else float("nan") for c, n in zip(correct, total)]
        return cls(float(100.0 * correct.sum() / total.sum()), per_class, int(total.sum()), list(classnames),
                   correct.tolist(), total.tolist(), confusion)

    def to_json(self) -> dict[str, Any]:
        """Everything but the confusion matrix (a run keeps it in a side file, aple_jax/report_classes.py)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "confusion"}


@contextlib.contextmanager
def _iterating(batches: Iterable[dict[str, Array]]) -> Iterator[Iterator[dict[str, Array]]]:
    """An iterator over `batches`, closed on the way out (a loader's worker processes stop) even after an error."""
    iterator = iter(batches)
    try:
        yield iterator
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


def test_logits(method: Method, prompts: P.Tree, clip_params: Any, class_side: Any, images: Array,
                split: str = "all") -> Array:
    """(B, C) logits of test-transformed images as the method scores them at test time on `split` ("base", "new",
    "all", a transfer target; the method's `eval_logits` may score base classes differently), adapter included."""
    images = apply_adapter(images, method.adapter) if method.adapter_test else images
    return method.eval_logits(prompts, clip_params, class_side, images, split)


def make_eval_step(method: Method, split: str = "all"):
    """jit `(prompts, clip_params, class_side, batch) -> (C, C) confusion counts` on `split` (row: true class,
    column: top-1 prediction; padding counts nowhere).

    `class_side` is the cached (C, P) text features, or the ClassTexts for methods whose text depends on the image;
    the method's `eval_logits` knows which split it scores ("base", "new", "all", a transfer target).
    """
    def step(prompts, clip_params, class_side, batch):
        logits = test_logits(method, prompts, clip_params, class_side, batch["image"], split)
        num_classes = logits.shape[-1]
        confusion = jnp.zeros((num_classes, num_classes), jnp.int32)
        return confusion.at[batch["label"], jnp.argmax(logits, -1)].add(batch["mask"].astype(jnp.int32))

    return jax.jit(step)


def class_side(method: Method, prompts: P.Tree, clip_params: Any, classnames: list[str], template: str) -> Any:
    """What the evaluation step needs of the classes, computed once per evaluation."""
    if method.per_image_text:
        return method.class_texts(clip_params, classnames)
    return method.eval_text_features(prompts, clip_params, classnames, template)


def evaluate_batches(method: Method, prompts: P.Tree, clip_params: Any, classnames: list[str], template: str,
                     batches: Iterable[dict[str, Array]], step=None, split: str = "all") -> EvalResult:
    """Accuracy, per-class counts and confusion of `prompts` on `split` over padded, masked batches (any number of
    devices)."""
    step = step or make_eval_step(method, split)
    side = class_side(method, prompts, clip_params, classnames, template)
    confusion = None
    with _iterating(batches) as iterator:
        for batch in iterator:
            counts = step(prompts, clip_params, side, batch)
            confusion = counts if confusion is None else confusion + counts
    if confusion is None:
        raise ValueError("the evaluation split is empty")
    return EvalResult.from_confusion(np.asarray(jax.device_get(confusion)), classnames)


def dataset_image_features(method: Method, clip_params: Any, batches: Iterable[dict[str, Array]], num_examples: int,
                           mesh: Any, adapter: bool) -> Array:
    """(N, P) teacher image features (`Method.teacher_image_features`: frozen CLIP's, or a distilled run's
    teacher's) of the first `num_examples` examples of sequential padded batches, in order, kept on device and
    replicated over `mesh` (the teacher's per-example cache)."""
    with _iterating(batches) as iterator:
        chunks = [method.teacher_image_features(clip_params, batch["image"], adapter) for batch in iterator]
    if not chunks:
        raise ValueError("no batches to compute image features from")
    gather = jax.jit(lambda xs: jnp.concatenate(xs)[:num_examples], out_shardings=sharding.replicated(mesh))
    return gather(chunks)
