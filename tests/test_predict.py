"""`python -m aple_jax.predict` and the Classifier API: a world run's prompts on its own test images written as PNG
files, new class names, an official checkpoint, bad inputs; per-class results of the same run."""
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aple_jax import report_classes
from aple_jax.errors import ConfigError
from aple_jax.predict import ClassNamesError, load_classifier
from aple_jax.report import report
from aple_jax.run import build_setting, run
from configs import aple
from tests import cli
from tests.helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "predict.md")


def world_config():
    """The demo's method and preset on the world's smallest dataset (8 classes), 2 shots, one epoch per phase."""
    c = aple.get_config("world,dataset=world:WorldShapes,shots=2")
    c.optim.epoch_scale, c.progress = 0.2, False
    return c


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "aple"
    config = world_config()
    return str(workdir), run(config, str(workdir)), build_setting(config)


def write_pngs(source, folder):
    """Every image of a split as `<folder>/<label>/<index>.png`; returns the paths in the split's order."""
    out = []
    for i in range(len(source)):
        example = source[i]
        path = os.path.join(folder, str(example["label"]), f"{i:04d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(example["image"]).save(path)
        out.append(path)
    return out


def predict_cli(*args, check=True):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "aple_jax.predict", "--no-progress", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert not check or proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def base_images(world_run, tmp_path_factory):
    _, _, setting = world_run
    return write_pngs(setting.evals[0].splits.test, str(tmp_path_factory.mktemp("base_images")))


@pytest.fixture(scope="module")
def cli_rows(world_run, base_images, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out") / "predictions.csv")
    folder = os.path.dirname(os.path.dirname(base_images[0]))
    predict_cli("--from", world_run[0], "--images", folder, "--topk", "3", "--out", out)
    return {row["path"]: row for row in read_csv(out)}


@pytest.mark.slow
def test_cli_classifies_rendered_test_images_with_the_runs_accuracy(world_run, base_images, cli_rows):
    workdir, results, setting = world_run
    base = setting.evals[0]
    assert base.name == "base" and len(cli_rows) == len(base.splits.test) == 4 * 20
    correct = np.zeros(base.splits.num_classes, int)
    for path in base_images:
        row, label = cli_rows[path], int(os.path.basename(os.path.dirname(path)))
        assert row["error"] == "" and float(row["prob_1"]) >= float(row["prob_2"]) >= float(row["prob_3"]) > 0
        correct[label] += row["class_1"] == base.splits.classnames[label]
    assert correct.tolist() == results["evals"]["base"]["per_class_correct"]
    assert 100.0 * correct.sum() / len(base_images) == results["accuracy"]["base"]


@pytest.mark.slow
def test_api_gives_the_clis_probabilities_and_new_classes_match_the_runs_new_evaluation(world_run, base_images,
                                                                                        cli_rows):
    workdir, results, setting = world_run
    classifier = load_classifier(workdir)
    assert list(classifier.classnames) == results["evals"]["base"]["classnames"]
    probs = classifier.predict(base_images)
    assert probs.shape == (len(base_images), 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    for path, p in zip(base_images, probs):
        row = cli_rows[path]
        top = np.argsort(-p, kind="stable")[:3]
        assert [classifier.classnames[i] for i in top] == [row[f"class_{k}"] for k in (1, 2, 3)]
        assert p[top].tolist() == [float(row[f"prob_{k}"]) for k in (1, 2, 3)]    # exactly the same numbers

    new = setting.evals[1]
    novel = classifier.with_classes(new.splits.classnames)
    images = np.stack([new.splits.test[i]["image"] for i in range(len(new.splits.test))])   # arrays, not files
    predicted = novel.predict(images).argmax(1)
    labels = new.splits.test.labels
    per_class = np.bincount(labels[predicted == labels], minlength=new.splits.num_classes)
    assert per_class.tolist() == results["evals"]["new"]["per_class_correct"]


@pytest.mark.slow
def test_per_class_tables_and_confusion_of_the_world_run(world_run, tmp_path):
    workdir, results, setting = world_run
    confusions = report_classes.read_confusions(workdir)
    for ev in setting.evals:
        stored, matrix = results["evals"][ev.name], confusions[ev.name]
        assert sum(stored["per_class_total"]) == len(ev.splits.test) == matrix.sum()
        assert 100.0 * np.trace(matrix) / matrix.sum() == pytest.approx(results["accuracy"][ev.name], abs=1e-9)
        zs = results["zero_shot"]["evals"][ev.name]
        assert sum(zs["per_class_total"]) == len(ev.splits.test)
        assert 100.0 * sum(zs["per_class_correct"]) / len(ev.splits.test) == results["zero_shot"]["accuracy"][ev.name]
    summary = report(workdir, str(tmp_path))
    assert sorted(summary["per_class"]) == ["per_class/aple.md", "per_class/aple_base.png", "per_class/aple_new.png"]
    page = (tmp_path / "per_class" / "aple.md").read_text()
    assert "| class | correct / total | accuracy | zero-shot | change |" in page
    for name in results["evals"]:
        assert (tmp_path / "per_class" / f"aple_{name}.png").stat().st_size > 0


@pytest.mark.slow
def test_the_python_example_of_the_guide_runs(world_run):
    """docs/predict.md's Python block, on this module's world run (WorldShapes, not the demo's dataset)."""
    with open(DOC) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) == 1
    code = blocks[0].replace("/tmp/aple_demo/seed1", world_run[0]).replace("WorldScenes-Invert", "WorldShapes")
    namespace = {}
    exec(compile(code, DOC, "exec"), namespace)       # noqa: S102 - our own documentation
    assert namespace["probs"].shape == (8, 4) and len(namespace["novel"].classnames) == 4


# ------------------------------------------------------------------------------------ tiny runs and checkpoints

SMALL = dict(dataset__shots=4, batch_size=8, eval_batch_size=16, optim__epochs=1, log_every=2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny") / "ivlp"
    config = tiny_config("ivlp", **SMALL)
    run(config, str(workdir))
    return str(workdir), build_setting(config)


def test_an_unreadable_image_is_a_row_with_its_error(tiny_run, tmp_path):
    workdir, setting = tiny_run
    paths = write_pngs(setting.evals[0].splits.test, str(tmp_path))[:5]
    broken = tmp_path / "0" / "broken.png"
    broken.write_bytes(b"not an image")
    classifier = load_classifier(workdir, batch_size=4)
    rows = classifier.classify([paths[0], str(broken), *paths[1:]], topk=2)
    assert [r.path for r in rows] == [paths[0], str(broken), *paths[1:]]
    assert rows[1].classes == [] and rows[1].error.startswith("UnidentifiedImageError")
    assert "broken.png" in rows[1].error
    probs = classifier.predict(paths)
    for row, p in zip([rows[0], *rows[2:]], probs):
        assert row.error == "" and row.probs == np.sort(p)[::-1][:2].tolist()
    with pytest.raises(Exception, match="1 image\\(s\\) cannot be read: .*broken.png"):
        classifier.predict([paths[0], str(broken)])


def test_class_names_are_checked_and_text_features_follow_them(tiny_run):
    workdir, setting = tiny_run
    classifier = load_classifier(workdir)
    with pytest.raises(ClassNamesError, match="names 1 class\\(es\\) more than once: 'cat'"):
        classifier.with_classes(["cat", "dog", "cat"])
    with pytest.raises(ClassNamesError, match="holds no class names"):
        classifier.with_classes([])
    image = setting.evals[0].splits.test[0]["image"]
    reversed_names = classifier.with_classes(classifier.classnames[::-1])
    np.testing.assert_allclose(reversed_names.predict(image)[0], classifier.predict(image)[0][::-1], rtol=1e-5)
    with pytest.raises(ConfigError, match="--from zeroshot needs --config"):
        load_classifier("zeroshot", ["a", "b"])


@pytest.mark.slow
def test_zero_shot_classifier_matches_a_zero_shot_run(tmp_path):
    config = tiny_config("zeroshot", **SMALL)
    results = run(config, str(tmp_path / "zs"))
    new = build_setting(config).evals[1].splits
    classifier = load_classifier("zeroshot", new.classnames, config)
    images = np.stack([new.test[i]["image"] for i in range(len(new.test))])
    predicted = classifier.predict(images).argmax(1)
    assert 100.0 * np.mean(predicted == new.test.labels) == results["accuracy"]["new"]


@pytest.mark.slow
def test_an_official_checkpoint_classifies_through_from(tiny_run, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from aple_jax.interop.import_prompts import import_checkpoint
    from tests.test_interop import official_state_dict, save_official
    from tests.test_clip_parity import TINY_TEXT, TINY_VISION, hf_clip, hf_to_openai
    from tests.test_interop import TINY

    openai = hf_to_openai(hf_clip(TINY_TEXT, TINY_VISION, projection_dim=TINY.embed_dim).state_dict())
    checkpoint = save_official(str(tmp_path / "output"), "ivlp", official_state_dict("ivlp", openai, seed=3))
    names = tmp_path / "names.txt"
    names.write_text("red circle\ngreen square\n\nblue triangle\n")
    images = write_pngs(build_setting(tiny_config("ivlp", **SMALL)).evals[0].splits.test, str(tmp_path / "images"))
    out = tmp_path / "official.jsonl"
    predict_cli("--from", checkpoint, "--config", "configs/ivlp.py:tiny", "--classes", str(names),
                "--images", str(tmp_path / "images" / "**" / "*.png"), "--out", str(out), "--topk", "5")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == sorted(images) and all(len(r["classes"]) == 3 for r in rows)

    import_checkpoint(checkpoint, tiny_config("ivlp"), str(tmp_path / "prompts.npz"))
    imported = load_classifier(str(tmp_path / "prompts.npz"), ["red circle", "green square", "blue triangle"])
    probs = imported.predict(sorted(images))
    for row, p in zip(rows, probs):
        assert row["probs"] == np.sort(p)[::-1].tolist()
    untrained = load_classifier(tiny_run[0], ["red circle", "green square", "blue triangle"]).predict(sorted(images))
    assert not np.allclose(untrained, probs)      # the checkpoint's prompts, not another run's


def test_bad_inputs_are_one_error_line(tiny_run, tmp_path, capsys):
    from aple_jax.predict import main as predict_main

    workdir, _ = tiny_run
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no images here")
    (tmp_path / "none.txt").write_text("\n\n")
    (tmp_path / "twice.txt").write_text("cat\ndog\ncat\n")
    (tmp_path / "packed" / "seed1").mkdir(parents=True)
    (tmp_path / "packed" / "seed1" / "config.json").write_text("{}")
    predict = lambda *a: cli.module("aple_jax.predict", "--no-progress", *a)   # noqa: E731
    cases = [
        cli.Case("empty_folder", predict("--from", workdir, "--images", str(tmp_path / "empty")),
                 f"folder {tmp_path / 'empty'} holds no images"),
        cli.Case("folder_without_images", predict("--from", workdir, "--images", str(tmp_path / "texts")),
                 "holds no images"),
        cli.Case("no_match", predict("--from", workdir, "--images", str(tmp_path / "*.jpg")),
                 "no file matches the pattern"),
        cli.Case("empty_classes", predict("--from", workdir, "--images", str(image), "--classes",
                                          str(tmp_path / "none.txt")), "none.txt holds no class names"),
        cli.Case("duplicate_classes", predict("--from", workdir, "--images", str(image), "--classes",
                                              str(tmp_path / "twice.txt")), "more than once: 'cat'"),
        cli.Case("missing_from", predict("--from", str(tmp_path / "nowhere"), "--images", str(image)),
                 "nowhere does not exist"),
        cli.Case("folder_not_a_run", predict("--from", str(tmp_path / "texts"), "--images", str(image)),
                 "is a folder but not a run directory"),
        cli.Case("packed_run", predict("--from", str(tmp_path / "packed"), "--images", str(image)),
                 "it holds the runs seed1"),
        cli.Case("image_as_from", predict("--from", str(image), "--images", str(image)),
                 "neither a prompts .npz nor an official checkpoint"),
        cli.Case("zeroshot_without_config", predict("--from", "zeroshot", "--images", str(image)),
                 "--from zeroshot needs --config"),
        cli.Case("bad_out", predict("--from", workdir, "--images", str(image), "--out", "p.txt"),
                 "expected a .csv or .jsonl"),
        cli.Case("other_shape", predict("--from", workdir, "--images", str(image), "--config",
                                        "configs/ivlp.py:tiny", "--override", "prompts.text.n_ctx=2"),
                 "another method/backbone/prompt shape"),
    ]
    cli.assert_all_user_errors(cases[:1])             # through the real command line
    for case in cases[1:]:                            # the rest in this process: the same main, no start-up cost
        with pytest.raises(SystemExit) as exit_:
            predict_main(list(case.argv[2:]))
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert exit_.value.code == 2 and len(errors) == 1 and case.needle in errors[0], (case.name, errors)


@pytest.mark.gcs
def test_images_class_names_and_predictions_in_a_bucket(tiny_run, gcs, tmp_path):
    import fsspec

    from aple_jax import paths
    from aple_jax.data.image_files import find_images
    from aple_jax.predict import main

    workdir, setting = tiny_run
    test = setting.evals[0].splits.test
    local = write_pngs([test[i] for i in (0, 1, 2, 8, 9, 16)], str(tmp_path / "images"))
    (tmp_path / "images" / "0" / "notes.txt").write_text("not an image")
    fsspec.filesystem("gs").put(str(tmp_path / "images") + "/", gcs.removeprefix("gs://") + "/images/", recursive=True)
    remote = [f"{gcs}/images/{os.path.relpath(p, tmp_path / 'images')}" for p in local]
    assert find_images([f"{gcs}/images"]) == sorted(remote)           # recursive, image files only
    assert find_images([f"{gcs}/images/0/*.png"]) == sorted(r for r in remote if "/images/0/" in r)
    paths.write_text_atomic(f"{gcs}/names.txt", "\n".join(setting.evals[0].splits.classnames) + "\n")
    assert main(["--no-progress", "--from", workdir, "--images", f"{gcs}/images", "--classes", f"{gcs}/names.txt",
                 "--topk", "2", "--out", f"{gcs}/out/predictions.jsonl"]) == 0
    rows = [json.loads(line) for line in paths.join(gcs, "out", "predictions.jsonl").read_text().splitlines()]
    probs = load_classifier(workdir).predict(sorted(local))
    assert [r["path"] for r in rows] == sorted(remote)
    for row, p in zip(rows, probs):
        assert row["probs"] == np.sort(p)[::-1][:2].tolist()


def test_a_prompts_file_without_a_recorded_config_needs_one(tiny_run, tmp_path):
    from aple_jax.prompt_files import PROMPTS_META_KEY, read_prompts_meta

    workdir, _ = tiny_run
    meta = read_prompts_meta(os.path.join(workdir, "prompts.npz"))
    assert meta["run_config"]["method"] == "ivlp" and meta["run_config"]["backbone"]["name"] == "tiny"
    with np.load(os.path.join(workdir, "prompts.npz")) as f:
        leaves = {k: f[k] for k in f.files if k != PROMPTS_META_KEY}
    old = str(tmp_path / "old.npz")
    np.savez(old, **leaves, **{PROMPTS_META_KEY: np.asarray(json.dumps({k: v for k, v in meta.items()
                                                                           if k != "run_config"}))})
    with pytest.raises(ConfigError, match="records no config"):
        load_classifier(old, ["a", "b"])
    classifier = load_classifier(old, config=tiny_config("ivlp", **SMALL))    # its class names are recorded
    assert list(classifier.classnames) == meta["train"]["classnames"]
