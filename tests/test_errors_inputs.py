"""Inputs that lie: weights, tokenizers, data, run directories and eval-only sources, refused by name."""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from aple_jax import prompt_files
from aple_jax import prompts as P
from aple_jax.clip import model as clip_model
from aple_jax.clip.backbone import check_tokenizer, load_backbone
from aple_jax.clip.tokenizer import TINY_TOKENIZER_DIR, Tokenizer
from aple_jax.data import build_dataset
from aple_jax.data.errors import BadImageError, EmptySplitError, SplitFormatError
from aple_jax.data.fake_trees import jpeg_bytes, write_coop_tree
from aple_jax.data.image_files import decode_image, to_rgb
from aple_jax.errors import AplejaxError, CheckpointError, WeightsError
from aple_jax.methods import build_method
from aple_jax.run import check_workdir_config, run
from aple_jax.world import WORLD_CLIP_DIR
from tests import cli
from tests.cli import Case, launch
from tests.helpers import tiny_config

TINY = "configs/coop.py:tiny"


def custom_split(root, classes=4, per_class=3, contradict=False, no_test_for=None) -> str:
    """A CoOp-format split JSON over JPEGs in `root`; returns its path."""
    split = {s: [] for s in ("train", "val", "test")}
    for c in range(classes):
        for s in split:
            if s == "test" and c == no_test_for:
                continue
            for i in range(per_class):
                key = f"c{c}/{s}_{i}.jpg"
                os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
                with open(os.path.join(root, key), "wb") as f:
                    f.write(jpeg_bytes(seed=c))
                split[s].append([key, c, f"class {c}"])
    if contradict:
        split["test"][0][2] = "class 1"   # label 0 called by class 1's name
    name = f"split_{contradict}_{no_test_for}.json"
    with open(os.path.join(root, name), "w") as f:
        json.dump(split, f)
    return os.path.join(root, name)


def coop_prompts(**leaf_values):
    """The tiny CoOp prompt tree as flat arrays, with some leaves replaced."""
    backbone, params, tokenizer = load_backbone("tiny", "")
    method = build_method(tiny_config("coop"), backbone, tokenizer)
    flat = {k: np.asarray(v) for k, v in P.flatten(method.init(jax.random.key(0), params)).items()}
    flat.update(leaf_values)
    return flat


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    out = {"root": str(root)}
    custom = root / "custom"
    out["contradict"] = custom_split(str(custom), contradict=True)
    out["no_test"] = custom_split(str(custom), no_test_for=3)
    out["good"] = custom_split(str(custom))
    (root / "not_json.json").write_text("{not json")
    out["not_json"] = str(root / "not_json.json")
    (root / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    out["garbage"] = str(root / "garbage.safetensors")
    (root / "empty_data").mkdir()
    config = tiny_config("coop", arg="tiny")
    for name, text in (("bad_config", "{\"method\": "), ("bad_results", None), ("other", None)):
        run_dir = root / name
        run_dir.mkdir()
        if text is not None:
            (run_dir / "config.json").write_text(text)
            continue
        c = tiny_config("coop", optim__lr=0.5) if name == "other" else config
        check_workdir_config(str(run_dir), c)
        if name == "bad_results":
            (run_dir / "results.json").write_text("{\"accuracy\": ")
    prompts = coop_prompts()
    leaf = sorted(prompts)[0]
    out["leaf"] = leaf
    np.savez(root / "nan.npz", **{**prompts, leaf: np.full_like(prompts[leaf], np.nan)})
    np.savez(root / "shape.npz", **{**prompts, leaf: prompts[leaf][:1]})
    (root / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    return out


def _cases(d):
    w = lambda name: os.path.join(d["root"], "runs", name)   # noqa: E731 - a fresh run directory per case
    custom = lambda path: f"{TINY},dataset=custom,data={path}"   # noqa: E731
    return [
        Case("weights_missing", launch("--config", TINY, "--workdir", w("a"), "--config.backbone.weights=/nonexistent/w"),
             "/nonexistent/w"),
        Case("weights_garbage", launch("--config", TINY, "--workdir", w("b"), f"--config.backbone.weights={d['garbage']}"),
             d["garbage"]),
        Case("weights_needed", launch("--config", TINY, "--workdir", w("c"), "--config.backbone.name=ViT-B/16"),
             "needs backbone.weights"),
        Case("tokenizer_mismatch", launch("--config", TINY, "--workdir", w("d"), "--config.backbone.name=world",
                                          f"--config.backbone.tokenizer={TINY_TOKENIZER_DIR}"),
             "the tokenizer has 1000 tokens, the model's token embedding 678 rows"),
        Case("tokenizer_missing", launch("--config", TINY, "--workdir", w("e"), "--config.backbone.name=world",
                                         "--config.backbone.tokenizer=/nonexistent/tok"), "/nonexistent/tok"),
        Case("split_contradicts", launch("--config", custom(d["contradict"]), "--workdir", w("f")),
             "the label and classname columns must agree"),
        Case("class_without_test_images", launch("--config", custom(d["no_test"]), "--workdir", w("g")),
             "'class 3'"),
        Case("split_not_json", launch("--config", custom(d["not_json"]), "--workdir", w("h")), d["not_json"]),
        Case("data_dir_empty", launch("--config", f"{TINY},dataset=EuroSAT,data={d['root']}/empty_data",
                                      "--workdir", w("i")), "empty_data"),
        Case("config_json_half_written", launch("--config", TINY, "--workdir", f"{d['root']}/bad_config"),
             "config.json is not valid JSON"),
        Case("results_json_half_written", launch("--config", TINY, "--workdir", f"{d['root']}/bad_results"),
             "results.json is not valid JSON"),
        Case("run_dir_of_another_config", launch("--config", TINY, "--workdir", f"{d['root']}/other"),
             "made by another config (optim.lr"),
        Case("eval_only_missing", launch("--config", TINY, "--workdir", w("j"), "--config.eval_only_from=/nonexistent/p"),
             "/nonexistent/p"),
        Case("eval_only_nan", launch("--config", TINY, "--workdir", w("k"),
                                     f"--config.eval_only_from={d['root']}/nan.npz"), f"leaf {d['leaf']} holds NaN"),
        Case("eval_only_shape", launch("--config", TINY, "--workdir", w("l"),
                                       f"--config.eval_only_from={d['root']}/shape.npz"), "mis-shaped"),
        Case("eval_only_not_npz", launch("--config", TINY, "--workdir", w("m"),
                                         f"--config.eval_only_from={d['root']}/broken.npz"), "broken.npz"),
        Case("batch_above_training_set", launch("--config", custom(d["good"]), "--workdir", w("n")),
             "fewer than the global batch size"),
    ]


def test_launch_refuses_lying_inputs_in_one_line(inputs):
    cli.assert_all_user_errors(_cases(inputs))


# ----------------------------------------------------------------------------------------------- images

GRAY_16 = np.full((4, 4), 40000, np.uint16)


@pytest.mark.parametrize("image,expected", [
    (Image.fromarray(GRAY_16), 156),                                     # I;16: 40000 / 65535 * 255
    (Image.fromarray(GRAY_16.astype(np.int32)), 156),                    # I
    (Image.fromarray(np.full((4, 4), 0.5, np.float32)), 128),            # F in [0, 1]
    (Image.new("LA", (4, 4), (100, 0)), 255),                            # fully transparent: the white background
    (Image.new("LA", (4, 4), (100, 255)), 100),
    (Image.new("RGBA", (4, 4), (0, 0, 0, 128)), 127),
    (Image.new("1", (4, 4), 1), 255),
    (Image.new("L", (4, 4), 7), 7),
], ids=["I;16", "I", "F", "LA-clear", "LA-opaque", "RGBA-half", "1", "L"])
def test_every_mode_decodes_to_the_right_gray(image, expected):
    rgb = to_rgb(image, "x.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    np.testing.assert_array_equal(rgb, expected)


def test_cmyk_and_transparent_palette_images():
    np.testing.assert_array_equal(to_rgb(Image.new("CMYK", (2, 2), (0, 255, 0, 0)), "x")[0, 0], [255, 0, 255])
    p = Image.new("P", (2, 2), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    np.testing.assert_array_equal(to_rgb(p, "x"), 255)


def test_a_16_bit_png_file_is_not_white(tmp_path):
    path = str(tmp_path / "gray16.png")
    Image.fromarray(GRAY_16).save(path)
    np.testing.assert_array_equal(decode_image(path), 156)


@pytest.mark.parametrize("image,needle", [
    (Image.fromarray(np.full((2, 2), 2.0, np.float32)), "mode 'F' with values"),
    (Image.new("LAB", (2, 2)), "mode 'LAB' is not supported"),
])
def test_undecodable_modes_are_refused_by_name(image, needle):
    with pytest.raises(BadImageError, match=needle) as info:
        to_rgb(image, "some/image.tif")
    assert "some/image.tif" in str(info.value)


# -------------------------------------------------------------------------------------------- tokenizer

def test_tokenizer_must_fit_the_model():
    tiny = clip_model.get_config("tiny")
    tok = Tokenizer.from_path(TINY_TOKENIZER_DIR)   # not the cached builtin one: this test changes it
    check_tokenizer(tok, tiny, "tiny")
    world = Tokenizer.from_path(WORLD_CLIP_DIR)
    with pytest.raises(WeightsError, match="the tokenizer has 678 tokens, the model's token embedding 1000 rows"):
        check_tokenizer(world, tiny, "w")
    tok._tok.model_max_length = 20
    with pytest.raises(WeightsError, match="context length is 20 tokens, the model's 77"):
        check_tokenizer(tok, tiny, "w")
    tok._tok.model_max_length = 77
    check_tokenizer(tok, tiny, "w")
    tok.eot_id = 1000
    with pytest.raises(WeightsError, match="start/end token ids 998/1000"):
        check_tokenizer(tok, tiny, "w")


# -------------------------------------------------------------------------------------------- prompts files

@pytest.mark.parametrize("change,needle", [
    (lambda a: np.full_like(a, np.nan), "holds NaN or inf"),
    (lambda a: np.full_like(a, np.inf), "holds NaN or inf"),
    (lambda a: a.astype(np.int32), "has dtype int32, expected floating point"),
    (lambda a: a[:1], "mis-shaped"),
])
def test_prompts_files_are_checked_leaf_by_leaf(tmp_path, change, needle):
    prompts = coop_prompts()
    leaf = sorted(prompts)[0]
    path = tmp_path / "p.npz"
    np.savez(path, **{**prompts, leaf: change(prompts[leaf])})
    with pytest.raises(CheckpointError, match=needle) as info:
        prompt_files.read_prompts(str(path), P.unflatten({k: jax.numpy.asarray(v) for k, v in prompts.items()}))
    assert leaf in str(info.value)


# ------------------------------------------------------------------------------------------------ data

def test_split_columns_must_agree_both_ways(tmp_path):
    path = custom_split(str(tmp_path), contradict=True)
    with pytest.raises(SplitFormatError, match=r"test\[0\] gives label 0 the class name 'class 1'"):
        build_dataset("custom", split_file=path, shots=0, seed=1)
    data = json.load(open(path))
    data["test"][0][1:] = [1, "class 0"]   # class 0 under label 1
    json.dump(data, open(path, "w"))
    with pytest.raises(SplitFormatError, match="gives label 1 the class name 'class 0'"):
        build_dataset("custom", split_file=path, shots=0, seed=1)


def test_a_class_without_test_images_is_refused_naming_dataset_split_and_class(tmp_path):
    data = build_dataset("custom", split_file=custom_split(str(tmp_path), no_test_for=3), shots=0, seed=1,
                         subsample="new")
    with pytest.raises(EmptySplitError, match=r"Custom, new split: 1 class\(es\) have no test images: 'class 3'"):
        data.check_evaluable("new")


def test_two_split_files_over_one_folder_keep_their_own_shots(tmp_path):
    a = custom_split(str(tmp_path), classes=2, per_class=6)
    data = json.load(open(a))
    for s in data.values():          # the same images, another train split: half of them
        s[:] = [r for r in s if r[0].endswith(("_0.jpg", "_1.jpg", "_2.jpg"))]
    b = str(tmp_path / "other.json")
    json.dump(data, open(b, "w"))
    first = build_dataset("custom", split_file=a, shots=2, seed=1)
    second = build_dataset("custom", split_file=b, shots=2, seed=1)
    allowed = {r[0] for r in data["train"]}
    assert {r.key for r in second.train.records} <= allowed
    assert len(os.listdir(tmp_path / "split_fewshot")) == 2
    assert build_dataset("custom", split_file=a, shots=2, seed=1).train.records == first.train.records


def test_a_stale_cache_is_resampled_and_an_unmarked_one_is_read_as_it_is(tmp_path):
    root = str(tmp_path / "DATA")
    write_coop_tree(root, "EuroSAT", per_class=(5, 2, 1))
    a = build_dataset("eurosat", root, shots=2, seed=1, cache_dir=str(tmp_path / "c"))
    path = tmp_path / "c" / "EuroSAT" / "shot_2-seed_1.json"
    cached = json.load(open(path))
    assert "source" in cached
    cached["source"] = "another split"
    cached["train"] = cached["train"][::-1]
    json.dump(cached, open(path, "w"))
    assert build_dataset("eurosat", root, shots=2, seed=1, cache_dir=str(tmp_path / "c")).train.records == \
        a.train.records                                      # stale: sampled again, as Dassl would
    cached.pop("source")
    json.dump(cached, open(path, "w"))                       # a cache without a fingerprint (CoOp users' files)
    assert build_dataset("eurosat", root, shots=2, seed=1, cache_dir=str(tmp_path / "c")).train.records == \
        a.train.records[::-1]


# ------------------------------------------------------------------------------- checked before training

def _rewrite(split_path, edit):
    with open(split_path) as f:
        split = json.load(f)
    edit(split)
    with open(split_path, "w") as f:
        json.dump(split, f)


LONG_NAME = " ".join(["extraordinarily"] * 80)


@pytest.mark.parametrize("problem,needle", [
    ("empty_new_test_image", r"1 image\(s\) in the Custom test split cannot be decoded: .*c3/test_0\.jpg: the file is empty"),
    ("long_new_class_name", r"Custom, new classes: 1 prompt\(s\) do not fit the context length"),
])
def test_a_new_class_problem_fails_before_training(tmp_path, problem, needle):
    split = custom_split(str(tmp_path / "data"), per_class=4)
    if problem == "empty_new_test_image":   # class 3 is a new class: evaluated only after training
        open(tmp_path / "data" / "c3" / "test_0.jpg", "wb").close()
    else:
        _rewrite(split, lambda s: [e.__setitem__(2, LONG_NAME) for part in s.values() for e in part if e[1] == 3])
    config = tiny_config("coop", dataset__name="custom", dataset__root=split, dataset__shots=2, batch_size=4,
                         optim__epochs=1, setting="base2new")
    workdir = tmp_path / "run"
    with pytest.raises(AplejaxError, match=needle):
        run(config, str(workdir))
    assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()
