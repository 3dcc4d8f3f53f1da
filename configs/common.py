"""Shared config pieces and big_vision-style argument parsing: `configs/aple.py:dataset=OxfordPets,seed=2`."""
from __future__ import annotations

from typing import Any

import ml_collections

from aple_jax.errors import ConfigError, did_you_mean

SETTINGS = ("base2new", "all", "transfer")
IMAGENET_VARIANTS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
CROSS_DATASET_TARGETS = ("Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101", "FGVCAircraft",
                         "SUN397", "DTD", "EuroSAT", "UCF101")

# Arguments every config accepts after the colon; each maps to a config field.
COMMON_ARGS = dict(dataset="", seed=0, seeds="", shots=-1, backbone="", weights="", tokenizer="", data="", setting="",
                   plugin="", demo=False, world=False, tiny=False, xd=False, dg=False, fewshot=False)
# The world preset keeps every method's recipe and scales all epoch counts by this one factor: the largest multiple
# of 0.2 whose base-to-novel sweep over the suite fits about 90 minutes on 2 CPU cores. Run one after another, 0.4's
# took 62 and 0.6's 80; two jobs side by side (`sweep --jobs 2`, one core each) are 1.6 times as fast on long runs
# (docs/performance.md), and 1.0, the recipes at full length, fits (84.6 minutes, docs/world.md): CoOp 200 epochs,
# KgCoOp 100, IVLP and PromptSRC 20, CoCoOp 10, MaPLe 5, APLe 5+5+5.
WORLD_EPOCH_SCALE = 1.0
# Recipes whose budget is a step count (CLIP-LoRA's 500 x shots, 2SFS's 300 x shots iterations at batch 32) are not
# reached by the epoch factor; under the world preset their steps per shot x this factor (docs/world.md): the largest
# of 0.05, 0.1, ... that keeps the four new methods' base-to-novel sweep within about 45 minutes on 2 CPU cores.
WORLD_ITERATION_SCALE = 0.05
# The larger world CLIPs (`world-large`, `world-xl`: 8 vision blocks): prompts in at most 6 of them, 3/4 of the tower
# as 9 of ViT-B's 12 (the shipped CLIP's 4 blocks take 3); their text towers have the shipped 4 blocks and keep 3.
WORLD_LARGE_VISION_DEPTH = 6
WORLD_LARGE_BACKBONES = ("world-large", "world-xl")
# Epoch-end checkpoints at least this many steps apart under the world preset and the step-budget recipes: a recipe
# of thousands of steps over a few-shot split of a dozen steps per epoch would otherwise save hundreds.
CHECKPOINT_MIN_STEPS = 500
WORLD_DEFAULT_DATASET = "world:WorldScenes-Invert"   # the README's demo: room to learn (docs/world.md)
# `:demo` = `:world` with these seeds packed in one program, so that its headline is a mean with its spread, not one
# seed; `:demo,seed=N` (and sweeps, which pass seed=N) run one seed, `:demo,seeds=...` others.
DEMO_SEEDS = "1,2,3"
# `:world,xd` / `:world,dg`: as ImageNet in the field, one source for both: the suite dataset with the largest class
# set and, among those, the most room (docs/world.md). Cross-dataset targets: the other families under the same camera
# shift; domain generalisation: the source's classes clean and under every other shift.
WORLD_TRANSFER_SOURCE = "world:WorldScenes-Tint"
WORLD_XD_TARGETS = tuple(f"world:{family}-Tint" for family in ("WorldObjects", "WorldCounts", "WorldSizes",
                                                               "WorldPlaces", "WorldShapes", "WorldTextures"))
WORLD_DG_TARGETS = ("world:WorldScenes",) + tuple(f"world:WorldScenes-{shift}"
                                                  for shift in ("Dim", "Blur", "Noise", "Sketch", "Invert", "Swap"))


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
    """`"a=1,b=x,flag"` -> typed fields from `spec`'s defaults; a bare key sets a bool to True; unknown keys raise."""
    out = dict(spec)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in spec:
            raise ConfigError(f"unknown config argument {key!r} in {arg!r}{did_you_mean(key, sorted(spec))}",
                              hint=f"the arguments after ':' are some of {', '.join(sorted(spec))}")
        default = spec[key]
        if isinstance(default, str) and not value.strip():   # `dataset=` would silently keep the preset's value
            raise ConfigError(f"config argument {key}= in {arg!r} has no value; give one ({key}=...) or leave the "
                              "argument out")
        if isinstance(default, bool):
            if value and value.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"config argument {key}={value!r} must be a boolean")
            out[key] = not value or value.lower() in ("true", "1")
        else:
            try:
                out[key] = type(default)(value)
            except ValueError:
                raise ConfigError(f"config argument {key}={value!r}; expected a {type(default).__name__}") from None
    return ml_collections.ConfigDict(out)


def base_config(method: str) -> ml_collections.ConfigDict:
    """Fields shared by every method, at the field's ViT-B/16 base-to-novel defaults."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.tag = ""          # a free label that report.py uses to tell variants of one method apart
    c.plugin = ""       # an addition on top of the method (aple_jax/plugins): "dept", ...; rows "<method>+<plugin>"
    # With a plug-in, the base method's rows printed beside the run's: "train" (the same seeds in <workdir>/base;
    # `:demo` with a plug-in sets it) or a finished run directory of the base method; "": none.
    c.base_run = ""
    c.seed = 1
    c.pack_seeds = ""   # "1,2,3": train these seeds together in one program, each in <workdir>/seed<s>
    c.setting = "base2new"
    c.dataset = ml_collections.ConfigDict(dict(
        name="ImageNet", root="", shots=16, strict_shots=False, num_workers=4, eval_datasets=(), crop_scale=(0.08, 1.0),
        synthetic=dict(num_classes=10, train_per_class=16, test_per_class=8, image_size=32)))
    c.backbone = ml_collections.ConfigDict(dict(name="ViT-B/16", weights="", tokenizer="", dtype="float32",
                                                remat=False))
    c.prompts = ml_collections.ConfigDict(dict(text=dict(n_ctx=4, depth=9, init="a photo of a"),
                                               vision=dict(n_ctx=4, depth=9, init_std=0.02)))
    c.adapter = ml_collections.ConfigDict(dict(enabled=False, sigma=0.05, alpha=0.9, freq_units="normalized",
                                               kernel_norm="peak", apply_train=True, apply_test=True,
                                               teacher_input="fused"))
    # epoch_scale multiplies every phase's epochs (and GPA's mean and std), rounded, at least 1: one factor for all.
    # name: sgd | adam | adamw (a phase may name its own); no_decay: regexes of trained paths without weight decay;
    # schedule: cosine_epoch (Dassl: per epoch, after the warm-up) | cosine_step (per step down to min_lr).
    c.optim = ml_collections.ConfigDict(dict(name="sgd", lr=0.0025, epochs=20, momentum=0.9, weight_decay=5e-4,
                                             betas=(0.9, 0.999), eps=1e-8, no_decay=(), schedule="cosine_epoch",
                                             min_lr=0.0, warmup_epochs=1, warmup_lr=1e-5, epoch_scale=1.0))
    c.loss_weights = ml_collections.ConfigDict(dict(ce=1.0))
    c.kl = ml_collections.ConfigDict(dict(temperature=1.0, direction="zs_p", reduction="sum_over_bc"))
    # The zero-shot teacher of KL/L1 terms. images: "augmented" runs frozen CLIP on each step's augmented batch;
    # "cached" computes each training image's features once, test-transformed, and reuses them every epoch.
    c.teacher = ml_collections.ConfigDict(dict(templates="dataset", ensemble="raw_mean", images="augmented"))
    c.gpa = ml_collections.ConfigDict(dict(enabled=False, mean=15.0, std=1.0))
    # compare: also evaluate frozen zero-shot CLIP (no prompts, no adapter) on the run's test sets, side by side.
    c.zeroshot = ml_collections.ConfigDict(dict(templates="dataset", compare=False))
    c.batch_size = 4
    c.eval_batch_size = 100
    c.log_every = 10
    c.checkpoint_every_steps = 0
    # Epoch-end checkpoints at least this many steps apart (0: every epoch end); a phase's last epoch and a stop
    # signal always save. Recipes of thousands of steps over a tiny few-shot split would otherwise save hundreds.
    c.checkpoint_min_steps = 0
    # Overfitting curves: evaluate after N evenly spaced epochs of each phase, its last included (every epoch when N
    # >= its epochs), into results.json's `history`; 0: evaluate at the end only.
    c.curve_points = 0
    c.eval_only_from = ""
    c.progress = True
    c.progress_every_seconds = 30.0   # without a terminal: a plain progress line this often (and at epoch ends)
    # Multi-host: a coordinator (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or auto=True for
    # JAX's cluster detection on a TPU pod slice or under SLURM / Open MPI.
    c.distributed = ml_collections.ConfigDict(dict(coordinator="", num_processes=0, process_id=-1, auto=False))
    return c


def apply_args(c: ml_collections.ConfigDict, arg: str | None, **extra: Any) -> ml_collections.ConfigDict:
    """Applies the common `:key=value` arguments (and the world, demo or tiny preset) to a config."""
    a = parse_arg(arg, **COMMON_ARGS, **extra)
    recipe_vision_depth = c.prompts.vision.depth
    if (a.demo or a.world) and a.tiny:
        raise ConfigError(f"config arguments {arg!r}: '{'demo' if a.demo else 'world'}' and 'tiny' are two different "
                          f"presets; pick one")
    if a.demo or a.world:
        apply_world(c)
    if a.tiny:
        apply_tiny(c)
    if (a.xd or a.dg) and (a.demo or a.world):
        c.setting, c.dataset.name = "transfer", WORLD_TRANSFER_SOURCE
        c.dataset.eval_datasets = (WORLD_TRANSFER_SOURCE,) + (WORLD_DG_TARGETS if a.dg else WORLD_XD_TARGETS)
    elif a.xd or a.dg:
        c.setting, c.dataset.name = "transfer", "ImageNet"
        c.dataset.eval_datasets = ("ImageNet",) + (IMAGENET_VARIANTS if a.dg else CROSS_DATASET_TARGETS)
    if a.fewshot:
        c.setting = "all"
    if a.plugin:
        apply_plugin(c, a.plugin)
        if a.demo:
            c.base_run = "train"
    for key, field in (("dataset", "dataset.name"), ("data", "dataset.root"), ("backbone", "backbone.name"),
                       ("weights", "backbone.weights"), ("tokenizer", "backbone.tokenizer"), ("setting", "setting")):
        if a[key]:
            _set(c, field, a[key])
    if (a.demo or a.world) and c.backbone.name in WORLD_LARGE_BACKBONES:
        c.prompts.vision.depth = min(recipe_vision_depth, WORLD_LARGE_VISION_DEPTH)
    if a.seed:
        c.seed = a.seed
    if a.seeds:
        c.pack_seeds = a.seeds.replace("+", ",")
    elif a.demo and not a.seed:
        c.pack_seeds = DEMO_SEEDS
    if a.shots < -1 or (a.shots == -1 and "shots=-1" in (arg or "")):
        raise ConfigError(f"config argument shots={a.shots}; expected an integer >= 1, or 0 for the full training set")
    if a.shots >= 0:
        c.dataset.shots = a.shots
    return c


def apply_plugin(c: ml_collections.ConfigDict, plugin: str) -> None:
    """`plugin=<name>`: the plug-in on, with its settings' section at their defaults (an unknown name is left to
    the config's validation, which names the plug-ins)."""
    from aple_jax import plugins
    c.plugin = plugin
    section = plugins.defaults(plugin)
    if section is not None:
        c[plugin] = section


def apply_world(c: ml_collections.ConfigDict) -> None:
    """The world preset (`:world`; `:demo` is it with seeds DEMO_SEEDS packed): the shipped world CLIP on a world dataset, each method's own recipe
    (batch, lr, losses, prompt lengths) with every epoch count x WORLD_EPOCH_SCALE; prompts in at most 3 of the 4
    layers (as 9 of ViT-B's 12), no warm-up epoch (Dassl's constant epoch at lr 1e-5 would idle a fifth of MaPLe's 5),
    whole images with flips; the run prints zero-shot CLIP's accuracy beside its own."""
    c.backbone.name = "world"
    c.dataset.name = WORLD_DEFAULT_DATASET
    c.dataset.num_workers = 0
    c.dataset.crop_scale = (1.0, 1.0)   # whole 64-px images (and flips): a crop would cut the counted objects away
    c.eval_batch_size = 128
    c.zeroshot.compare = True
    c.prompts.text.depth = min(c.prompts.text.depth, 3)
    c.prompts.vision.depth = min(c.prompts.vision.depth, 3)
    c.optim.epoch_scale = WORLD_EPOCH_SCALE
    c.optim.warmup_epochs = 0
    c.log_every = 20
    c.checkpoint_min_steps = CHECKPOINT_MIN_STEPS


def apply_tiny(c: ml_collections.ConfigDict) -> None:
    """A tiny random CLIP on the synthetic dataset: seconds per run, for tests and smoke runs (numbers mean nothing)."""
    c.backbone.name = "tiny"
    c.dataset.name = "synthetic"
    c.dataset.shots = 16
    c.dataset.num_workers = 0
    c.batch_size = 16
    c.eval_batch_size = 64
    c.prompts.text.depth = min(c.prompts.text.depth, 2)
    c.prompts.vision.depth = min(c.prompts.vision.depth, 2)
    c.optim.lr = 0.05
    c.optim.epochs = 4
    c.optim.warmup_epochs = 0
    c.log_every = 5


def _set(c: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        c = c[p]
    c[last] = value
