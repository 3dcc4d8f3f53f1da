"""One run = method x dataset x seed x setting: data, frozen CLIP, phased training, evaluation, results.json."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from aple_jax import (checkpoint, config_schema, distill, environment, evaluate, interop, paths, plugins,
                      preemption, prompt_files, report_classes, run_lock, selection, sharding, train)
from aple_jax.clip.backbone import check_weights, load_backbone
from aple_jax.data import DatasetSplits, build_dataset
from aple_jax.data.pipeline import eval_loader, train_loader
from aple_jax.data.templates import IMAGENET_TEMPLATES
from aple_jax.errors import CheckpointError, ConfigError, Interrupted
from aple_jax.methods import METHODS, build_method
from aple_jax.methods.base import Method
from aple_jax.methods.zeroshot import ZeroShot, template_text_features
from aple_jax.plugins import base_rows
from aple_jax.metrics import MetricWriter
from aple_jax.plugins import dpc

# Keys that change how a run executes but not what it computes: they may differ when a run resumes.
# (eval_every_epoch is curve_points' former name: run directories whose config.json still holds it resume.)
OPERATIONAL_KEYS = ("dataset.num_workers", "log_every", "progress", "curve_points", "eval_every_epoch",
                    "distributed", "checkpoint_every_steps", "checkpoint_min_steps", "eval_only_from", "pack_seeds",
                    "progress_every_seconds", "base_run")
# config.json's header keys beside the config: the environment that started the run (aple_jax.environment). A run
# resumes in another environment; its results.json records both when they differ.
HEADER_KEYS = ("environment",)
# Keys added after run directories existed, each with the value under which such a run computed what it did: a
# config.json without the key resumes when the current config holds that value.
ADDED_KEYS = {"optim.name": "sgd", "optim.betas": [0.9, 0.999], "optim.eps": 1e-8, "optim.no_decay": [],
              "optim.schedule": "cosine_epoch", "optim.min_lr": 0.0, "plugin": "",
              # MMRL++'s switch and settings (added after MMRL): an MMRL run before them was plain MMRL
              "mmrl.plus": False, "mmrl.beta": 0.9, "mmrl.res_rank": 4, "mmrl.proj_rank": 64}


@dataclasses.dataclass(frozen=True)
class EvalSet:
    name: str
    splits: DatasetSplits


@dataclasses.dataclass(frozen=True)
class Setting:
    """The training split (None for eval-only methods) and the named evaluation sets of a run."""
    train: DatasetSplits | None
    evals: list[EvalSet]


def hm(base: float, new: float) -> float:
    return 2 * base * new / (base + new) if base + new else 0.0


def build_setting(config: ml_collections.ConfigDict) -> Setting:
    """base2new: train on base, test base and new; all: all classes; transfer: train on one, test on others.
    A method that trains on the unlabeled images of every class (`trains_on_all_classes`) trains on all classes'
    training images in base2new too. Every evaluation split must hold images of every class."""
    setting = _build_setting(config)
    for ev in setting.evals:
        ev.splits.check_evaluable(ev.name)
    return setting


def _build_setting(config: ml_collections.ConfigDict) -> Setting:
    d = config.dataset
    common = dict(seed=config.seed, strict_shots=d.strict_shots, **d.synthetic.to_dict())
    if config.setting == "base2new":
        base = build_dataset(d.name, d.root, shots=d.shots, subsample="base", **common)
        new = build_dataset(d.name, d.root, shots=d.shots, subsample="new", **common)
        train_split = base
        if getattr(METHODS.get(config.method), "trains_on_all_classes", False):
            train_split = build_dataset(d.name, d.root, shots=d.shots, subsample="all", **common)
        return Setting(train_split, [EvalSet("base", base), EvalSet("new", new)])
    if config.setting == "all":
        data = build_dataset(d.name, d.root, shots=d.shots, subsample="all", **common)
        return Setting(data, [EvalSet("all", data)])
    if config.setting == "transfer":
        source = build_dataset(d.name, d.root, shots=d.shots, subsample="all", **common)
        targets = [EvalSet(t, source if t == d.name else build_dataset(t, d.root, shots=0, subsample="all",
                                                                       **common))
                   for t in (d.eval_datasets or (d.name,))]
        return Setting(source, targets)
    raise ConfigError(f"setting={config.setting!r}; expected 'base2new', 'all' or 'transfer'")


def check_workdir_config(workdir: paths.PathLike, config: ml_collections.ConfigDict, write: bool = True) -> None:
    """Writes config.json (if `write`: process 0 of a multi-host run), or refuses to resume a run directory made
    by another config."""
    path = paths.join(workdir, "config.json")
    current = _comparable(config.to_dict())
    if path.exists():
        hint = f"delete {path}: rerunning the command that made this run writes it again and resumes"
        saved = _comparable(paths.read_json(path, hint=hint))
        saved.update({k: v for k, v in ADDED_KEYS.items() if k not in saved and k in current})
        diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if diff:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:10])
            raise ConfigError(f"run directory {workdir} was made by another config ({details})",
                              hint="use a new --workdir, or the same config to resume")
        return
    if write:
        paths.write_json_atomic(path, {**json.loads(config.to_json()),
                                       "environment": environment.collect(config.backbone.dtype)})


def _comparable(tree: dict[str, Any]) -> dict[str, Any]:
    """The config as flat keys, without the OPERATIONAL_KEYS and HEADER_KEYS."""
    return {k: v for k, v in prompt_files.flatten_config(tree).items()
            if not any(k == op or k.startswith(op + ".") for op in OPERATIONAL_KEYS + HEADER_KEYS)}


def started_environment(workdir: paths.PathLike) -> dict[str, Any] | None:
    """The environment config.json recorded when the run began (None for run directories made before that)."""
    path = paths.join(workdir, "config.json")
    return paths.read_json(path).get("environment") if path.exists() else None


def teacher_text_features(method: Method, config: ml_collections.ConfigDict, clip_params: Any,
                          splits: DatasetSplits) -> Any:
    """The frozen zero-shot text features that teach KL/L1/cosine terms, computed once per dataset."""
    options = {"dataset": [splits.template], "photo": ["a photo of a {}."], "ensemble": list(IMAGENET_TEMPLATES)}
    if config.teacher.templates not in options:
        raise ValueError(f"teacher.templates={config.teacher.templates!r}; expected one of {sorted(options)}")
    return template_text_features(method.backbone, clip_params, method.tokenizer, list(splits.classnames),
                                  options[config.teacher.templates], config.teacher.ensemble)


def teacher_image_features(method: Method, config: ml_collections.ConfigDict, clip_params: Any,
                           splits: DatasetSplits, mesh: Any, image_size: int) -> Any:
    """The zero-shot teacher's (N, P) image features of every training example, test-transformed (and filtered
    when the teacher sees the adapter's output), computed once per dataset for `teacher.images = "cached"`."""
    batches = eval_loader(splits.train, global_batch_size=config.eval_batch_size, image_size=image_size, mesh=mesh,
                          num_workers=config.dataset.num_workers)
    return evaluate.dataset_image_features(method, clip_params, batches, len(splits.train), mesh,
                                           adapter=method.teacher_sees_adapter)


def run(config: ml_collections.ConfigDict, workdir: str, stop_at_step: int | None = None) -> Any:
    """Trains (resuming if the run directory has checkpoints) and evaluates; returns and writes results.json.

    With `config.pack_seeds` ("1,2,3") the seeds train together in one program sharing the frozen CLIP, each
    in `workdir/seed<s>` with a lone run's config, data and initial prompts (equal to a lone run up to rounding: the
    batched program sums in another order); the results come back as a list.
    """
    config_schema.validate(config)   # before any weights, data or run directory is touched
    paths.check_dir(workdir, "--workdir")
    with paths.faults_named(workdir, "run in"):     # names the run for a storage fault no write site named
        if "kd" in config:   # a distilled run: its teacher first (trained into <workdir>/teacher when none is given)
            config = distill.prepare(config, workdir)
        base = base_method_results(config, workdir, stop_at_step)
        config = dpc.stage1_from_base_run(config, workdir)
        if not config.pack_seeds:
            results = run_seeds([(config, workdir)], stop_at_step)
        else:
            results = run_seeds([(seed_config(config, s), str(paths.join(workdir, f"seed{s}")))
                                 for s in base_rows.seeds(config)], stop_at_step)
        if base is not None:   # beside each seed's own results, not in its results.json
            results = [{**r, "base_method": b} for r, b in zip(results, base)]
        return results if config.pack_seeds else results[0]


def base_method_results(config: ml_collections.ConfigDict, workdir: str,
                        stop_at_step: int | None) -> list[dict[str, Any]] | None:
    """With a plug-in and `base_run`, each seed's results of the base method (base_rows): trained first in
    `<workdir>/base`, or read from a finished run directory; None otherwise."""
    source = config.get("base_run", "")
    if not (source and config.plugin):
        return None
    if source != base_rows.TRAIN:
        return base_rows.read(config, source)
    results = run(base_rows.base_config(config), str(paths.join(workdir, "base")), stop_at_step)
    return results if isinstance(results, list) else [results]


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The config of one seed of a packed run: the same as a lone run of that seed."""
    out = config.copy_and_resolve_references()
    with out.unlocked():
        out.seed, out.pack_seeds = seed, ""
    return out


@dataclasses.dataclass
class SeedJob:
    config: ml_collections.ConfigDict
    workdir: str
    setting: Setting
    prompts: Any
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def run_seeds(jobs: list[tuple[ml_collections.ConfigDict, str]], stop_at_step: int | None = None) -> list[Any]:
    """Runs configs that differ only in their seed (one program for all when training), skipping finished ones."""
    dist = jobs[0][0].distributed
    sharding.maybe_initialize_distributed(dist.coordinator or None, dist.num_processes or None,
                                          dist.process_id if dist.process_id >= 0 else None, dist.get("auto", False))
    with preemption.handle_signals():
        try:
            return _run_seeds(jobs, stop_at_step)
        except Interrupted as e:
            e.where = tuple(str(w) for _, w in jobs)
            raise


def _run_seeds(jobs: list[tuple[ml_collections.ConfigDict, str]], stop_at_step: int | None) -> list[Any]:
    for _, workdir in jobs:
        paths.make_dirs(workdir)
    with run_lock.hold([workdir for _, workdir in jobs]):   # before anything is written there
        results: dict[str, Any] = {}
        pending = []
        for config, workdir in jobs:
            check_workdir_config(workdir, config, write=jax.process_index() == 0)
            path = paths.join(workdir, "results.json")
            if path.exists():
                results[workdir] = paths.read_json(path, hint=f"delete {path} to evaluate the run again")
            else:
                pending.append((config, workdir))
        if pending:
            results.update(_run_pending(pending, stop_at_step))
    return [results[workdir] for _, workdir in jobs]


def _run_pending(pending, stop_at_step) -> dict[str, Any]:
    config = pending[0][0]
    devices = sharding.data_devices(config.batch_size)
    mesh = sharding.make_mesh(devices)
    note = sharding.describe_data_devices(devices, config.batch_size)
    if note and jax.process_index() == 0:
        print(note, flush=True)
    t0 = time.time()
    check_weights(config.backbone.name, config.backbone.weights)
    settings = [build_setting(c) for c, _ in pending]   # data mistakes show before the weights load
    for (c, _), setting in zip(pending, settings):
        if c.eval_only_from:
            check_trained_run(c.eval_only_from, c, setting)
        if c.get("plugin") == "dpc":
            base = next((ev.splits for ev in setting.evals if ev.name == "base"), None)
            dpc.check_stage1_run(c, base.name if base else None, list(base.classnames) if base else None)
    backbone, clip_params, tokenizer = load_backbone(config.backbone.name, config.backbone.weights,
                                                     config.backbone.tokenizer, config.backbone.dtype,
                                                     config.backbone.remat)
    clip_params = sharding.replicate(clip_params, mesh)
    method = build_method(config, backbone, tokenizer)
    per_epoch = {train.steps_per_epoch(len(s.train.train), config.batch_size) for s in settings if s.train is not None}
    phases = train.scale_phases(train.resolve_iterations(method.phases(), max(per_epoch, default=1)),
                                config.optim.epoch_scale)
    reference = zero_shot_reference(config, backbone, tokenizer) if config.zeroshot.compare and phases else None
    evaluators = [method] + ([reference] if reference is not None else [])
    for setting in settings:   # every evaluation class name fits the text context: checked before training
        check_eval_texts(evaluators, setting)
    jobs = [SeedJob(c, w, setting, method.init(jax.random.key(c.seed), clip_params, _train_classes(setting)))
            for (c, w), setting in zip(pending, settings)]
    if isinstance(method, dpc.DPC):   # stage 1 from a finished run: each seed its own prompts
        for job in jobs:
            job.prompts = method.with_stage1_run(job.prompts, job.config)
    for job in jobs if jax.process_index() == 0 else ():
        print(f"seed {job.config.seed}: {job.setting.train.summary()}", flush=True)
    image_size = backbone.cfg.image_resolution
    compilations: dict[str, int] = {}

    eval_steps: dict[tuple[int, str], Any] = {}   # one compiled evaluation step per model and split, for all seeds

    def evaluate_all(job: SeedJob, p: Any, model: Method = method, only: str = "") -> dict[str, evaluate.EvalResult]:
        out = {}
        for ev in job.setting.evals:
            if only and ev.name != only:
                continue
            batches = eval_loader(ev.splits.test, global_batch_size=config.eval_batch_size, image_size=image_size,
                                  mesh=mesh, num_workers=config.dataset.num_workers)
            step = eval_steps.setdefault((id(model), ev.name), evaluate.make_eval_step(model, ev.name))
            out[ev.name] = evaluate.evaluate_batches(model, p, clip_params, list(ev.splits.classnames),
                                                     ev.splits.template, batches, step, split=ev.name)
        return out

    if config.eval_only_from:
        final = [load_trained_prompts(config.eval_only_from, method, phases, job.prompts) for job in jobs]
    elif phases:
        final = _train(jobs, method, phases, clip_params, mesh, image_size, stop_at_step, evaluate_all,
                       compilations)
        final = [selection.chosen(job.workdir, p) if method.select_by else p for job, p in zip(jobs, final)]
    else:
        final = [job.prompts for job in jobs]
    results = {}
    for job, prompts in zip(jobs, final):
        if jax.process_index() == 0 and phases:
            prompt_files.save_prompts(paths.join(job.workdir, "prompts.npz"), prompts)
        evals = evaluate_all(job, prompts)
        results[job.workdir] = _results(job.config, job.setting, {k: v.to_json() for k, v in evals.items()},
                                        job.history, compilations, time.time() - t0, len(jobs), schedule(job, phases),
                                        started_environment(job.workdir))
        results[job.workdir]["transductive"] = is_transductive(method, job.setting)
        if method.select_by and phases and not config.eval_only_from:
            results[job.workdir]["selected"] = selection.record(job.workdir, method.select_by)
        if "kd" in config:
            results[job.workdir]["kd_teacher"] = distill.teacher_summary(config.kd.teacher)
        if reference is not None:
            zero_shot = evaluate_all(job, {}, reference)
            results[job.workdir]["zero_shot"] = {"accuracy": {k: v.accuracy for k, v in zero_shot.items()},
                                                 "evals": {k: v.to_json() for k, v in zero_shot.items()}}
            evals.update((report_classes.ZERO_SHOT_PREFIX + k, v) for k, v in zero_shot.items())
        if jax.process_index() == 0:
            report_classes.save_confusions(job.workdir, evals)
            paths.write_json_atomic(paths.join(job.workdir, "results.json"), results[job.workdir])
    return results


def _train(jobs: list[SeedJob], method, phases, clip_params, mesh, image_size, stop_at_step, evaluate_all,
           compilations) -> list[Any]:
    config = jobs[0].config
    names = {tuple(job.setting.train.classnames) for job in jobs}
    if len(names) != 1:
        raise ValueError("packed seeds must train on the same class names; run them separately")
    train_split = jobs[0].setting.train
    texts = method.class_texts(clip_params, list(train_split.classnames), train_split.template)
    for job in jobs:
        if jax.process_index() == 0:
            paths.write_json_atomic(paths.join(job.workdir, "classnames.json"),
                                    {"dataset": train_split.name, "classnames": list(train_split.classnames)}, indent=1)
    plans = [train.plan_phase(method, ph, jobs[0].prompts) for ph in phases]   # checks every phase first
    needs_teacher = any(plan.needs_teacher_text for plan in plans)
    teacher = teacher_text_features(method, config, clip_params, train_split) if needs_teacher else None
    teacher_images = None
    if any(plan.teacher_image_cached for plan in plans):
        if jax.process_index() == 0:
            print(f"teacher.images=cached: the teacher's image features of {len(train_split.train)} training images "
                  f"per seed, once", flush=True)
        teacher_images = _same_length([teacher_image_features(method, config, clip_params, job.setting.train, mesh,
                                                              image_size) for job in jobs])
    train_images = None
    if method.needs_train_images:
        train_images = _same_shapes([train_image_cache(config, job.setting.train, mesh, image_size) for job in jobs])
    seeds = [_seed_run(job, phases, mesh, image_size, evaluate_all, method.select_by) for job in jobs]
    ctx = train.FitContext(mesh, clip_params, texts, teacher, config.optim, seeds, config.log_every,
                           config.checkpoint_every_steps, config.checkpoint_min_steps, stop_at_step,
                           compilations, teacher_images, train_images)
    try:
        prompts = train.fit(method, phases, [job.prompts for job in jobs], ctx)
    except BaseException:
        for seed in seeds:        # the error in flight is the one to report: a full disk fails these too
            seed.writer.abandon()
            with contextlib.suppress(Exception):
                seed.checkpoints.close()
        raise
    for seed in seeds:
        seed.writer.close()
        seed.checkpoints.close()
    return prompts


def train_image_cache(config: ml_collections.ConfigDict, splits: DatasetSplits, mesh: Any,
                      image_size: int) -> dict[str, Any]:
    """The training images, test-transformed, on device as float16 "images" (N, S, S, 3) with their classes'
    index table ("members" (C, W), "counts" (C,)): what DPC's hard negatives are drawn from, loaded once."""
    batches = eval_loader(splits.train, global_batch_size=config.eval_batch_size, image_size=image_size, mesh=mesh,
                          num_workers=config.dataset.num_workers)
    images, labels = [], []
    for batch in batches:
        images.append(batch["image"].astype(jax.numpy.float16))
        labels.append(jax.device_get(batch["label"]))
    n = len(splits.train)
    members, counts = dpc.image_table(np.concatenate(labels)[:n], len(splits.classnames))
    return {"images": jax.numpy.concatenate(images)[:n], "members": members, "counts": counts}


def _same_shapes(trees: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-seed constants zero-padded to one shape per key, so that packed seeds stack them (indices never reach the
    pad)."""
    out = [dict(t) for t in trees]
    for key in trees[0]:
        shape = np.max([np.shape(t[key]) for t in trees], axis=0)
        for t in out:
            pad = [(0, int(s) - d) for s, d in zip(shape, np.shape(t[key]))]
            t[key] = t[key] if not any(p for _, p in pad) else jax.numpy.pad(t[key], pad)
    return out


def _train_classes(setting: Setting) -> list[str]:
    """The training classes (a tree with a row per class is built for them), or the first evaluation set's."""
    splits = setting.train if setting.train is not None else setting.evals[0].splits
    return list(splits.classnames)


def _same_length(caches: list[Any]) -> list[Any]:
    """Per-seed caches zero-padded to one length, so that packed seeds stack them (indices never reach the pad)."""
    n = max(c.shape[0] for c in caches)
    return [c if c.shape[0] == n else jax.numpy.pad(c, ((0, n - c.shape[0]), (0, 0))) for c in caches]


def _seed_run(job: SeedJob, phases, mesh, image_size, evaluate_all, select_by: str = "") -> train.SeedRun:
    """`select_by`: the evaluation set whose accuracy after every epoch picks the final prompts ("": the last)."""
    config, split = job.config, job.setting.train

    def make_loader(phase_index: int):
        return train_loader(split.train, global_batch_size=config.batch_size, image_size=image_size,
                            seed=config.seed * 1000 + phase_index, mesh=mesh, num_workers=config.dataset.num_workers,
                            crop_scale=tuple(config.dataset.crop_scale))

    per_epoch = train.steps_per_epoch(len(split.train), config.batch_size)
    writer = MetricWriter(job.workdir, sum(p.epochs for p in phases) * per_epoch, progress=config.progress,
                          progress_every_seconds=config.progress_every_seconds)

    curve = {p.name: curve_epochs(p.epochs, config.curve_points) for p in phases}

    def on_epoch_end(phase: str, epoch: int, prompts: Any, step: int) -> None:
        if select_by:
            accuracy = evaluate_all(job, prompts, only=select_by)[select_by].accuracy
            selection.update(job.workdir, select_by, phase, epoch, step, accuracy, prompts)
        if epoch in curve[phase]:
            accs = {k: v.accuracy for k, v in evaluate_all(job, prompts).items()}
            job.history.append({"phase": phase, "epoch": epoch, "step": step, **accs})
            writer.write(step, {"phase": "eval", **{f"{k}_accuracy": v for k, v in accs.items()}})

    return train.SeedRun(make_loader, checkpoint.RunCheckpoints(job.workdir), writer, on_epoch_end, config.seed)


def curve_epochs(epochs: int, points: int) -> set[int]:
    """The epochs (from 1) after which an overfitting curve evaluates: every ceil(epochs / points)-th and the last."""
    if points <= 0:
        return set()
    stride = -(-epochs // points)
    return set(range(stride, epochs + 1, stride)) | {epochs}


def check_trained_run(source: str, config: ml_collections.ConfigDict, setting: Setting) -> None:
    """Refuses prompts (a run directory or a prompts file) trained for another method, backbone or prompt shape,
    or for other base classes (all classes for a method that trains on every class's images); a file written before
    provenance existed is not checked."""
    base = next((ev.splits for ev in setting.evals if ev.name == "base"), None)
    if getattr(METHODS.get(config.method), "trains_on_all_classes", False) and base is not None:
        base = setting.train   # PromptKD: its prompts recorded the base and new classes they saw
    prompt_files.check_provenance(source, prompt_files.source_meta(source), config,
                                  base.name if base else None, list(base.classnames) if base else None)


def load_trained_prompts(source: str, method: Method, phases: list, prompts_like: Any) -> Any:
    """The final prompts of a run directory, a prompts file or an official checkpoint (eval-only mode)."""
    source = paths.as_path(source)
    if interop.is_official_checkpoint(source):
        return interop.load_prompts(source, method, prompts_like)
    if not source.is_dir():
        return prompt_files.read_prompts(source, prompts_like)
    if (source / "prompts.npz").exists():
        return prompt_files.read_prompts(source / "prompts.npz", prompts_like)
    def like(meta: dict[str, Any]) -> Any:
        phase = phases[meta["phase"]]
        plan = train.plan_phase(method, phase, prompts_like)
        tx = train.make_optimizer(phase, plan.selection.labels(prompts_like), 1, method.config.optim)
        rng = jax.random.key(0) if method.needs_rng else None   # the structure only: the saved key comes back
        return train.init_state(prompts_like, tx, phase.gpa is not None, rng)

    with checkpoint.RunCheckpoints(source) as ckpt:   # a broken newest checkpoint: warned, left, the older one used
        restored = ckpt.restore_newest(like, delete=False)
        if restored is None:
            raise CheckpointError(f"eval_only_from={str(source)!r} holds no prompts.npz and no checkpoint under "
                                  f"{ckpt.directory}")
    _, meta, state = restored
    phase = phases[meta["phase"]]
    return train.final_prompts(phase, state) if meta["epoch"] >= phase.epochs else state.prompts


def is_transductive(method: Method, setting: Setting) -> bool:
    """Whether the run saw unlabeled images of classes it is tested on: a method that trains on the unlabeled
    images of every class, tested on a set sharing a class with its training split."""
    if not method.trains_on_all_classes or setting.train is None:
        return False
    seen = set(setting.train.classnames)
    return any(ev.splits.name == setting.train.name and seen & set(ev.splits.classnames) for ev in setting.evals)


def _num_train_images(config, setting) -> int:
    """The training examples this run's prompts were fitted on (after few-shot sampling); 0 when it trains none."""
    if setting.train is None or config.eval_only_from or METHODS.get(config.method) is ZeroShot:
        return 0
    return len(setting.train.train)


def check_eval_texts(methods: list[Method], setting: Setting) -> None:
    """Refuses evaluation class names whose texts (each method's prompts or templates) overflow the text context."""
    for ev in setting.evals:
        for method in methods:
            texts = method.eval_texts(list(ev.splits.classnames), ev.splits.template)
            try:
                method.tokenizer.tokenize(texts, method.backbone.cfg.context_length)
            except ConfigError as e:
                raise ConfigError(f"{ev.splits.name}, {ev.name} classes: {e}", hint=e.hint) from None


def zero_shot_reference(config: ml_collections.ConfigDict, backbone: Any, tokenizer: Any) -> ZeroShot:
    """Frozen CLIP with the run's zero-shot templates, no prompts and no adapter: the row a trained run is put beside."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.method, c.adapter.enabled = "zeroshot", False
    return ZeroShot(c, backbone, tokenizer)


def schedule(job: SeedJob, phases: list) -> list[dict[str, Any]]:
    """Each phase's epochs and optimizer steps in this run (none when it only evaluates)."""
    if job.config.eval_only_from or job.setting.train is None:
        return []
    per_epoch = train.steps_per_epoch(len(job.setting.train.train), job.config.batch_size)
    return [{"phase": p.name, "epochs": p.epochs, "steps": p.epochs * per_epoch} for p in phases]


def _results(config, setting, evals, history, compilations, seconds, packed_seeds, schedule_rows,
             started: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.json; `started` is the environment that began the run (config.json's header)."""
    out: dict[str, Any] = {
        "method": plugins.method_name(config), "dataset": setting.train.name if setting.train else config.dataset.name,
        "setting": config.setting, "seed": config.seed, "shots": config.dataset.shots,
        "backbone": config.backbone.name, "evals": evals,
        "accuracy": {k: v["accuracy"] for k, v in evals.items()},
        "tag": config.tag, "prompt_length": {"text": config.prompts.text.n_ctx, "vision": config.prompts.vision.n_ctx},
        "num_train_images": _num_train_images(config, setting),
        "history": history, "compilations": compilations, "seconds": round(seconds, 1), "schedule": schedule_rows,
        "steps": sum(row["steps"] for row in schedule_rows),
        "num_devices": jax.device_count(), "packed_seeds": packed_seeds, "config": json.loads(config.to_json()),
        **environment.for_results(config.backbone.dtype, started),
    }
    if "base" in evals and "new" in evals:
        out["hm"] = hm(evals["base"]["accuracy"], evals["new"]["accuracy"])
    return out
