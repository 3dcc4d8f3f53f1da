"""Phased training: per phase an optax.partition mask from the phase's selection and one jit-compiled step that
differentiates only the selected prompt leaves; per-phase constants (cached class text features, zero-shot teacher
features) are computed once and passed in."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from aple_jax import losses as L
from aple_jax import preemption
from aple_jax import prompts as P
from aple_jax import sharding
from aple_jax.adapter import apply_adapter
from aple_jax.errors import CheckpointError, Interrupted, TrainingDivergedError
from aple_jax.methods.base import Method, Phase

Array = jax.Array
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine_epoch", "cosine_step")


# ------------------------------------------------------------------------------------------- optimizer, schedule

def epoch_schedule(base_lr: float, epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> optax.Schedule:
    """Dassl's per-epoch cosine after `warmup_epochs` constant epochs at `warmup_lr`, as a function of the epoch."""
    cosine = optax.cosine_decay_schedule(base_lr, decay_steps=epochs)
    if not warmup_epochs:
        return cosine
    return optax.join_schedules([optax.constant_schedule(warmup_lr), cosine], boundaries=[warmup_epochs])


def resolve_iterations(phases: list[Phase], per_epoch: int) -> list[Phase]:
    """Phases whose budget is counted in steps (`Phase.iterations`, CLIP-LoRA's 500 x shots) as the nearest whole
    number of epochs of `per_epoch` steps (at least 1)."""
    return [dataclasses.replace(p, epochs=max(1, round(p.iterations / max(per_epoch, 1))), iterations=0)
            if p.iterations else p for p in phases]


def scale_phases(phases: list[Phase], scale: float) -> list[Phase]:
    """Every phase `scale` times as long: its epochs (and GPA's mean and std, counted in epochs) x `scale`; epochs
    are rounded and at least 1, so that one factor shortens every method's recipe alike."""
    def scaled(p: Phase) -> Phase:
        gpa = None if p.gpa is None else (p.gpa[0] * scale, p.gpa[1] * scale)
        return dataclasses.replace(p, epochs=max(1, round(p.epochs * scale)), gpa=gpa)

    return phases if scale == 1.0 else [scaled(p) for p in phases]


def learning_rate(phase: Phase, steps_per_epoch: int, optim: ml_collections.ConfigDict) -> optax.Schedule:
    """The phase's rate by step: Dassl's per-epoch cosine after its warm-up (`cosine_epoch`), or PyTorch's
    `CosineAnnealingLR` stepped every iteration down to `optim.min_lr` (`cosine_step`, CLIP-LoRA)."""
    schedule = optim.get("schedule", "cosine_epoch")
    if schedule == "cosine_step":
        total, floor = phase.epochs * steps_per_epoch, optim.get("min_lr", 0.0)
        return optax.cosine_decay_schedule(phase.lr, decay_steps=total, alpha=floor / phase.lr)
    if schedule != "cosine_epoch":
        raise ValueError(f"optim.schedule={schedule!r}; expected one of {SCHEDULES}")
    by_epoch = epoch_schedule(phase.lr, phase.epochs, optim.warmup_epochs, optim.warmup_lr)
    return lambda count: by_epoch(count // steps_per_epoch)


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def decay_mask(no_decay: tuple[str, ...]) -> Callable[[P.Tree], P.Tree]:
    """Weight decay on every trained leaf but those whose path fully matches one of the `no_decay` regexes."""
    patterns = [re.compile(p) for p in no_decay]

    def mask(tree: P.Tree) -> P.Tree:
        def decays(path, _) -> bool:
            return not any(p.fullmatch(_path_name(path)) for p in patterns)
        return jax.tree_util.tree_map_with_path(decays, tree)

    return mask


def scale_leaves(lr_scales: tuple[tuple[str, float], ...]) -> optax.GradientTransformation:
    """Each update x the factor of the first `(regex, factor)` whose regex fully matches its leaf's path (else 1):
    a learning rate of their own for those leaves (exact for SGD, Adam and AdamW, whose updates are linear in it)."""
    patterns = [(re.compile(p), factor) for p, factor in lr_scales]

    def factor(path) -> float:
        return next((f for p, f in patterns if p.fullmatch(_path_name(path))), 1.0)

    return optax.stateless(lambda updates, params=None: jax.tree_util.tree_map_with_path(
        lambda path, u: u * factor(path), updates))


def make_optimizer(phase: Phase, labels: P.Tree, steps_per_epoch: int,
                   optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The phase's optimizer on its leaves (the rest get no update and no state): SGD with momentum or Adam, with
    PyTorch-style (coupled) weight decay, or AdamW's decoupled decay; `phase.optimizer` overrides `optim.name`;
    `phase.lr_scales` give some leaves a multiple of the rate (a PyTorch parameter group's lr)."""
    name = phase.optimizer or optim.get("name", "sgd")
    lr = learning_rate(phase, steps_per_epoch, optim)
    mask = decay_mask(tuple(optim.get("no_decay", ())))
    b1, b2 = optim.get("betas", (0.9, 0.999))
    eps = optim.get("eps", 1e-8)
    if name == "sgd":
        inner = optax.chain(optax.add_decayed_weights(optim.weight_decay, mask), optax.sgd(lr, momentum=optim.momentum))
    elif name == "adam":
        inner = optax.chain(optax.add_decayed_weights(optim.weight_decay, mask), optax.adam(lr, b1, b2, eps))
    elif name == "adamw":
        inner = optax.adamw(lr, b1, b2, eps, weight_decay=optim.weight_decay, mask=mask)
    else:
        raise ValueError(f"optimizer {name!r} (phase {phase.name!r}); expected one of {OPTIMIZERS}")
    if phase.lr_scales:
        inner = optax.chain(inner, scale_leaves(phase.lr_scales))
    return optax.partition({"train": inner, "freeze": optax.set_to_zero()}, labels)


# ------------------------------------------------------------------------------------------------------ state

@struct.dataclass
class TrainState:
    prompts: P.Tree
    opt_state: Any
    gpa_sum: P.Tree | None   # running Gaussian-weighted sum of per-epoch prompts (PromptSRC), else None
    finite: Array            # False once any loss or updated prompt was NaN or infinite
    rng: Array | None = None  # raw key data for methods whose training is random (dropout), split every step


def init_state(prompts: P.Tree, tx: optax.GradientTransformation, with_gpa: bool,
               rng: Array | None = None) -> TrainState:
    """`rng`: a typed key, kept as raw key data (checkpointable) for methods with `needs_rng`."""
    gpa_sum = jax.tree.map(jnp.zeros_like, prompts) if with_gpa else None
    key_data = None if rng is None else jax.random.key_data(rng)
    return TrainState(prompts, tx.init(prompts), gpa_sum, jnp.asarray(True), key_data)


def gpa_weights(epochs: int, mean: float, std: float) -> np.ndarray:
    """Gaussian weights over epochs 1..E, normalised to sum to 1."""
    e = np.arange(1, epochs + 1, dtype=np.float64)
    w = np.exp(-0.5 * ((e - mean) / std) ** 2)
    return (w / w.sum()).astype(np.float32)


# ------------------------------------------------------------------------------------------------ phase plan

@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """What a phase's step needs to know beyond the method: its selection and which constants it uses."""
    phase: Phase
    selection: P.Selection
    cache_text: bool        # no text-side leaf trains: class text features are a constant of the phase
    needs_teacher_text: bool
    needs_teacher_image: bool
    teacher_image_cached: bool   # the teacher's image features come from a per-example cache, not a forward


def plan_phase(method: Method, phase: Phase, prompts: P.Tree) -> PhasePlan:
    w = phase.weights
    unknown = sorted(set(w) - set(L.TERMS) - set(method.own_terms))
    if unknown:
        raise ValueError(f"phase {phase.name!r} of {method.name}: unknown loss terms {unknown}; expected some of "
                         f"{L.TERMS + tuple(method.own_terms)}")
    selection = P.select(prompts, phase.train)
    trains_text = any(leaf.startswith(method.text_side) for leaf in selection.leaves)
    own = [need for term, need in method.own_terms.items() if w.get(term)]
    needs_teacher_image = any(w.get(k) for k in ("kl", "l1_image")) or any(n in ("image", "both") for n in own)
    return PhasePlan(
        phase=phase, selection=selection,
        cache_text=not trains_text and not method.per_image_text,
        needs_teacher_text=(any(w.get(k) for k in ("kl", "l1_text", "text_cos"))
                            or any(n in ("text", "both") for n in own)),
        needs_teacher_image=needs_teacher_image,
        teacher_image_cached=needs_teacher_image and method.teacher_images == "cached",
    )


# ------------------------------------------------------------------------------------------------------- step

def make_loss_fn(method: Method, plan: PhasePlan) -> Callable:
    """loss(selected leaves, other leaves, clip params, constants, batch) -> (total, per-term metrics); the metrics
    carry "buffers", the new values of untrained leaves, when the method's `train_outputs` returns them."""
    present, weights = plan.phase.present, plan.phase.weights
    backbone = method.backbone

    def loss_fn(trained, frozen, clip_params, consts, batch, rng=None):
        prompts = P.merge(frozen, trained)
        images = batch["image"]
        student_in = apply_adapter(images, method.adapter) if method.adapter_train else images
        teacher_in = student_in if method.teacher_sees_adapter else images
        own = {"own": consts["own"], "labels": batch["label"]} if "own" in consts else {}
        outputs = method.train_outputs(prompts, clip_params, consts["texts"], student_in, present,
                                       consts.get("text_cache"), rng=rng, **own)
        img, txt = outputs["image"], outputs["text"]
        scale = backbone.logit_scale(clip_params)
        logits = L.cosine_logits(scale, img, txt)
        terms = {"ce": L.cross_entropy(logits, batch["label"])}
        if plan.teacher_image_cached:   # the clean training image's features, by the example's index
            zs_img = consts["teacher_image"][batch["index"]]
        elif plan.needs_teacher_image:
            plain_student = not method.uses_vision_prompts(prompts, present) and teacher_in is student_in
            zs_img = jax.lax.stop_gradient(img) if plain_student else backbone.image(clip_params, teacher_in)
        if "kl" in weights:
            zs_logits = L.cosine_logits(scale, zs_img, consts["teacher_text"])
            terms["kl"] = L.kl_to_zero_shot(logits, zs_logits, method.kl)
        if "l1_text" in weights:
            terms["l1_text"] = L.l1_to_frozen(txt, consts["teacher_text"])
        if "l1_image" in weights:
            terms["l1_image"] = L.l1_to_frozen(img, zs_img)
        if "text_cos" in weights:
            terms["text_cos"] = L.text_cosine(txt, consts["teacher_text"])
        if method.own_terms:
            teacher = {"text": consts.get("teacher_text")}
            if plan.needs_teacher_image:
                teacher["image"] = zs_img
            terms.update(method.own_loss_terms(outputs, logits, batch, teacher, weights))
        total = sum(weights[k] * v for k, v in terms.items() if k in weights)
        accuracy = (jnp.argmax(logits, -1) == batch["label"]).mean()
        metrics = {"loss": total, "accuracy": accuracy, **terms}
        if "buffers" in outputs:   # untrained leaves the forward pass updates (BatchNorm statistics)
            metrics["buffers"] = outputs["buffers"]
        return total, metrics

    return loss_fn


def make_train_step(method: Method, plan: PhasePlan, tx: optax.GradientTransformation,
                    packed: bool = False) -> Callable:
    """The phase's jit-compiled step `(state, clip_params, consts, batch) -> (state, metrics)`; state is donated.

    `packed`: state, constants and batch carry a leading seed axis; the frozen CLIP is shared by all seeds.
    """
    loss_fn = make_loss_fn(method, plan)
    leaves, row_masks = plan.selection.leaves, plan.selection.row_masks

    def step(state: TrainState, clip_params, consts, batch):
        trained, frozen = P.split(state.prompts, leaves)
        rng = next_rng = None
        if state.rng is not None:
            rng, next_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
            next_rng = jax.random.key_data(next_rng)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(trained, frozen, clip_params, consts, batch, rng)
        buffers = metrics.pop("buffers", {})
        if set(buffers) - set(frozen):
            raise ValueError(f"buffers {sorted(set(buffers) - set(frozen))} are not untrained leaves of the tree")
        full_grads = P.merge({p: jnp.zeros_like(v) for p, v in frozen.items()}, grads)
        updates, opt_state = tx.update(full_grads, state.opt_state, state.prompts)
        flat_updates = P.flatten(updates)
        new_trained = {}
        for path, value in trained.items():
            update = flat_updates[path]
            if path in row_masks:   # token-wise selection: only the selected rows move
                update = update * row_masks[path].reshape((-1,) + (1,) * (update.ndim - 1))
            new_trained[path] = value + update
        # The updated prompts too: a step whose loss was finite can still overflow them, and a checkpoint saved
        # right after it would otherwise hold the non-finite prompts.
        finite = state.finite & jnp.isfinite(metrics["loss"])
        for value in new_trained.values():
            finite = finite & jnp.all(jnp.isfinite(value))
        new_state = state.replace(prompts=P.merge(frozen, buffers, new_trained), opt_state=opt_state, finite=finite,
                                  rng=next_rng)
        return new_state, metrics

    if packed:
        step = jax.vmap(step, in_axes=(0, None, 0, 0))
    return jax.jit(step, donate_argnums=(0,))


def accumulate_gpa(state: TrainState, weight: float) -> TrainState:
    """Adds `weight * prompts` to the Gaussian prompt aggregate (trainable leaves only: CLIP is never in here)."""
    gpa_sum = jax.tree.map(lambda s, p: s + weight * p, state.gpa_sum, state.prompts)
    return state.replace(gpa_sum=gpa_sum)


# -------------------------------------------------------------------------------------------- phase constants

def phase_constants(method: Method, plan: PhasePlan, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts,
                    teacher_text: Array | None, teacher_image: Array | None = None,
                    train_images: Mapping[str, Array] | None = None) -> dict[str, Any]:
    """Constants computed once per phase: cached class text features, the zero-shot teacher's text features,
    with `teacher.images = "cached"` its (N, P) image features of the training examples, and the method's own
    (`Method.phase_constants`, under "own")."""
    consts: dict[str, Any] = {"texts": texts}
    if plan.cache_text:
        consts["text_cache"] = method.text_features_jit(prompts, clip_params, texts, plan.phase.present)
    if plan.needs_teacher_text:
        if teacher_text is None:
            raise ValueError(f"phase {plan.phase.name!r} needs zero-shot teacher text features")
        consts["teacher_text"] = teacher_text
    if plan.teacher_image_cached:
        if teacher_image is None:
            raise ValueError(f"phase {plan.phase.name!r} needs the zero-shot teacher's cached image features")
        consts["teacher_image"] = teacher_image
    own = method.phase_constants(plan.phase, prompts, clip_params, texts, train_images)
    if own:
        consts["own"] = own
    return consts


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Drop-last batches per epoch (at least one when there are fewer examples than a batch, as Dassl does)."""
    return max(1, num_examples // batch_size) if num_examples else 0


def check_finite(state: TrainState, phase: Phase, epoch: int, step: int) -> None:
    if not bool(jax.device_get(jnp.all(state.finite))):
        raise TrainingDivergedError(
            f"the loss or the prompts became NaN or infinite in phase {phase.name!r} (epoch {epoch + 1}, step {step}); "
            f"training stopped and the last good checkpoint is kept.",
            hint="lower the learning rate (optim.lr) or check the inputs, with a new --workdir")


def cosine_lr_table(phase: Phase, optim: ml_collections.ConfigDict) -> list[float]:
    """The learning rate of each epoch of a phase (for logs and tests)."""
    f = epoch_schedule(phase.lr, phase.epochs, optim.warmup_epochs, optim.warmup_lr)
    return [float(f(e)) for e in range(phase.epochs)]


def as_floats(metrics: Mapping[str, Array]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


# ------------------------------------------------------------------------------------------------------- loop

@dataclasses.dataclass
class SeedRun:
    """What each of several packed seeds has of its own: data, checkpoints, logs, a per-epoch hook."""
    make_loader: Callable[[int], Any]          # phase index -> train iterator (with steps_per_epoch, get/set_state)
    checkpoints: Any                           # RunCheckpoints
    writer: Any                                # MetricWriter
    on_epoch_end: Callable[[str, int, P.Tree, int], None] | None = None
    seed: int = 0                              # the run's seed: the stream of random training draws (dropout)


@dataclasses.dataclass
class FitContext:
    """What the seeds of one fit share: mesh, frozen inputs, optimizer settings, logging cadence, hooks."""
    mesh: Any                                  # state and constants are replicated over it
    clip_params: Any
    texts: P.ClassTexts
    teacher_text: Array | None
    optim: ml_collections.ConfigDict
    seeds: list[SeedRun]
    log_every: int = 10
    checkpoint_every_steps: int = 0            # 0: at epoch and phase ends only
    checkpoint_min_steps: int = 0              # epoch-end saves at least this many steps apart (phase ends always)
    stop_at_step: int | None = None            # simulate a preemption (tests)
    compilations: dict[str, int] = dataclasses.field(default_factory=dict)
    teacher_images: list[Array] | None = None  # per seed, (N, P), with `teacher.images = "cached"`
    train_images: list[dict[str, Array]] | None = None   # per seed, with `method.needs_train_images`


class Preempted(RuntimeError):
    """Raised when `stop_at_step` is reached; the run resumes from its last checkpoint."""


def pack(trees: list[Any]) -> Any:
    """One tree for one seed; a tree of stacked leaves (seed axis first) for several."""
    return trees[0] if len(trees) == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unpack(tree: Any, k: int) -> list[Any]:
    return [tree] if k == 1 else [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(k)]


def fit(method: Method, phases: list[Phase], prompts: list[P.Tree], ctx: FitContext) -> list[P.Tree]:
    """Trains the phases in order for every seed (packed into one program when several), resuming from the
    latest checkpoints; returns each seed's final prompts."""
    resume = _restore(method, phases, prompts, ctx)
    if resume is not None:
        prompts = [s.prompts for s in resume["states"]]
    global_step = resume["global_step"] if resume else 0
    with preemption.deferred():   # a stop signal ends the step under way, which is saved
        for index in range(resume["phase"] if resume else 0, len(phases)):
            phase = phases[index]
            if resume is not None and resume["epoch"] >= phase.epochs:
                prompts, resume = [final_prompts(phase, s) for s in resume["states"]], None
                continue
            if resume is None:
                prompts = [method.begin_phase(index, p, ctx.clip_params, ctx.texts) for p in prompts]
            prompts, global_step = _fit_phase(method, index, phase, prompts, ctx, global_step, resume)
            resume = None
    return prompts


def _restore(method: Method, phases: list[Phase], prompts: list[P.Tree], ctx: FitContext) -> dict | None:
    """Where the seeds stand (their checkpoints must agree), with their restored states; None to start afresh."""
    def like(p: P.Tree) -> Callable[[dict[str, Any]], TrainState]:
        # every leaf global over the mesh, as on the other hosts of a multi-host run
        return lambda meta: sharding.replicate(
            _phase_setup(method, meta["phase"], phases[meta["phase"]], p, ctx, 1, 0)[1], ctx.mesh)

    restored = [s.checkpoints.restore_newest(like(p)) for s, p in zip(ctx.seeds, prompts)]
    if all(r is None for r in restored):
        return None
    metas = [None if r is None else r[1] for r in restored]
    where = [None if m is None else (m["phase"], m["epoch"], m["epoch_step"], m["global_step"]) for m in metas]
    if len(set(where)) != 1:
        dirs = [s.checkpoints.directory for s in ctx.seeds]
        raise CheckpointError(f"packed seeds stand at different points ({list(zip(dirs, where))}); resume them "
                              f"separately or start new run directories")
    return {**metas[0], "states": [r[2] for r in restored], "data_states": [m["data_state"] for m in metas]}


def _phase_setup(method: Method, index: int, phase: Phase, prompts: P.Tree, ctx: FitContext, per_epoch: int,
                 seed: int):
    plan = plan_phase(method, phase, prompts)
    tx = make_optimizer(phase, plan.selection.labels(prompts), per_epoch, ctx.optim)
    rng = jax.random.fold_in(jax.random.key(seed), index) if method.needs_rng else None
    return plan, init_state(prompts, tx, phase.gpa is not None, rng), tx


def final_prompts(phase: Phase, state: TrainState) -> P.Tree:
    """The phase's final prompts: the Gaussian aggregate over epochs when the phase uses GPA."""
    return state.gpa_sum if phase.gpa is not None else state.prompts


def _fit_phase(method: Method, index: int, phase: Phase, prompts: list[P.Tree], ctx: FitContext,
               global_step: int, resume: dict[str, Any] | None) -> tuple[list[P.Tree], int]:
    """Trains one phase from its start, or from where `resume` (the checkpoints' meta and states) left it."""
    loaders = [s.make_loader(index) for s in ctx.seeds]
    try:
        return _fit_phase_with(method, index, phase, prompts, ctx, global_step, resume, loaders)
    finally:
        for loader in loaders:
            loader.close()   # stops prefetching and any worker processes


def _fit_phase_with(method: Method, index: int, phase: Phase, prompts: list[P.Tree], ctx: FitContext,
                    global_step: int, resume: dict[str, Any] | None, loaders: list[Any]) -> tuple[list[P.Tree], int]:
    k = len(ctx.seeds)
    per_epoch = loaders[0].steps_per_epoch
    if any(loader.steps_per_epoch != per_epoch for loader in loaders):
        raise ValueError(f"packed seeds have different steps per epoch "
                         f"{[loader.steps_per_epoch for loader in loaders]}: run them separately")
    setups = [_phase_setup(method, index, phase, p, ctx, per_epoch, s.seed) for p, s in zip(prompts, ctx.seeds)]
    plan, tx = setups[0][0], setups[0][2]
    states = [setup[1] for setup in setups]
    start_epoch, skip_steps = 0, 0
    if resume is not None:
        states, start_epoch, skip_steps = resume["states"], resume["epoch"], resume["epoch_step"]
        for loader, data_state in zip(loaders, resume["data_states"]):
            loader.set_state(data_state)
    teacher_images = ctx.teacher_images or [None] * k
    train_images = ctx.train_images or [None] * k
    consts = [phase_constants(method, plan, s.prompts, ctx.clip_params, ctx.texts, ctx.teacher_text, t, i)
              for s, t, i in zip(states, teacher_images, train_images)]
    # Replicated placement from the start, so the step sees the same input shardings on every call.
    state = sharding.replicate(pack(states), ctx.mesh)
    consts = sharding.replicate(pack(consts), ctx.mesh)
    step_fn = make_train_step(method, plan, tx, packed=k > 1)
    weights = gpa_weights(phase.epochs, *phase.gpa) if phase.gpa is not None else None
    for seed in ctx.seeds:
        seed.writer.start_phase(phase.name, index, global_step, phase.epochs)
    metrics, stop, last_saved = None, False, global_step   # a phase starts where the last save (or step 0) was
    for epoch in range(start_epoch, phase.epochs):
        for epoch_step in range(skip_steps if epoch == start_epoch else 0, per_epoch):
            state, metrics = step_fn(state, ctx.clip_params, consts, pack([next(loader) for loader in loaders]))
            global_step += 1
            if global_step % ctx.log_every == 0:
                check_finite(state, phase, epoch, global_step)
                _log(ctx, global_step, phase, epoch, metrics)
            for seed in ctx.seeds:
                seed.writer.advance(global_step)
            mid_epoch = epoch_step + 1 < per_epoch
            stop = preemption.stop_requested(global_step)   # a signal: save this step (at the epoch's end below)
            every = ctx.checkpoint_every_steps and global_step % ctx.checkpoint_every_steps == 0
            if mid_epoch and (every or stop):
                check_finite(state, phase, epoch, global_step)
                _save(ctx, global_step, state, loaders, phase=index, epoch=epoch, epoch_step=epoch_step + 1)
                last_saved = global_step
            if stop and mid_epoch:
                raise Interrupted(preemption.stop_signal(), global_step)
            if ctx.stop_at_step is not None and global_step >= ctx.stop_at_step:
                raise Preempted(f"stopped at step {global_step} as asked")
        check_finite(state, phase, epoch, global_step)
        if weights is not None:
            state = accumulate_gpa(state, float(weights[epoch]))
        # Rows before the save: a run killed in between replays the epoch (a row may repeat) but loses none.
        if metrics is not None:
            _log(ctx, global_step, phase, epoch, metrics)
        for seed in ctx.seeds:
            seed.writer.end_epoch(epoch + 1, global_step)
        for seed, seed_state in zip(ctx.seeds, unpack(state, k)):
            if seed.on_epoch_end is not None:
                seed.on_epoch_end(phase.name, epoch + 1, seed_state.prompts, global_step)
        if stop or epoch + 1 == phase.epochs or global_step - last_saved >= ctx.checkpoint_min_steps:
            _save(ctx, global_step, state, loaders, phase=index, epoch=epoch + 1, epoch_step=0)
            last_saved = global_step
        if stop:
            raise Interrupted(preemption.stop_signal(), global_step)
    ctx.compilations[phase.name] = step_fn._cache_size()
    return [final_prompts(phase, s) for s in unpack(state, k)], global_step


def _log(ctx: FitContext, global_step: int, phase: Phase, epoch: int, metrics: Any) -> None:
    for seed, seed_metrics in zip(ctx.seeds, unpack(metrics, len(ctx.seeds))):
        seed.writer.write(global_step, {"phase": phase.name, "epoch": epoch + 1, **as_floats(seed_metrics)})


def _save(ctx: FitContext, global_step: int, state: TrainState, loaders: list[Any], **where: int) -> None:
    """Saves each seed's state with where the run stands: phase, epochs done, steps done in the current epoch."""
    for seed, seed_state, loader in zip(ctx.seeds, unpack(state, len(ctx.seeds)), loaders):
        meta = {**where, "global_step": global_step, "data_state": loader.get_state()}
        seed.checkpoints.save(global_step, seed_state, meta)
        seed.writer.flush()
