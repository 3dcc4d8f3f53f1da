"""Run in a subprocess with several (simulated) devices: evaluation counts, predictions and training results as JSON.

`python tests/multidevice_worker.py eval|predict|train|train_cached|numpy [--devices N] [--distributed COORD NPROC PID]`
"""
from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")

from aple_jax import sharding, train  # noqa: E402
from aple_jax import prompts as P  # noqa: E402
from aple_jax.clip.backbone import load_backbone  # noqa: E402
from aple_jax.data import build_dataset  # noqa: E402
from aple_jax.data.pipeline import eval_loader, train_loader  # noqa: E402
from aple_jax.evaluate import dataset_image_features, evaluate_batches  # noqa: E402
from aple_jax.methods import build_method  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402


def _setup(name: str = "ivlp", **overrides):
    backbone, params, tokenizer = load_backbone("tiny", "")
    method = build_method(tiny_config(name, **overrides), backbone, tokenizer)
    prompts = method.init(jax.random.key(3), params)
    data = build_dataset("synthetic", None, shots=4, seed=1, subsample="base", num_classes=10,
                         test_per_class=7)   # 35 test images: not a multiple of the batch
    return method, params, prompts, data


def run_eval(mesh) -> dict:
    method, params, prompts, data = _setup()
    params = sharding.replicate(params, mesh)
    batches = eval_loader(data.test, global_batch_size=16, image_size=32, mesh=mesh)
    result = evaluate_batches(method, prompts, params, list(data.classnames), data.template, batches)
    return {"accuracy": result.accuracy, "num_examples": result.num_examples,
            "per_class": result.per_class_accuracy, "correct": round(result.accuracy * result.num_examples / 100)}


def run_predict(mesh) -> dict:
    """The Classifier's probabilities of the 35 test images (arrays, batches of 16 over `mesh`), its correct count."""
    from aple_jax.predict import Classifier
    method, params, prompts, data = _setup()
    classifier = Classifier(method, sharding.replicate(prompts, mesh), sharding.replicate(params, mesh), mesh,
                            data.template, batch_size=16).with_classes(list(data.classnames))
    probs = classifier.predict([data.test[i]["image"] for i in range(len(data.test))])
    return {"probs": probs.tolist(), "correct": int((probs.argmax(1) == data.test.labels).sum())}


def numpy_eval() -> dict:
    """The same evaluation as a plain loop: features per image, numpy cosine logits and argmax."""
    method, params, prompts, data = _setup()
    txt = np.array(method.eval_text_features(prompts, params, list(data.classnames), data.template))
    txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    from aple_jax.data.transforms import test_transform
    image_fn = jax.jit(lambda im: method.image_features(prompts, params, im))
    correct = 0
    for i in range(len(data.test)):
        item = data.test[i]
        img = np.asarray(image_fn(jnp.asarray(test_transform(item["image"], 32))[None]))[0]
        correct += int(np.argmax(txt @ (img / np.linalg.norm(img))) == item["label"])
    return {"correct": correct, "num_examples": len(data.test)}


def run_train(mesh, steps: int = 4, cached_teacher: bool = False) -> dict:
    """IVLP's step; or APLe's phase V with `teacher.images=cached`, its teacher cache computed on `mesh`."""
    if cached_teacher:
        method, params, prompts, data = _setup("aple", teacher__images="cached")
    else:
        method, params, prompts, data = _setup()
    params = sharding.replicate(params, mesh)
    phase = method.phases()[1 if cached_teacher else 0]
    plan = train.plan_phase(method, phase, prompts)
    tx = train.make_optimizer(phase, plan.selection.labels(prompts), 1000, method.config.optim)
    state = sharding.replicate(train.init_state(prompts, tx, False), mesh)
    texts = method.class_texts(params, list(data.classnames))
    teacher_text = teacher_image = None
    if cached_teacher:
        teacher_text = method.text_features({}, params, texts, ())
        batches = eval_loader(data.train, global_batch_size=8, image_size=32, mesh=mesh)
        teacher_image = dataset_image_features(method, params, batches, len(data.train), mesh,
                                               adapter=method.teacher_sees_adapter)
    consts = sharding.replicate(train.phase_constants(method, plan, prompts, params, texts, teacher_text,
                                                      teacher_image), mesh)
    step = train.make_train_step(method, plan, tx)
    loader = train_loader(data.train, global_batch_size=8, image_size=32, seed=0, mesh=mesh)
    for _ in range(steps):
        state, _ = step(state, params, consts, next(loader))
    flat = P.flatten(jax.device_get(state.prompts))
    return {k: np.asarray(v).tolist() for k, v in flat.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["eval", "predict", "train", "train_cached", "numpy"])
    ap.add_argument("--devices", type=int, default=0, help="use only the first N devices (0: all)")
    ap.add_argument("--distributed", nargs=3, metavar=("COORD", "NPROC", "PID"))
    args = ap.parse_args()
    if args.distributed:
        coord, nproc, pid = args.distributed
        sharding.maybe_initialize_distributed(coord, int(nproc), int(pid))
    if args.mode == "numpy":
        out = numpy_eval()
    else:
        devices = jax.devices()[: args.devices] if args.devices else jax.devices()
        mesh = sharding.make_mesh(devices)
        if args.mode in ("eval", "predict"):
            out = run_eval(mesh) if args.mode == "eval" else run_predict(mesh)
        else:
            out = run_train(mesh, cached_teacher=args.mode == "train_cached")
    out["device_count"] = len(jax.devices())
    if jax.process_index() == 0:
        print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
