"""PromptKD: the student's count at ViT-B/16, its KD term against the teacher's cached text features (the teacher's
text tower runs once per class set), learning with every frozen leaf bit-identical, the BatchNorm buffers, model
selection, the transductive label in results.json and the report, and the function-preserving growth (deeper,
wider) of the larger world CLIPs."""
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aple_jax import compare, distill, selection, train
from aple_jax import losses as L
from aple_jax import prompts as P
from aple_jax import report as R
from aple_jax.clip import model as clip_model
from aple_jax.clip.backbone import Backbone, load_backbone
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.methods import build_method
from aple_jax.methods.promptkd import STATS, PromptKD, kd_loss, trainable_count
from aple_jax.reporting.groups import group_runs
from aple_jax.reporting.runs import load_runs
from aple_jax.reporting.tables import TRANSDUCTIVE_NOTE, format_run
from aple_jax.world.grow import deepen, widen
from tests.helpers import random_batch, tiny_config
from tests.test_report import write_run

CLASSES = [f"class {i}" for i in range(6)]
BASE, NEW = CLASSES[:3], CLASSES[3:]


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny", "")


@pytest.fixture(scope="module")
def teacher(tiny):
    """An IVLP teacher on the tiny CLIP (seed 1's weights: another CLIP than the student's) with random prompts."""
    backbone, _, tokenizer = tiny
    params = clip_model.init_params(backbone.cfg, 1)
    method = build_method(tiny_config("ivlp"), backbone, tokenizer)
    return distill.Teacher(method, method.init(jax.random.key(3), params), params, "test")


def student(tiny, teacher, **overrides) -> PromptKD:
    backbone, _, tokenizer = tiny
    return PromptKD(tiny_config("promptkd", **overrides), backbone, tokenizer, teacher=teacher)


def test_trainable_parameter_count_at_vit_b16():
    """docs/methods.md: 9 x 4 x 768 vision prompts + the projector 512 -> 768 -> 768 with BatchNorm (its running
    statistics are buffers), from the built tree with a ViT-L/14-wide teacher."""
    from configs import promptkd
    backbone = Backbone(clip_model.CLIP(clip_model.get_config("ViT-B/16")))
    abstract = jax.eval_shape(lambda: clip_model.init_params(backbone.cfg))
    method = PromptKD(promptkd.get_config(""), backbone, Tokenizer.builtin_tiny(),
                      teacher=types.SimpleNamespace(embed_dim=768))
    shapes = jax.eval_shape(lambda p: method.init(jax.random.key(0), p), abstract)
    projector = (512 * 768 + 768) + 2 * 768 + (768 * 768 + 768)
    assert trainable_count(shapes) == 9 * 4 * 768 + projector == 1_013_760
    trained = P.select(shapes, method.phases()[0].train).leaves
    assert sum(int(np.prod(P.flatten(shapes)[p].shape)) for p in trained) == 1_013_760
    assert not any(p.startswith(STATS) for p in trained) and not any(p.startswith("text") for p in P.flatten(shapes))


def _step_setup(tiny, teacher, method):
    backbone, params, _ = tiny
    prompts = method.init(jax.random.key(0), params, CLASSES)
    phase = method.phases()[0]
    plan = train.plan_phase(method, phase, prompts)
    assert plan.cache_text and plan.teacher_image_cached and not plan.needs_teacher_text
    texts = method.class_texts(params, CLASSES, "a photo of a {}.")
    batch = {**random_batch(8, 32, len(CLASSES)), "index": jnp.arange(8)}
    cache = method.teacher_image_features(params, random_batch(8, 32, 1, seed=5)["image"], False)
    consts = train.phase_constants(method, plan, prompts, params, texts, None, cache)
    tx = train.make_optimizer(phase, plan.selection.labels(prompts), 1000, method.config.optim)
    return prompts, plan, tx, texts, consts, batch, cache


def test_kd_scores_against_the_teachers_cached_text_features_computed_once_per_class_set(tiny, teacher,
                                                                                          monkeypatch):
    backbone, params, _ = tiny
    calls = []
    real = distill.Teacher.text_features
    monkeypatch.setattr(distill.Teacher, "text_features", lambda self, texts: calls.append(texts) or real(self, texts))
    method = student(tiny, teacher)
    prompts, plan, tx, texts, consts, batch, cache = _step_setup(tiny, teacher, method)
    teacher_text = teacher.method.text_features(teacher.prompts, teacher.params,
                                                teacher.method.class_texts(teacher.params, CLASSES))
    np.testing.assert_allclose(consts["text_cache"], teacher_text, rtol=1e-5, atol=1e-6)
    total, metrics = train.make_loss_fn(method, plan)(*P.split(prompts, plan.selection.leaves), params, consts, batch)
    # by hand: the student's projected features (batch statistics) against the teacher's text features, the
    # teacher's logits from its cached image features of the batch's examples
    feats = backbone.image(params, batch["image"], prompts["vision"]["shallow"],
                           P.deep_leaves(prompts["vision"], method.vision_depth))
    h = feats @ prompts["proj"]["fc1"]["kernel"] + prompts["proj"]["fc1"]["bias"]
    h = jax.nn.relu((h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5))
    img = h @ prompts["proj"]["fc2"]["kernel"] + prompts["proj"]["fc2"]["bias"]
    s = L.cosine_logits(backbone.logit_scale(params), img, teacher_text)
    t = L.cosine_logits(teacher.logit_scale, cache, teacher_text)
    kl = jnp.sum(jax.nn.softmax(t) * (jax.nn.log_softmax(t) - jax.nn.log_softmax(s))) / s.size
    np.testing.assert_allclose(metrics["kd"], kl, rtol=1e-4)
    np.testing.assert_allclose(total, 1.0 * metrics["kd"], rtol=1e-6)   # :tiny's KD weight; no CE in the loss
    # the labels are never read: other labels, the same gradient
    loss_fn = train.make_loss_fn(method, plan)
    grads = [jax.grad(lambda tr: loss_fn(tr, P.split(prompts, plan.selection.leaves)[1], params, consts,
                                         {**batch, "label": labels})[0])(P.split(prompts, plan.selection.leaves)[0])
             for labels in (batch["label"], (batch["label"] + 1) % len(CLASSES))]
    jax.tree.map(np.testing.assert_array_equal, *grads)
    # evaluation of base and new (twice each): one more teacher text pass per new class set, none for repeats
    for _ in range(2):
        for names in (BASE, NEW, CLASSES):
            method.eval_text_features(prompts, params, names, "a photo of a {}.")
    assert len(calls) == 3, [t.embeds.shape for t in calls]


def test_kd_loss_is_the_official_batchmean_over_classes_times_t_squared():
    s, t = jax.random.normal(jax.random.key(0), (2, 2, 5))
    for temp in (1.0, 4.0):
        p = jax.nn.softmax(t / temp)
        expected = np.sum(p * (np.log(p) - jax.nn.log_softmax(s / temp))) * temp ** 2 / 10
        np.testing.assert_allclose(kd_loss(s, t, temp), expected, rtol=1e-5)
    assert float(kd_loss(t, t, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_student_learns_with_clip_and_teacher_bit_identical(tiny, teacher):
    backbone, params, _ = tiny
    method = student(tiny, teacher, loss_weights__kd=100.0)
    prompts, plan, tx, texts, consts, batch, cache = _step_setup(tiny, teacher, method)
    before = {"student": jax.tree.map(np.array, params), "teacher": jax.tree.map(np.array, teacher.params),
              "teacher prompts": jax.tree.map(np.array, teacher.prompts)}
    fresh = lambda: train.init_state(jax.tree.map(jnp.copy, prompts), tx, False)   # noqa: E731 (the step donates)
    state = fresh()
    step = train.make_train_step(method, plan, tx)
    kds = []
    for _ in range(15):
        state, metrics = step(state, params, consts, batch)
        kds.append(float(metrics["kd"]))
    assert step._cache_size() == 1
    assert kds[-1] < 0.5 * kds[0], kds
    for name, tree in (("student", params), ("teacher", teacher.params), ("teacher prompts", teacher.prompts)):
        jax.tree.map(np.testing.assert_array_equal, tree, before[name])
    flat_before, flat_after = P.flatten(prompts), P.flatten(state.prompts)
    assert all(not np.array_equal(flat_before[p], flat_after[p]) for p in flat_before), "every leaf moves"
    # the BatchNorm statistics follow torch's running update; evaluation uses them
    feats = backbone.image(params, batch["image"], prompts["vision"]["shallow"],
                           P.deep_leaves(prompts["vision"], method.vision_depth))
    h = feats @ prompts["proj"]["fc1"]["kernel"] + prompts["proj"]["fc1"]["bias"]
    state1, _ = step(fresh(), params, consts, batch)
    np.testing.assert_allclose(state1.prompts[STATS]["mean"], 0.1 * h.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state1.prompts[STATS]["var"], 0.9 + 0.1 * h.var(0, ddof=1), rtol=1e-4)


def test_selection_keeps_the_best_epoch_strictly(tmp_path):
    trees = [{"a": np.full(2, float(i), np.float32)} for i in range(4)]
    assert [selection.update(tmp_path, "base", "p", e, e, acc, t)
            for e, (acc, t) in enumerate(zip((50.0, 60.0, 60.0, 55.0), trees), 1)] == [True, True, False, False]
    np.testing.assert_array_equal(selection.chosen(tmp_path, trees[0])["a"], trees[1]["a"])
    assert selection.record(tmp_path, "base")["epoch"] == 2


def test_the_report_marks_transductive_rows_in_tables_and_compare(tmp_path):
    for seed in (1, 2):
        write_run(tmp_path, "promptkd", "OxfordPets", seed, {"base": 90.0 + seed, "new": 80.0})
        write_run(tmp_path, "promptsrc", "OxfordPets", seed, {"base": 85.0 + seed, "new": 75.0})
    for path in (tmp_path / "promptkd").rglob("results.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "transductive": True}))
    summary = R.report(str(tmp_path), str(tmp_path / "out"), plots=False)
    md = (tmp_path / "out" / "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "promptkd" in line]
    assert rows and all("promptkd (transductive)" in line for line in rows)
    assert TRANSDUCTIVE_NOTE in md
    assert all("(transductive)" not in line for line in md.splitlines() if "promptsrc" in line)
    assert {g["method"]: g["transductive"] for g in summary["groups"]} == {"promptkd": True, "promptsrc": False}
    result = compare.compare(group_runs(load_runs(str(tmp_path))), "promptkd", "promptsrc")
    assert result["a"] == "promptkd (transductive)" and "promptkd (transductive)" in compare.markdown(result)
    run = json.loads(next((tmp_path / "promptkd").rglob("results.json")).read_text())
    assert format_run(run).splitlines()[2].startswith("| promptkd (transductive) |")


def _assert_same_function(old: tuple, new: tuple, check) -> None:
    """`check` on the image features and the logits of two (config, params) CLIPs."""
    images = random_batch(2, 32, 1)["image"]
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 999, (2, old[0].context_length)), jnp.int32)
    for fn, args in ((clip_model.CLIP.encode_image, (images,)), (clip_model.CLIP.__call__, (images, tokens))):
        a, b = (clip_model.CLIP(cfg).apply({"params": p}, *args, method=fn) for cfg, p in (old, new))
        jax.tree.map(check, a, b)


def test_growing_a_clip_keeps_its_function_bit_for_bit(tiny):
    backbone, params, _ = tiny
    cfg, grown = deepen(backbone.cfg, jax.tree.map(np.asarray, params), vision_layers=5, text_layers=3)
    assert (cfg.vision_layers, cfg.text_layers) == (5, 3) and len(grown["visual"]["transformer"]) == 5
    _assert_same_function((backbone.cfg, params), (cfg, grown), np.testing.assert_array_equal)
    with pytest.raises(ValueError, match="cannot grow"):
        deepen(backbone.cfg, params, vision_layers=1)


def test_widening_a_clip_keeps_its_function_and_lets_the_copies_grow_apart(tiny):
    backbone, params, _ = tiny
    params = jax.tree.map(np.asarray, params)
    cfg, wide = widen(backbone.cfg, params, seed=3)
    assert (cfg.vision_width, cfg.vision_heads) == (2 * backbone.cfg.vision_width, 2 * backbone.cfg.vision_heads)
    assert wide["text"] is params["text"] and wide["visual"]["class_embedding"].shape == (cfg.vision_width,)
    _assert_same_function((backbone.cfg, params), (cfg, wide),
                          lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5))
    # the split halves differ (else the copies would get equal gradients forever) and sum back to the old matrix
    proj, half = wide["visual"]["proj"]["kernel"], backbone.cfg.vision_width
    assert not np.allclose(proj[:half], proj[half:])
    np.testing.assert_allclose(proj[:half] + proj[half:], params["visual"]["proj"]["kernel"], atol=1e-6)
    # the two copies of each width channel get different gradients: training separates them
    images = random_batch(2, 32, 1)["image"]
    encode = lambda p: clip_model.CLIP(cfg).apply({"params": p}, images, method=clip_model.CLIP.encode_image)
    grad = jax.grad(lambda p: jnp.sum(encode(p) ** 2))(wide)
    g = np.asarray(grad["visual"]["class_embedding"])
    assert np.abs(g[:half] - g[half:]).max() > 1e-3 * np.abs(g).max()


@pytest.mark.slow
def test_a_tiny_run_trains_its_teacher_then_a_transductive_student(tmp_path):
    from aple_jax.run import run
    result = run(tiny_config("promptkd"), str(tmp_path / "kd"))
    assert result["transductive"] is True and result["method"] == "promptkd"
    assert result["num_train_images"] == 160   # all 10 synthetic classes' 16 training images, base and new
    assert result["kd_teacher"]["method"] == "ivlp" and set(result["kd_teacher"]["accuracy"]) == {"base", "new"}
    assert result["selected"]["by"] == "base" and 1 <= result["selected"]["epoch"] <= 4
    teacher = json.loads((tmp_path / "kd" / "teacher" / "results.json").read_text())
    assert teacher["transductive"] is False and teacher["num_train_images"] == 80   # base classes, with labels
    again = run(tiny_config("promptkd"), str(tmp_path / "kd"))   # finished: read back, the teacher reused
    assert again["accuracy"] == result["accuracy"]
    # the same teacher as an official checkpoint (exported by interop) loads to the same prompts
    from aple_jax.interop.export_prompts import export
    official = export(tmp_path / "kd" / "teacher", tmp_path / "official")
    as_run = distill.load_teacher(tiny_config("promptkd", kd__teacher=str(tmp_path / "kd" / "teacher")))
    as_file = distill.load_teacher(tiny_config("promptkd", kd__teacher=official,
                                               kd__teacher_config="configs/ivlp.py:tiny"))
    jax.tree.map(np.testing.assert_array_equal, as_file.prompts, as_run.prompts)
    # the student as the official trainer writes its chosen epoch (model-best.pth.tar, the official load_model's
    # default): it reads back bit for bit and, with its teacher, scores as the run
    from aple_jax.interop.import_prompts import import_checkpoint
    from aple_jax.prompt_files import read_leaves
    student_file = export(tmp_path / "kd", tmp_path / "student")
    assert student_file == str(tmp_path / "student" / "VLPromptLearner" / "model-best.pth.tar")
    import_checkpoint(student_file, tiny_config("promptkd"), str(tmp_path / "student.npz"))
    ours, back = read_leaves(tmp_path / "kd" / "prompts.npz"), read_leaves(tmp_path / "student.npz")
    assert sorted(back) == sorted(ours) and all(back[k].tobytes() == ours[k].tobytes() for k in ours)
    evaluated = run(tiny_config("promptkd", eval_only_from=student_file, kd__teacher=str(tmp_path / "kd" / "teacher")),
                    str(tmp_path / "eval"))
    assert evaluated["accuracy"] == result["accuracy"]
    assert evaluated["transductive"] is True   # a property of the prompts: they saw the new classes' images
    recorded = run(tiny_config("promptkd", eval_only_from=str(tmp_path / "kd")), str(tmp_path / "eval_recorded"))
    assert recorded["accuracy"] == result["accuracy"]   # our run directory names the teacher it learned from
