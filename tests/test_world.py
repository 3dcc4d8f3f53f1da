"""The procedural world: rendering, captions, datasets under CoOp's protocol, BPE, pretraining, the shipped CLIP."""
import json
import os
import random
import statistics

import numpy as np
import pytest

from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.world import (BASE_DATASETS, SHIFTS, SUITE, WORLD_CLIP_DIR, WORLD_DATASETS, build_world_dataset,
                            zero_shot_accuracy)
from aple_jax.world.attributes import ATTRIBUTES, COLOURS, SHAPES, sample_attributes, sample_groups
from aple_jax.world.captions import captions
from aple_jax.world.datasets import SPECS, interleave
from aple_jax.world.render import render
from aple_jax.world.shifts import apply_shift

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_render_is_deterministic_and_vectorised():
    attrs = sample_attributes(np.random.default_rng(0), 16)
    a = render(attrs, np.random.default_rng(1), 64)
    b = render(attrs, np.random.default_rng(1), 64)
    assert a.shape == (16, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert a.std() > 20  # not blank


def test_sample_attributes_fixes_and_validates():
    attrs = sample_attributes(np.random.default_rng(0), 8, {"shape": 3, "count": 0})
    assert set(attrs) == set(ATTRIBUTES) and (attrs["shape"] == 3).all() and (attrs["count"] == 0).all()
    with pytest.raises(ValueError, match="unknown world attributes"):
        sample_attributes(np.random.default_rng(0), 2, {"hue": 1})
    with pytest.raises(ValueError, match="'shape' must lie in 0..7"):
        sample_attributes(np.random.default_rng(0), 2, {"shape": 8})


@pytest.mark.parametrize("shift", SHIFTS)
def test_shifts_change_images(shift):
    rng = np.random.default_rng(0)
    images = render(sample_attributes(rng, 4), rng, 64)
    out = apply_shift(images, shift, rng)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - images).mean() > 5


def test_groups_differ_in_one_named_attribute():
    attrs, varying = sample_groups(np.random.default_rng(0), 64, 4)
    texts = captions(attrs, random.Random(0), varying)
    for g in range(16):
        rows = slice(4 * g, 4 * g + 4)
        same = [k for k, v in attrs.items() if (v[rows] == v[4 * g]).all()]
        assert set(ATTRIBUTES) - set(same) <= {varying[4 * g]}
    words = {"shape": SHAPES, "colour": tuple(COLOURS)}
    for text, name, i in zip(texts, varying, range(64)):
        if name in words:
            assert words[name][attrs[name][i]] in text, (text, name)


def test_captions_name_the_attributes():
    attrs = sample_attributes(np.random.default_rng(0), 200)
    texts = captions(attrs, random.Random(0))
    assert len(texts) == 200 and len(set(texts)) > 100
    assert any(t.startswith("a photo of a ") for t in texts) and any(t.endswith(" texture.") for t in texts)


def test_interleave_prefix_covers_both_factors():
    pairs = interleave(8, 8)
    assert len(set(pairs)) == 64
    base = pairs[:32]
    assert {a for a, _ in base} == set(range(8)) and {b for _, b in base} == set(range(8))


def test_dataset_names_and_sizes():
    assert len(WORLD_DATASETS) == len(BASE_DATASETS) * (1 + len(SHIFTS))
    assert max(len(SPECS[d].classnames) for d in BASE_DATASETS) >= 20
    with pytest.raises(ValueError, match="unknown world dataset 'WorldCats'"):
        build_world_dataset("WorldCats", shots=1, seed=1)


def test_build_world_dataset_follows_coop_protocol():
    full = build_world_dataset("WorldObjects", shots=4, seed=1, train_per_class=8, test_per_class=3)
    base = build_world_dataset("WorldObjects", shots=4, seed=1, subsample="base", train_per_class=8,
                               test_per_class=3)
    new = build_world_dataset("WorldObjects", shots=4, seed=1, subsample="new", train_per_class=8, test_per_class=3)
    assert full.num_classes == 64 and base.num_classes == 32 and new.num_classes == 32
    assert base.classnames == full.classnames[:32] and new.classnames == full.classnames[32:]
    assert len(base.train) == 32 * 4 and len(base.val) == 32 * 4 and len(base.test) == 32 * 3
    assert sorted(set(new.test.labels.tolist())) == list(range(32))
    assert new.template.format(new.classnames[0]) == f"a photo of a {full.classnames[32]}."
    item = new.test[0]
    assert item["image"].shape == (64, 64, 3) and item["image"].dtype == np.uint8 and item["label"] == 0
    np.testing.assert_array_equal(item["image"], full.test[32 * 3]["image"])  # same image, relabelled


def test_fewshot_sample_depends_on_seed_images_do_not():
    a = build_world_dataset("WorldShapes", shots=2, seed=1, train_per_class=8)
    b = build_world_dataset("WorldShapes", shots=2, seed=2, train_per_class=8)
    assert [r.key for r in a.train.records] != [r.key for r in b.train.records]
    np.testing.assert_array_equal(a.test[5]["image"], b.test[5]["image"])
    c = build_world_dataset("WorldShapes", shots=2, seed=1, train_per_class=8, world_seed=1)
    assert not np.array_equal(a.test[5]["image"], c.test[5]["image"])


def test_shifted_variant_renders_the_same_scene_shifted():
    plain = build_world_dataset("WorldScenes", shots=0, seed=1, test_per_class=2)
    shifted = build_world_dataset("WorldScenes-Invert", shots=0, seed=1, test_per_class=2)
    assert shifted.classnames == plain.classnames and shifted.template == plain.template
    np.testing.assert_array_equal(shifted.test[7]["image"], 255 - plain.test[7]["image"])
    swapped = build_world_dataset("WorldScenes-Swap", shots=0, seed=1, test_per_class=2)
    np.testing.assert_array_equal(swapped.test[7]["image"], plain.test[7]["image"][..., [1, 2, 0]])


def test_later_families_leave_the_first_datasets_images_alone():
    """Datasets seed their images by their index in SPECS: families added later must not move the first five."""
    assert list(SPECS)[:5] == ["WorldShapes", "WorldObjects", "WorldTextures", "WorldScenes", "WorldCounts"]
    places, sizes = SPECS["WorldPlaces"], SPECS["WorldSizes"]
    assert len(places.classnames) == 40 and places.classnames[0] == "red shape in the center"
    assert len(sizes.classnames) == 16 and set(sizes.classnames[:8]) >= {"small red shape", "large orange shape"}


def test_suite_is_chosen_by_room():
    """The suite's datasets all exist, split into base and new, and at least 6 leave a probe 15 points of room."""
    with open(os.path.join(REPO, "docs", "world_room.json")) as f:
        rooms = {r["dataset"]: r for r in json.load(f)["rows"]}
    assert len(SUITE) == len(set(SUITE)) == 11 and set(SUITE) <= set(WORLD_DATASETS) and set(SUITE) <= set(rooms)
    assert all(len(SPECS[name.split("-")[0]].classnames) >= 16 for name in SUITE)
    assert sum(rooms[name]["room"] >= 15 for name in SUITE) >= 6
    zero_shot = sorted(rooms[name]["zero_shot"] for name in SUITE)
    assert zero_shot[0] < 0.10 and zero_shot[-1] > 0.9      # a spectrum: from specialist to generic


def test_world_bpe_is_clip_format(tmp_path):
    from aple_jax.world.bpe import learn_merges, write_vocabulary

    lines = captions(sample_attributes(np.random.default_rng(0), 300), random.Random(0))
    size = write_vocabulary(str(tmp_path), learn_merges(lines, max_merges=200))
    tok = Tokenizer.from_path(str(tmp_path))
    assert tok.vocab_size == size and tok.eot_id == size - 1 and tok.sot_id == size - 2
    assert tok.decode(tok.encode("a photo of a red circle.")) == "a photo of a red circle ."


def test_hf_export_round_trips_through_load_clip(tmp_path):
    import jax

    from aple_jax.clip.model import init_params
    from aple_jax.clip.weights import load_clip, save_hf
    from aple_jax.world.pretrain import world_clip_config

    cfg = world_clip_config(600, embed_dim=32, vision_layers=2, vision_width=64, text_layers=2, text_width=64)
    params = init_params(cfg, seed=3)
    save_hf(str(tmp_path), cfg, params)
    cfg2, params2 = load_clip(str(tmp_path))
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), params2)


def _tiny_world_clip(tmp_path):
    """(tokenizer learnt on 500 captions, a 2-layer CLIP config of that vocabulary) for pretraining tests."""
    from aple_jax.world.bpe import learn_merges, write_vocabulary
    from aple_jax.world.pretrain import world_clip_config

    lines = captions(sample_attributes(np.random.default_rng(0), 500), random.Random(0))
    size = write_vocabulary(str(tmp_path / "tok"), learn_merges(lines))
    cfg = world_clip_config(size, embed_dim=32, vision_layers=2, vision_width=32, vision_heads=1, text_width=32,
                            text_heads=1, text_layers=2, context_length=20)
    return Tokenizer.from_path(str(tmp_path / "tok")), cfg


def test_pretraining_loss_falls_and_resumes_exactly(tmp_path):
    import shutil

    from aple_jax.world.pretrain import PretrainConfig, pretrain

    tok, cfg = _tiny_world_clip(tmp_path)
    pc = PretrainConfig(steps=30, batch_size=32, lr=3e-3, warmup=5, ckpt_every=15)
    workdir = str(tmp_path / "run")
    params, losses = pretrain(cfg, tok, pc, workdir, progress=False)
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.3, losses
    shutil.rmtree(os.path.join(workdir, "checkpoints", "30"))  # as if the run had crashed after step 15
    resumed_params, resumed = pretrain(cfg, tok, pc, workdir, progress=False)
    np.testing.assert_allclose(resumed, losses, rtol=1e-5)
    np.testing.assert_allclose(resumed_params["logit_scale"], params["logit_scale"], rtol=1e-5)


def test_prompted_pretraining_batch_and_continuation(tmp_path):
    """--prompt-tokens gives half of each batch random vision prompts; --init-from continues a model's weights."""
    from aple_jax.clip.model import CLIP, init_params
    from aple_jax.clip.weights import load_clip, save_hf
    from aple_jax.world.pretrain import PretrainConfig, contrastive_loss, make_batch, pretrain

    tok, cfg = _tiny_world_clip(tmp_path)
    batch = make_batch(0, 0, 16, 4, tok, cfg, prompt_tokens=3)
    assert batch["prompts"].shape == (8, cfg.vision_layers, 3, cfg.vision_width)
    plain = {k: v for k, v in batch.items() if k != "prompts"}
    np.testing.assert_array_equal(make_batch(0, 0, 16, 4, tok, cfg)["image"], plain["image"])
    params = init_params(cfg, seed=1)
    model = CLIP(cfg)
    # the random prompts reach the loss (through the prompted half of the images)
    assert float(contrastive_loss(model, params, batch)) != float(contrastive_loss(model, params, plain))

    save_hf(str(tmp_path / "start"), cfg, params)
    pc = PretrainConfig(steps=20, batch_size=16, lr=3e-3, warmup=2, prompt_tokens=3)
    start_cfg, start = load_clip(str(tmp_path / "start"))
    out, losses = pretrain(start_cfg, tok, pc, None, progress=False, init=start)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    first = make_batch(0, pc.seed, 16, 4, tok, cfg, prompt_tokens=3)
    np.testing.assert_allclose(losses[0], float(contrastive_loss(model, start, first)), rtol=1e-5)


# ------------------------------------------------------------------------------------------- the shipped CLIP

def _record() -> dict:
    with open(os.path.join(WORLD_CLIP_DIR, "training.json")) as f:
        return json.load(f)


def test_shipped_clip_loads_through_the_normal_loaders():
    from aple_jax.clip.backbone import load_backbone

    backbone, params, tokenizer = load_backbone("world", WORLD_CLIP_DIR)
    assert backbone.cfg.image_resolution == 64 and backbone.cfg.vocab_size == tokenizer.vocab_size
    assert backbone.cfg.vision_layers == 4 and backbone.cfg.text_layers == 4
    for name in BASE_DATASETS:  # every class prompt fits with 16 learnt context tokens (CoOp's longest)
        spec = SPECS[name]
        tokenizer.tokenize(["X " * 16 + c + "." for c in spec.classnames], backbone.cfg.context_length)
    record = _record()
    for stage in (record, record["continued_from"]):   # random init, then prompt-robust continuation
        assert stage["seed"] == 0 and stage["command"].startswith("python -m aple_jax.world.pretrain")
        assert set(stage["zero_shot"]["top1"]) <= set(WORLD_DATASETS)     # the datasets of its day
        assert {"WorldScenes", "WorldObjects-Invert", "WorldCounts-Sketch"} <= set(stage["zero_shot"]["top1"])
    assert record["pretrain"]["prompt_tokens"] > 0 and "--init-from" in record["command"]


def test_shipped_clip_reproduces_its_recorded_zero_shot_accuracy():
    record = _record()
    n = record["zero_shot"]["n_per_class"]
    acc = zero_shot_accuracy("WorldScenes", n, seed=0)
    assert acc == record["zero_shot"]["top1"]["WorldScenes"]
    assert len(SPECS["WorldScenes"].classnames) >= 20 and acc >= 0.6


def _image_flops(backbone, params) -> float:
    """XLA's FLOP count of one image through the vision tower."""
    import jax
    import jax.numpy as jnp

    image = jnp.zeros((1, 64, 64, 3))
    cost = jax.jit(backbone.image).lower(params, image).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


@pytest.mark.parametrize("name,width,grown_by,flops", [("world-large", 128, "--vision-layers 8", (1.8, 2.0)),
                                                        ("world-xl", 256, "--widen-vision", (7.0, 7.5))])
def test_larger_world_clips_load_by_name_and_reproduce_their_recorded_zero_shot_accuracy(name, width, grown_by, flops):
    """The larger CLIPs grow the shipped one (8 vision blocks; world-xl also twice as wide: 7.2 times its image
    FLOPs, docs/world.md), record the command that grew them over the record they grew from, and score as their
    training.json says."""
    from aple_jax.clip.backbone import load_backbone
    from aple_jax.world import WORLD_BACKBONES

    backbone, params, tokenizer = load_backbone(name, "")
    shipped, shipped_params, shipped_tokenizer = load_backbone("world", "")
    ratio = _image_flops(backbone, params) / _image_flops(shipped, shipped_params)
    assert flops[0] < ratio < flops[1], ratio
    cfg = backbone.cfg
    assert (cfg.vision_layers, cfg.vision_width, cfg.vision_heads) == (8, width, width // 64)
    unchanged = ("text_layers", "text_width", "image_resolution", "vocab_size", "embed_dim")
    assert [getattr(cfg, k) for k in unchanged] == [getattr(shipped.cfg, k) for k in unchanged]
    assert tokenizer.vocab_size == shipped_tokenizer.vocab_size
    with open(os.path.join(WORLD_BACKBONES[name], "training.json")) as f:
        record = json.load(f)
    assert grown_by in record["command"] and "--init-from" in record["command"]
    chain = [record]
    while "continued_from" in chain[-1]:
        chain.append(chain[-1]["continued_from"])
    assert chain[-1]["command"] == "python -m aple_jax.world.pretrain --out aple_jax/assets/world_clip --seed 0"
    n = record["zero_shot"]["n_per_class"]
    assert zero_shot_accuracy("WorldScenes", n, seed=0, weights=WORLD_BACKBONES[name]) == \
        record["zero_shot"]["top1"]["WorldScenes"]


# ----------------------------------------------------------------------------------------------- the demo run

# Epochs of each method's recipe under the world preset (x 1.0: its own), and its optimizer steps on
# WorldScenes-Invert's 24 base classes (16 shots: 384 training images); docs/world.md states this table. The
# step-budget recipes (CLIP-LoRA, 2SFS) keep their steps x WORLD_ITERATION_SCALE, resolved to whole epochs.
WORLD_SCHEDULE = {"coop": ([200], 2400), "cocoop": ([10], 3840), "kgcoop": ([100], 300), "maple": ([5], 480),
                  "ivlp": ([20], 1920), "promptsrc": ([20], 1920), "aple": ([5, 5, 5], 1440), "mma": ([5], 120),
                  "clip_lora": ([33], 396), "twostage": ([12, 8], 240), "mmrl": ([10], 960)}
# What the world preset changes in a recipe beyond the common preset, each stated and argued in docs/world.md.
WORLD_DEVIATIONS = {"mma": {"mma.scale": (0.001, 1.0)}, "clip_lora": {"optim.lr": (2e-4, 1e-3)},
                    "twostage": {"optim.lr": (2e-4, 1e-3)}}


@pytest.mark.parametrize("method", sorted(WORLD_SCHEDULE))
def test_world_preset_keeps_each_recipe_and_scales_every_epoch_count_by_one_factor(method):
    import importlib

    from aple_jax.clip import model as clip_model
    from aple_jax.clip.backbone import Backbone, load_backbone
    from aple_jax.methods import build_method
    from aple_jax.train import resolve_iterations, scale_phases, steps_per_epoch
    from configs.common import WORLD_EPOCH_SCALE, WORLD_ITERATION_SCALE

    module = importlib.import_module(f"configs.{method}")
    world, recipe = module.get_config("world"), module.get_config("dataset=DTD")
    assert world.dataset.name == "world:WorldScenes-Invert" and world.optim.epoch_scale == WORLD_EPOCH_SCALE == 1.0
    deviations = WORLD_DEVIATIONS.get(method, {})
    for key in ("batch_size", "optim.lr", "optim.momentum", "optim.weight_decay", "loss_weights", "prompts.text.n_ctx",
                "prompts.vision.n_ctx", "teacher", "kl", "gpa", *deviations):
        expected = deviations[key] if key in deviations else (_field(recipe, key),) * 2
        assert (_field(recipe, key), _field(world, key)) == expected, key
    backbone, _, tokenizer = load_backbone("world", WORLD_CLIP_DIR)
    vit_b16 = Backbone(clip_model.CLIP(clip_model.get_config("ViT-B/16")))   # the recipe's own tower depth
    per_epoch = steps_per_epoch(24 * 16, world.batch_size)
    world_phases = build_method(world, backbone, tokenizer).phases()
    recipe_phases = build_method(recipe, vit_b16, tokenizer).phases()
    assert [p.iterations for p in world_phases] == [round(p.iterations * WORLD_ITERATION_SCALE)
                                                    for p in recipe_phases]
    phases = scale_phases(resolve_iterations(world_phases, per_epoch), world.optim.epoch_scale)
    if not any(p.iterations for p in recipe_phases):
        assert [p.epochs for p in phases] == [round(p.epochs * WORLD_EPOCH_SCALE) for p in recipe_phases]
    assert [p.epochs for p in phases] == WORLD_SCHEDULE[method][0]
    assert sum(p.epochs for p in phases) * per_epoch == WORLD_SCHEDULE[method][1]


def _field(c, dotted):
    for key in dotted.split("."):
        c = c.get(key)
    return c.to_dict() if hasattr(c, "to_dict") else c


def test_scale_phases_scales_epochs_and_gpa_alike():
    from aple_jax.methods.base import Phase
    from aple_jax.train import scale_phases

    phases = [Phase("a", (".*",), 20, 0.1, gpa=(15.0, 1.0)), Phase("b", (".*",), 2, 0.1)]
    scaled = scale_phases(phases, 0.2)
    assert [(p.epochs, p.gpa) for p in scaled] == [(4, (3.0, 0.2)), (1, None)]    # 0.4 epochs rounds up to one
    assert scale_phases(phases, 1.0) is phases


def test_demo_is_the_world_preset_with_three_packed_seeds():
    """`:demo` packs seeds 1, 2, 3 (the README's headline is their mean); `:world` (what sweeps use) and
    `:demo,seed=N` run one seed."""
    from configs import aple

    demo, world = aple.get_config("demo"), aple.get_config("world")
    assert demo.pack_seeds == "1,2,3" and world.pack_seeds == ""
    with demo.unlocked():
        demo.pack_seeds = ""
    assert demo.to_dict() == world.to_dict()
    one = aple.get_config("demo,seed=2")
    assert (one.pack_seeds, one.seed) == ("", 2)
    assert aple.get_config("demo,seeds=4+5").pack_seeds == "4,5"


def test_world_prompt_depth_follows_the_tower():
    """Prompts reach 3/4 of a world tower (as 9 of ViT-B's 12): 3 of the shipped CLIP's 4 blocks per tower, 6 of the
    larger CLIP's 8 vision blocks (its text tower keeps 4 blocks, so 3); a shallower recipe stays as it is."""
    from configs import coop, promptsrc

    for args, depths in (("world", (3, 3)), ("world,backbone=world-large", (3, 6)),
                         ("demo,backbone=world-large", (3, 6)), ("world,backbone=world-xl", (3, 6))):
        c = promptsrc.get_config(args)
        assert (c.prompts.text.depth, c.prompts.vision.depth) == depths, args
    assert coop.get_config("world,backbone=world-large").prompts.vision.depth == \
        min(coop.get_config("").prompts.vision.depth, 6)


@pytest.mark.slow
def test_readme_demo_beats_zero_shot_on_base_classes(tmp_path):
    """`python launch.py --config configs/aple.py:demo` (the README's main job): APLe on a world dataset with room
    to learn, seeds 1-3 in one program, printed with their mean and spread beside zero-shot CLIP; the mean is at
    least 10 points above zero-shot on the base classes."""
    import subprocess
    import sys

    workdir = tmp_path / "aple"
    out = subprocess.run([sys.executable, "launch.py", "--config", "configs/aple.py:demo", "--workdir", str(workdir),
                          "--config.progress=False"], check=True, cwd=REPO, capture_output=True, text=True)
    seeds = []
    for seed in (1, 2, 3):
        with open(workdir / f"seed{seed}" / "results.json") as f:
            seeds.append(json.load(f))
    zs = seeds[0]["zero_shot"]["accuracy"]
    for seed, aple in zip((1, 2, 3), seeds):
        assert aple["backbone"] == "world" and aple["dataset"] == "WorldScenes-Invert" and aple["seed"] == seed
        assert aple["compilations"] == {"L": 1, "V": 1, "LV": 1} and aple["steps"] == WORLD_SCHEDULE["aple"][1]
        assert aple["packed_seeds"] == 3 and aple["zero_shot"]["accuracy"] == zs
    assert zs["base"] < 5     # inverted colours: the class names point at the wrong images
    base = [aple["accuracy"]["base"] for aple in seeds]
    assert sum(base) / 3 >= zs["base"] + 10.0, (base, zs)
    mean_std = f"{sum(base) / 3:.2f} ± {statistics.stdev(base):.2f}"
    assert f"| aple | WorldScenes-Invert | mean ± std | {mean_std} |" in out.stdout, out.stdout
    assert "| aple | WorldScenes-Invert | 95% interval | [" in out.stdout
    assert f"| zero-shot CLIP | WorldScenes-Invert | - | {zs['base']:.2f} |" in out.stdout


# A short budget of each new method's world recipe on WorldScenes-Tint (24 base classes, 16 shots, zero-shot 11% on
# them): enough steps for the loss to fall and base accuracy to rise, few enough for the suite.
WORLD_LEARNS = {"mma": dict(optim__epochs=2), "clip_lora": dict(lora__iterations_per_shot=5),
                "twostage": dict(twostage__iterations_per_shot=5), "mmrl": dict(optim__epochs=1)}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(WORLD_LEARNS))
def test_each_new_method_learns_on_the_world(tmp_path, method):
    """Each method's world recipe, shortened: the training loss falls and base accuracy ends above zero-shot's."""
    from aple_jax.run import run
    from tests.helpers import tiny_config

    config = tiny_config(method, "world,dataset=world:WorldScenes-Tint,seed=1", log_every=4, **WORLD_LEARNS[method])
    results = run(config, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) >= 6 and statistics.mean(losses[-3:]) < statistics.mean(losses[:3]), losses
    base, zero_shot = results["accuracy"]["base"], results["zero_shot"]["accuracy"]["base"]
    assert base >= zero_shot + 5.0, (base, zero_shot)


@pytest.mark.parametrize("shift", ["Tint", "Dim"])
def test_camera_shifts_keep_the_order_of_every_channel(shift):
    """A colour cast and dim light move every image the same way and keep each channel's order (Invert reverses it)."""
    rng = np.random.default_rng(0)
    images = render(sample_attributes(rng, 4), rng, 64)
    for name, keeps_order in ((shift, True), ("Invert", False)):
        out = apply_shift(images, name, rng)
        for c in range(3):
            order = np.argsort(images[..., c].ravel(), kind="stable")
            assert np.all(np.diff(out[..., c].ravel()[order].astype(int)) >= 0) == keeps_order
