"""DPC (Dual-Prompt Collaboration, CVPR'25) as a plug-in: a second stage on top of any prompt method.

As in JREion/DPC (`trainers/sple_coop.py`, `trainers/sple_promptkd.py`): stage 1 is the base method (its own phases
in the same run, or a finished run directory, `dpc.stage1_from`). Stage 2 starts from stage 1's prompts P: the
trained leaves hold the *mixed* prompt M = w P' + (1 - w) P (w = `dpc.weight`, official 0.2), starting at M = P, and
the towers see the *parallel* prompt P' = P + (M - P) / w for the decoupled leaves (`dpc.decoupled`; official: the
first-layer text context, every other trained leaf is P' itself). P stays frozen in the tree (`dpc/stage1`).

Each step, the frozen stage-1 model scores the batch on the training classes; per sample the classes of its top k
(`dpc.top_k`, official 8) other than its own and not yet in the batch become hard negatives (at least
`dpc.min_negatives`, else random unused classes), each with one random training image of that class. The loss is the
symmetric image-text contrastive loss over the grown batch (`dpc_cl`), with static shapes: k slots per sample and a
validity mask, all on device (the training images are a phase constant).

At test the classes stage 2 trained on ("base", "all", the transfer source) see P' and any other classes
w_new P' + (1 - w_new) P (`dpc.weight_new`, official 0.0: the stage-1 prompts, the base method's logits exactly).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aple_jax import losses as L
from aple_jax import paths, prompt_files
from aple_jax import prompts as P
from aple_jax.adapter import apply_adapter
from aple_jax.clip.backbone import Backbone
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.errors import CheckpointError
from aple_jax.methods.base import MODALITIES, Phase
from aple_jax.plugins import base_rows

Array = jax.Array
KEY = "dpc"                      # the plug-in's subtree: the frozen stage-1 prompts and the stage-2 flag
PHASE = "dpc"                    # the name of stage 2's phase
NOT_OURS = rf"(?!{KEY}/)"        # a selector prefix that keeps a phase off the plug-in's subtree
# The official recipe (configs/trainers/SPLE/PromptKD/vit_b16_c2_ep20_batch4_4+4ctx.yaml and the README's run:
# weight 0.2, weight for new 0.0, top 8, SGD lr 0.002 for 20 epochs at batch 4).
DEFAULTS = dict(weight=0.2, weight_new=0.0, top_k=8, min_negatives=2, epochs=20, lr=0.002,
                decoupled=("text/ctx",), stage1_from="")


def settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `dpc` section of the config over the defaults (their ranges are checked with the rest of the config,
    aple_jax.config_schema, before anything loads)."""
    section = config.get(KEY)
    s = {**DEFAULTS, **(section.to_dict() if section is not None else {})}
    s["decoupled"] = tuple(s["decoupled"])
    return s


def stage1_dir(config: ml_collections.ConfigDict) -> paths.PathLike | None:
    """The finished stage-1 run of `dpc.stage1_from` for the config's seed: `<dir>/seed<s>` when the directory holds
    packed seeds, else the directory; None when stage 1 trains in this run."""
    source = settings(config)["stage1_from"]
    if not source:
        return None
    packed = paths.join(source, f"seed{config.seed}")
    return packed if (packed / "prompts.npz").exists() else paths.as_path(source)


def stage1_from_base_run(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """A DPC run beside its base method's run (`base_run`: trained in `<workdir>/base`, or a finished directory)
    takes stage 1 from it rather than training it again (the same config without the plug-in: the same prompts);
    an explicit `dpc.stage1_from` stays."""
    source = config.get("base_run", "")
    if config.get("plugin") != KEY or not source or settings(config)["stage1_from"]:
        return config
    out = config.copy_and_resolve_references()
    with out.unlocked():
        if KEY not in out:
            out[KEY] = ml_collections.ConfigDict(DEFAULTS)
        out[KEY].stage1_from = str(paths.join(workdir, "base")) if source == base_rows.TRAIN else source
    return out


def check_stage1_run(config: ml_collections.ConfigDict, base_name: str | None,
                     base_classnames: list[str] | None) -> None:
    """Refuses a `dpc.stage1_from` that is not a finished run (its prompts.npz) of this method, backbone, prompt
    shape and base classes; checked before anything heavy loads."""
    path = stage1_dir(config)
    if path is None:
        return
    if not (path / "prompts.npz").exists():
        raise CheckpointError(f"dpc.stage1_from={str(path)!r} holds no prompts.npz: stage 2 starts from a finished "
                              f"run of the base method", hint="give the run directory of a finished run "
                                                              f"(python launch.py --config configs/{config.method}.py:"
                                                              f"... --workdir DIR), or leave dpc.stage1_from empty "
                                                              f"to train stage 1 in this run")
    base = ml_collections.ConfigDict(config.to_dict())   # a run of the base method, without a plug-in
    base.plugin = ""
    prompt_files.check_provenance(path, prompt_files.source_meta(path), base, base_name, base_classnames)


# ------------------------------------------------------------------------------------------- hard negatives

def hard_negatives(scores: Array, labels: Array, usable: Array, top_k: int, min_negatives: int,
                   key: Array) -> tuple[Array, Array]:
    """(B, S) negative classes and their validity, S = min(top_k, C): per sample in batch order, the classes of its
    `top_k` highest `scores` in rank order that are not its label nor already in the batch (its labels, earlier
    samples' negatives), then random unused classes until `min_negatives`. Classes with `usable` False (no training
    image) are never picked. As the official sampler, with static shapes."""
    num_classes = scores.shape[-1]
    slots = min(top_k, num_classes)
    _, top = jax.lax.top_k(jnp.where(usable, scores, -jnp.inf), slots)
    used = (~usable).at[labels].set(True)
    positions = jnp.arange(slots)

    def one(used: Array, inputs: tuple[Array, Array, Array]) -> tuple[Array, tuple[Array, Array]]:
        candidates, label, k = inputs
        ok = (candidates != label) & ~used[candidates]
        chosen = candidates[jnp.argsort(~ok, stable=True)]   # the usable ones first, in rank order
        n = ok.sum()
        used = used.at[jnp.where(positions < n, chosen, num_classes)].set(True, mode="drop")
        random_order = jnp.argsort(jnp.where(used, 2.0, jax.random.uniform(k, (num_classes,))))
        fill = (positions >= n) & (positions < jnp.maximum(n, min_negatives)) & (positions - n < (~used).sum())
        chosen = jnp.where(fill, random_order[jnp.clip(positions - n, 0, num_classes - 1)], chosen)
        used = used.at[jnp.where(fill, chosen, num_classes)].set(True, mode="drop")
        return used, (chosen, (positions < n) | fill)

    _, (classes, valid) = jax.lax.scan(one, used, (top, labels, jax.random.split(key, labels.shape[0])))
    return classes, valid


def pick_images(members: Array, counts: Array, classes: Array, key: Array) -> Array:
    """One random training image index per entry of `classes`: `members` (C, W) lists each class's image indices,
    `counts` (C,) how many."""
    count = counts[classes]
    slot = jax.random.randint(key, classes.shape, 0, jnp.maximum(count, 1))
    return members[classes, slot]


def image_table(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(members (C, W), counts (C,)): the indices of each class's training images, padded with 0 to the largest
    class."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes).astype(np.int32)
    members = np.zeros((num_classes, max(int(counts.max(initial=0)), 1)), np.int32)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        members[c, :len(idx)] = idx
    return members, counts


def symmetric_contrastive(logits: Array, valid: Array) -> Array:
    """The mean of image->text and text->image cross-entropies of a (n, n) pair matrix whose diagonal holds the
    matching pairs, over the valid entries only (the others are masked out of every softmax)."""
    logits = jnp.where(valid[None, :] & valid[:, None], logits.astype(jnp.float32), -1e9)
    ids = jnp.arange(logits.shape[0])
    w = valid.astype(jnp.float32) / valid.sum()

    def ce(x: Array) -> Array:
        return -(jax.nn.log_softmax(x, axis=-1)[ids, ids] * w).sum()

    return (ce(logits) + ce(logits.T)) / 2


# ------------------------------------------------------------------------------------------------- plug-in

class DPC:
    """The DPC mixin, placed before the base method's class."""
    defaults = DEFAULTS
    eval_settings = ("weight", "weight_new", "decoupled")   # what changes the logits of trained prompts
    own_terms = {"dpc_cl": ""}
    needs_rng = True            # the sampler's draws
    needs_train_images = True   # the hard negatives' images, a constant of stage 2

    def __init__(self, config: ml_collections.ConfigDict, backbone: Backbone, tokenizer: Tokenizer):
        super().__init__(config, backbone, tokenizer)
        self.dpc = settings(config)
        self._decoupled = [re.compile(p) for p in self.dpc["decoupled"]]

    # ------------------------------------------------------------------------------------------- the tree
    def init(self, rng: Array, clip_params: Any, classnames: Sequence[str] = ()) -> P.Tree:
        """The base method's tree beside a copy of it as the stage-1 prompts (set again as stage 2 starts) and the
        stage-2 flag."""
        tree = super().init(rng, clip_params, classnames)
        return {**tree, KEY: {"stage1": jax.tree.map(jnp.copy, tree), "started": jnp.zeros((), jnp.float32)}}

    def with_stage1_run(self, prompts: P.Tree, config: ml_collections.ConfigDict) -> P.Tree:
        """`prompts` with the base method's leaves from the finished stage-1 run of `config`'s seed
        (`dpc.stage1_from`; each packed seed its own), unchanged without one."""
        path = stage1_dir(config)
        if path is None:
            return prompts
        tree = prompt_files.read_prompts(paths.join(path, "prompts.npz"), base_tree(prompts))
        return {**tree, KEY: {"stage1": jax.tree.map(jnp.copy, tree), "started": prompts[KEY]["started"]}}

    def begin_phase(self, index: int, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts) -> P.Tree:
        """As stage 2 starts: the stage-1 prompts are copied aside, frozen; the trained leaves start at them."""
        prompts = super().begin_phase(index, prompts, clip_params, texts)
        if index != len(self._stage1_phases()):
            return prompts
        tree = base_tree(prompts)
        return {**tree, KEY: {"stage1": jax.tree.map(jnp.copy, tree), "started": jnp.ones((), jnp.float32)}}

    def parallel(self, prompts: P.Tree) -> P.Tree:
        """The base method's tree the towers see in stage 2 and on its classes: P' = P + (M - P) / w for the
        decoupled leaves, the trained values for the others (before stage 2 starts: the trained leaves)."""
        trained, stage1 = P.flatten(base_tree(prompts)), P.flatten(prompts[KEY]["stage1"])
        started = prompts[KEY]["started"] > 0
        out = {}
        for path, m in trained.items():
            value = stage1[path] + (m - stage1[path]) / self.dpc["weight"] if self._is_decoupled(path) else m
            out[path] = jnp.where(started, value, m)
        return P.unflatten(out)

    def mixed(self, prompts: P.Tree, weight: float) -> P.Tree:
        """weight P' + (1 - weight) P, as P + weight (P' - P) (the stage-1 prompts exactly at weight 0)."""
        parallel, stage1 = P.flatten(self.parallel(prompts)), P.flatten(prompts[KEY]["stage1"])
        started = prompts[KEY]["started"] > 0
        return P.unflatten({path: jnp.where(started, stage1[path] + weight * (v - stage1[path]), v)
                            for path, v in parallel.items()})

    def _is_decoupled(self, path: str) -> bool:
        return any(p.fullmatch(path) for p in self._decoupled)

    # ------------------------------------------------------------------------------------------------ phases
    def _stage1_phases(self) -> list[Phase]:
        """The base method's phases, kept off the plug-in's subtree; none when stage 1 comes from a run."""
        if self.dpc["stage1_from"]:
            return []
        return [dataclasses.replace(p, train=tuple(NOT_OURS + s for s in p.train)) for p in super().phases()]

    def phases(self) -> list[Phase]:
        """Stage 1, then stage 2: every trained leaf of the base method, both towers, the contrastive loss."""
        stage2 = Phase(PHASE, (NOT_OURS + ".*",), self.dpc["epochs"], self.dpc["lr"], MODALITIES, (("dpc_cl", 1.0),))
        return self._stage1_phases() + [stage2]

    def phase_constants(self, phase: Phase, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts,
                        train_images: Mapping[str, Array] | None = None) -> dict[str, Any]:
        """Stage 2's: the stage-1 model's class text features and the training images with their class table."""
        if phase.name != PHASE:
            return super().phase_constants(phase, prompts, clip_params, texts, train_images)
        if train_images is None:
            raise ValueError("DPC's stage 2 needs the training images (train_images)")
        return {"stage1_text": self.text_features_jit(prompts[KEY]["stage1"], clip_params, texts),
                **train_images}

    # ------------------------------------------------------------------------------------------------ training
    def train_outputs(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts, images: Array,
                      present: tuple[str, ...] = MODALITIES, text_cache: Array | None = None,
                      rng: Array | None = None, own: Mapping[str, Array] | None = None,
                      labels: Array | None = None) -> dict[str, Array]:
        """Stage 1: the base method's. Stage 2: the batch grown by its hard negatives through P', with "dpc_logits"
        (n, n) of its image-text pairs and "dpc_valid" (n,); "image" stays the batch's own (B, P)."""
        if own is None:
            return super().train_outputs(base_tree(prompts), clip_params, texts, images, present, text_cache, rng=rng)
        k_negatives, k_images, k_base = jax.random.split(rng, 3)
        scores = super().eval_logits(prompts[KEY]["stage1"], clip_params, own["stage1_text"], images, "base")
        classes, valid = hard_negatives(jax.lax.stop_gradient(scores), labels, own["counts"] > 0, self.dpc["top_k"],
                                        self.dpc["min_negatives"], k_negatives)
        picked = own["images"][pick_images(own["members"], own["counts"], classes, k_images).reshape(-1)]
        picked = picked.astype(images.dtype)
        if self.adapter_train:
            picked = apply_adapter(picked, self.adapter)
        batch = images.shape[0]
        out = super().train_outputs(self.parallel(prompts), clip_params, texts, jnp.concatenate([images, picked]),
                                    present, text_cache, rng=k_base)
        pair_labels = jnp.concatenate([labels, classes.reshape(-1)])
        pair_valid = jnp.concatenate([jnp.ones((batch,), bool), valid.reshape(-1)])
        pair_logits = L.cosine_logits(self.backbone.logit_scale(clip_params), out["image"], out["text"][pair_labels])
        return {**out, "image": out["image"][:batch], "dpc_logits": pair_logits, "dpc_valid": pair_valid}

    def own_loss_terms(self, outputs: dict[str, Array], logits: Array, batch: Mapping[str, Array],
                       teacher: Mapping[str, Array], weights: Mapping[str, float]) -> dict[str, Array]:
        terms = super().own_loss_terms(outputs, logits, batch, teacher, weights)
        if weights.get("dpc_cl") and "dpc_logits" in outputs:
            terms["dpc_cl"] = symmetric_contrastive(outputs["dpc_logits"], outputs["dpc_valid"])
        return terms

    # ------------------------------------------------------------------------------------------------ testing
    def trained_on(self, split: str) -> bool:
        """Whether stage 2 trained on the classes of `split`: "base", "all", or the transfer source."""
        return split in ("base", "all") or split == self.config.dataset.name

    def eval_text_features(self, prompts: P.Tree, clip_params: Any, classnames: list[str],
                           dataset_template: str) -> dict[str, Array]:
        """The class text features through P' ("trained") and through the new-class mix ("other")."""
        return {"trained": super().eval_text_features(self.parallel(prompts), clip_params, classnames,
                                                      dataset_template),
                "other": super().eval_text_features(self.mixed(prompts, self.dpc["weight_new"]), clip_params,
                                                    classnames, dataset_template)}

    def eval_logits(self, prompts: P.Tree, clip_params: Any, class_side: Any, images: Array, split: str) -> Array:
        if self.trained_on(split):
            return super().eval_logits(self.parallel(prompts), clip_params, class_side["trained"], images, split)
        return super().eval_logits(self.mixed(prompts, self.dpc["weight_new"]), clip_params, class_side["other"],
                                   images, split)


def base_tree(prompts: P.Tree) -> P.Tree:
    """The base method's leaves of a DPC tree."""
    return {k: v for k, v in prompts.items() if k != KEY}
