"""The teacher of a distilled run (PromptKD): a finished run of ours on a larger CLIP, or an official PromptSRC /
PromptKD teacher checkpoint, loaded as a frozen method with its prompts; trained first when none is given.

`kd.teacher` names the teacher: a run directory (its config.json says the method and backbone, its prompts.npz the
prompts), or an official `model-best.pth.tar` / `model.pth.tar-N`, whose method and backbone `kd.teacher_config`
gives (`configs/promptsrc.py:backbone=ViT-L/14,weights=/path/ViT-L-14`). With `kd.teacher` empty, `kd.teacher_config`
is trained on the run's dataset into `<workdir>/teacher` before the student (and reused when the command reruns).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections

from aple_jax import config_files, interop, paths, prompt_files
from aple_jax import prompts as P
from aple_jax.clip.backbone import load_backbone
from aple_jax.errors import ConfigError
from aple_jax.methods.base import Method

Array = jax.Array
TEACHER_DIR = "teacher"   # under the student's run directory, when the run trains its teacher


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen method with its prompts and CLIP; `source` is where it came from."""
    method: Method
    prompts: P.Tree
    params: Any
    source: str

    @property
    def embed_dim(self) -> int:
        return self.method.backbone.cfg.embed_dim

    @property
    def logit_scale(self) -> Array:
        return self.method.backbone.logit_scale(self.params)

    def class_texts(self, classnames: list[str], template: str) -> P.ClassTexts:
        return self.method.class_texts(self.params, classnames, template)

    def text_features(self, texts: P.ClassTexts) -> Array:
        """(C, P) class text features through the teacher's text tower and prompts."""
        return self.method.text_features_jit(self.prompts, self.params, texts)

    def image_features(self, images: Array) -> Array:
        """(B, P) image features of test-transformed images as the teacher scores them (its image adapter too)."""
        return _teacher_images(self.method, self.prompts, self.params, images)


@functools.partial(jax.jit, static_argnums=0)
def _teacher_images(method: Method, prompts: P.Tree, params: Any, images: Array) -> Array:
    from aple_jax.adapter import apply_adapter
    images = apply_adapter(images, method.adapter) if method.adapter_test else images
    return method.image_features(prompts, params, images)


def check_teacher_method(method: Method, source: str) -> None:
    """A teacher must score classes as cosine logits of one image feature and one text feature per class."""
    if method.per_image_text or type(method).eval_logits is not Method.eval_logits:
        raise ConfigError(f"kd.teacher={source!r} is a {method.name} run, whose test logits are not the cosine of "
                          f"one image and one class text feature; a teacher must be one of coop, kgcoop, maple, "
                          f"ivlp, promptsrc, aple, clip_lora, mma, zeroshot")


def load_teacher_config(spec: str) -> ml_collections.ConfigDict:
    """`configs/<method>.py:arguments`, a relative path found from the working directory or the project root."""
    path, sep, arg = spec.partition(":")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isabs(path) and not os.path.isfile(path) and os.path.isfile(os.path.join(root, path)):
        path = os.path.join(root, path)
    return config_files.load_config(path + sep + arg)


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config that trains the run's teacher: `kd.teacher_config` on the run's dataset, with the labels of its
    base classes (base-to-novel) or of all its classes (the source of a transfer run)."""
    if not config.kd.teacher_config:
        raise ConfigError("kd.teacher and kd.teacher_config are both empty; expected a teacher run directory or "
                          "checkpoint (kd.teacher=...) or the config that trains one (kd.teacher_config=...)")
    c = load_teacher_config(config.kd.teacher_config)
    with c.unlocked():
        c.dataset.name, c.dataset.root = config.dataset.name, config.dataset.root
        c.setting = "base2new" if config.setting == "base2new" else "all"   # labels of the base / source classes
        c.pack_seeds, c.progress = "", config.progress
    return c


def no_teacher(what: str) -> ConfigError:
    """The error of a student evaluated without the teacher it was distilled from."""
    return ConfigError(f"{what}: a PromptKD student scores images against its teacher's class text features, and "
                       f"kd.teacher is empty; give the teacher it was distilled from: kd.teacher=<its run directory>, "
                       f"or an official teacher checkpoint with kd.teacher_config=<its method and CLIP>",
                       hint="e.g. teacher=teacher_model/OxfordPets/VLPromptLearner/model-best.pth.tar "
                            "--config.kd.teacher_config=configs/promptsrc.py:backbone=ViT-L/14,weights=/path/ViT-L-14 "
                            "(docs/migrating.md, PromptKD)")


def prepare(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The run's config with `kd.teacher` set: the given teacher, or `<workdir>/teacher` trained now (resumed when
    it is under way, reused when it is finished); an evaluation of trained prompts uses the teacher they record (a
    run of ours) or must name it (an official file)."""
    if config.kd.teacher:
        return config
    teacher_spec = config.kd.teacher_config
    if config.eval_only_from:   # a new teacher is not the one the student learned from: the recorded one, or none
        directory, recorded_spec = recorded_teacher(config.eval_only_from)
        if not directory:
            raise no_teacher(f"eval_only_from={config.eval_only_from!r}")
        teacher_spec = teacher_spec or recorded_spec
        print(f"kd.teacher={directory} (the teacher recorded by eval_only_from)", flush=True)
    else:
        directory = str(paths.join(workdir, TEACHER_DIR))
        from aple_jax.run import run
        print(f"training the teacher ({config.kd.teacher_config}) in {directory}", flush=True)
        run(teacher_config(config), directory)
    out = config.copy_and_resolve_references()
    with out.unlocked():
        out.kd.teacher, out.kd.teacher_config = directory, teacher_spec
    return out


def recorded_teacher(source: str) -> tuple[str, str]:
    """(kd.teacher, kd.teacher_config) of the run a student of ours came from, as its run directory or prompts file
    records them; empty for an official file or a record without them."""
    kd = ((prompt_files.source_meta(source) or {}).get("run_config") or {}).get("kd", {})
    return str(kd.get("teacher", "")), str(kd.get("teacher_config", ""))


def prepare_seeds(jobs: list[tuple[ml_collections.ConfigDict, str]]) -> list[tuple[ml_collections.ConfigDict, str]]:
    """Packed seeds of a sweep, each `(config, <folder>/seed<s>)`: a distilled run's teacher trained once into
    `<folder>/teacher` (where a packed `run` puts it) and named in every seed's config; other runs unchanged."""
    config = jobs[0][0]
    if "kd" not in config or config.kd.teacher:
        return jobs
    folders = {os.path.dirname(str(workdir).rstrip("/")) for _, workdir in jobs}
    if len(folders) != 1:
        raise ConfigError(f"packed seeds of a distilled run share one teacher, so their run directories must share "
                          f"one folder; got {sorted(folders)}")
    teacher = prepare(config, folders.pop()).kd.teacher
    out = []
    for c, workdir in jobs:
        c = c.copy_and_resolve_references()
        with c.unlocked():
            c.kd.teacher = teacher
        out.append((c, workdir))
    return out


def load_teacher(config: ml_collections.ConfigDict) -> Teacher:
    """The frozen teacher named by `kd.teacher` (a run directory of ours or an official checkpoint)."""
    source = config.kd.teacher
    if not source:
        raise no_teacher("this PromptKD config")
    path = paths.as_path(source)
    if interop.is_official_checkpoint(path):
        tcfg = load_teacher_config(config.kd.teacher_config) if config.kd.teacher_config else None
        if tcfg is None:
            raise ConfigError(f"kd.teacher={source!r} is an official checkpoint; kd.teacher_config must say its "
                              f"method and CLIP (configs/promptsrc.py:backbone=ViT-L/14,weights=/path/ViT-L-14)")
        method, params = _build(tcfg)
        like = method.init(jax.random.key(0), params, [])
        prompts = interop.load_prompts(path, method, like)
    else:
        if not (path / "config.json").exists() or not (path / "prompts.npz").exists():
            raise ConfigError(f"kd.teacher={source!r} is not a finished run directory (config.json and prompts.npz) "
                              f"nor an official checkpoint file")
        saved = paths.read_json(path / "config.json")
        saved.pop("environment", None)
        tcfg = ml_collections.ConfigDict(saved)
        method, params = _build(tcfg)
        names = paths.read_json(path / "classnames.json")["classnames"] if (path / "classnames.json").exists() else []
        prompts = prompt_files.read_prompts(path / "prompts.npz", method.init(jax.random.key(0), params, names))
    check_teacher_method(method, source)
    return Teacher(method, prompts, params, source)


def _build(tcfg: ml_collections.ConfigDict) -> tuple[Method, Any]:
    from aple_jax.methods import build_method
    b = tcfg.backbone
    backbone, params, tokenizer = load_backbone(b.name, b.weights, b.tokenizer, b.dtype)
    return build_method(tcfg, backbone, tokenizer), params


def teacher_summary(source: str) -> dict[str, Any]:
    """What a student's results.json says of its teacher: where it came from and, for a run of ours, its method,
    CLIP and its own test accuracy."""
    path = paths.as_path(source)
    results = path / "results.json"
    if not path.is_dir() or not results.exists():
        return {"source": str(source)}
    r = paths.read_json(results)
    out = {"source": str(source), "method": r["method"], "backbone": r["config"]["backbone"]["weights"]
           or r["backbone"], "accuracy": r["accuracy"]}
    if "hm" in r:
        out["hm"] = r["hm"]
    return out
