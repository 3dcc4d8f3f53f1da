"""Names of the official prompt checkpoints, per method: our prompt-tree leaves <-> Dassl state-dict keys.

Read from the official trainers (CoOp, CoCoOp: KaiyangZhou/CoOp; KgCoOp: htyao89/KgCoOp; MaPLe, IVLP:
muzairkhattak/multimodal-prompt-learning; PromptSRC: muzairkhattak/PromptSRC; MMA: ZjjConan/Multi-Modal-Adapter;
MMRL: yunncheng/MMRL; PromptKD: zhengli97/PromptKD):
- CoOp, CoCoOp and KgCoOp register the prompt learner alone: bare names (`ctx`, `meta_net.linear1.weight`).
- MaPLe, IVLP and PromptSRC register the whole CustomCLIP: `prompt_learner.*`, `image_encoder.*` (OpenAI's
  `visual.*`), `text_encoder.*` (OpenAI's text tower without `token_embedding`) and `logit_scale`.
- MaPLe's deep text prompts are `compound_prompts_text.{k}` and their couplings `compound_prompt_projections.{k}`,
  both for layer k + 1 (our `text/deep_{k+1}`, `coupling/proj_{k+1}`); the layer-0 coupling is `proj`.
- IVLP/PromptSRC's deep prompts are `resblocks.{i}.VPT_shallow`, for layer i (our `deep_{i}`); the layer-0 vision
  prompts are `image_encoder.VPT`.
- MMA registers its `AdapterLearner` alone (`adapter_learner`): `{text,visual}_adapter.{l}.down.0` (Linear + ReLU),
  `{text,visual}_adapter.{l}.up` and `shared_adapter.{l}.0` (Linear + ReLU), for block l counted from 1 (the
  blocks' `layer_index`; index 0, the token-embedding adapter, is built only when ADAPTER_START is 0), i.e. our
  `{text,vision,shared}/block_{l-1}`; buffers `token_embedding` (classes, context, width) and `tokenized_prompts`.
- MMRL registers the whole CustomCLIP (`MultiModalRepresentationLearner`; `MultiModalPromptLearner` before the
  official code renamed it): `representation_learner.compound_rep_tokens` (our `rep_tokens`),
  `representation_learner.compound_rep_tokens_r2{t,v}proj.{k}` (our `{text,vision}/r2{t,v}proj_{k}`, k = the k-th
  block from REP_LAYERS[0]), the trained `image_encoder.proj_rep` (our `vision/proj_rep`, used as `x @ proj_rep`:
  not transposed), the frozen towers without `logit_scale`, and (newer releases) the buffer `prompt_embeddings`.
- PromptKD's student registers its whole CustomCLIP (`VLPromptLearner`, as IVLP): `logit_scale`, the image tower
  `image_encoder.*` with IVLP's vision prompts (our `vision/shallow`, `vision/deep_{i}`) and the projector
  `VPT_image_trans.conv1` = Sequential(Conv2d 1x1, BatchNorm2d, ReLU, Conv2d 1x1): `.0`, `.3` (our `proj/fc1`,
  `proj/fc2`), `.1.{weight,bias}` (our `proj/bn/{scale,bias}`) and its buffers `.1.running_{mean,var}` (our
  `proj_stats/{mean,var}`) and `.1.num_batches_tracked` (unused with momentum 0.1: shape-checked, never written).
  It has no prompt learner and no text tower: its class features are the teacher's.
- `nn.Linear` weights are (out, in), 1x1 `nn.Conv2d` weights (out, in, 1, 1): our kernels are their transpose.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping

import numpy as np

from aple_jax.clip.model import CLIPConfig

SUPPORTED = ("coop", "kgcoop", "cocoop", "maple", "ivlp", "promptsrc", "mma", "mmrl", "promptkd")
# The name each official trainer registers its model under: `<output>/<ModelName>/model.pth.tar-<epoch>`.
MODEL_NAMES = {"coop": "prompt_learner", "kgcoop": "prompt_learner", "cocoop": "prompt_learner",
               "maple": "MultiModalPromptLearner", "ivlp": "VLPromptLearner", "promptsrc": "VLPromptLearner",
               "mma": "adapter_learner", "mmrl": "MultiModalRepresentationLearner", "promptkd": "VLPromptLearner"}
WHOLE_MODEL = ("maple", "ivlp", "promptsrc", "mmrl", "promptkd")
DISPLAY = {"coop": "CoOp", "kgcoop": "KgCoOp", "cocoop": "CoCoOp", "maple": "MaPLe", "ivlp": "IVLP",
           "promptsrc": "PromptSRC", "mma": "MMA", "mmrl": "MMRL", "promptkd": "PromptKD", "aple": "APLe",
           "zeroshot": "zero-shot CLIP"}
NOT_SUPPORTED = {
    "aple": "APLe has no official PyTorch code, so there is no official checkpoint format to read or write; its "
            "prompts live in prompts.npz",
    "zeroshot": "zero-shot CLIP learns no prompts, so it has no prompt checkpoint",
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """Our leaf path (a regex; its one group is a layer index) <-> the official key (`{}` = that index + shift)."""
    ours: str
    theirs: str
    shift: int = 0
    linear: bool = False   # an nn.Linear weight: (out, in) there, our (in, out) kernel here
    conv: bool = False     # a 1x1 nn.Conv2d weight: (out, in, 1, 1) there, our (in, out) kernel here

    def official_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The official tensor's shape for our leaf's `shape`."""
        if not (self.linear or self.conv):
            return shape
        return shape[::-1] + (1, 1) * self.conv

    def to_official(self, value: np.ndarray) -> np.ndarray:
        """Our leaf in the official layout."""
        if not (self.linear or self.conv):
            return value
        value = np.ascontiguousarray(value.T)
        return value[:, :, None, None] if self.conv else value

    def to_ours(self, value: np.ndarray) -> np.ndarray:
        """An official tensor in our leaf's layout."""
        if not (self.linear or self.conv):
            return value
        return np.ascontiguousarray((value[:, :, 0, 0] if self.conv else value).T)


_PROMPT_LEARNER_CTX = (Rule("text/ctx", "ctx"),)
_VLP_VISION = (Rule("vision/shallow", "image_encoder.VPT"),
               Rule(r"vision/deep_(\d+)", "image_encoder.transformer.resblocks.{}.VPT_shallow"))
_VLP = (Rule("text/ctx", "prompt_learner.ctx"),
        Rule(r"text/deep_(\d+)", "text_encoder.transformer.resblocks.{}.VPT_shallow")) + _VLP_VISION
_MMA_TOWERS = (("text", "text_adapter"), ("vision", "visual_adapter"))
_MMA = tuple(Rule(rf"{ours}/block_(\d+)/{part}/{leaf}", f"{theirs}.{{}}.{name}.{leaf.replace('kernel', 'weight')}",
                  shift=1, linear=leaf == "kernel")
             for ours, theirs in _MMA_TOWERS for part, name in (("down", "down.0"), ("up", "up"))
             for leaf in ("kernel", "bias")) + tuple(
    Rule(rf"shared/block_(\d+)/{leaf}", f"shared_adapter.{{}}.0.{leaf.replace('kernel', 'weight')}", shift=1,
         linear=leaf == "kernel") for leaf in ("kernel", "bias"))
MMA_PREFIXES = ("text_adapter.", "visual_adapter.", "shared_adapter.")
MMRL_PREFIX = "representation_learner."
_MMRL = (Rule("rep_tokens", MMRL_PREFIX + "compound_rep_tokens"),
         Rule("vision/proj_rep", "image_encoder.proj_rep")) + tuple(
    Rule(rf"{tower}/r2{t}proj_(\d+)/{leaf}", f"{MMRL_PREFIX}compound_rep_tokens_r2{t}proj.{{}}.{torch_leaf}",
         linear=leaf == "kernel")
    for tower, t in (("text", "t"), ("vision", "v")) for leaf, torch_leaf in (("kernel", "weight"), ("bias", "bias")))
PROMPTKD_PREFIX = "VPT_image_trans.conv1."
_PROMPTKD = _VLP_VISION + tuple(   # the vision prompts, then Sequential(conv .0, BatchNorm .1, ReLU .2, conv .3)
    Rule(f"proj/{ours}/{leaf}", f"{PROMPTKD_PREFIX}{index}.{leaf.replace('kernel', 'weight')}", conv=leaf == "kernel")
    for ours, index in (("fc1", 0), ("fc2", 3)) for leaf in ("kernel", "bias")) + (
    Rule("proj/bn/scale", PROMPTKD_PREFIX + "1.weight"), Rule("proj/bn/bias", PROMPTKD_PREFIX + "1.bias"),
    Rule("proj_stats/mean", PROMPTKD_PREFIX + "1.running_mean"),
    Rule("proj_stats/var", PROMPTKD_PREFIX + "1.running_var"))
RULES: dict[str, tuple[Rule, ...]] = {
    "coop": _PROMPT_LEARNER_CTX,
    "kgcoop": _PROMPT_LEARNER_CTX,
    "cocoop": _PROMPT_LEARNER_CTX + (Rule(r"meta_net/linear([12])/kernel", "meta_net.linear{}.weight", linear=True),
                                     Rule(r"meta_net/linear([12])/bias", "meta_net.linear{}.bias")),
    "maple": (Rule("text/ctx", "prompt_learner.ctx"),
              Rule(r"text/deep_(\d+)", "prompt_learner.compound_prompts_text.{}", shift=-1),
              Rule("coupling/proj_0/kernel", "prompt_learner.proj.weight", linear=True),
              Rule("coupling/proj_0/bias", "prompt_learner.proj.bias"),
              Rule(r"coupling/proj_([1-9]\d*)/kernel", "prompt_learner.compound_prompt_projections.{}.weight",
                   shift=-1, linear=True),
              Rule(r"coupling/proj_([1-9]\d*)/bias", "prompt_learner.compound_prompt_projections.{}.bias",
                   shift=-1)),
    "ivlp": _VLP,
    "promptsrc": _VLP,
    "mma": _MMA,
    "mmrl": _MMRL,
    "promptkd": _PROMPTKD,
}


def official_key(method: str, path: str) -> tuple[str, Rule]:
    """(official key, the rule that maps it: its layout) of one of our leaves."""
    for rule in RULES[method]:
        m = re.fullmatch(rule.ours, path)
        if m:
            return (rule.theirs.format(int(m.group(1)) + rule.shift) if m.groups() else rule.theirs), rule
    raise KeyError(f"{DISPLAY[method]} has no official counterpart of our prompt leaf {path!r}")


def buffers(method: str, cfg: CLIPConfig, n_ctx: int) -> dict[str, tuple[int, ...]]:
    """{key: shape after the leading class axis} of the fixed token buffers the official `load_model` deletes before
    loading (rebuilt from the class names; any number of classes)."""
    if method == "mma":
        return {"token_embedding": (cfg.context_length, cfg.text_width), "tokenized_prompts": (cfg.context_length,)}
    if method == "mmrl":   # absent from files of releases before it was registered
        return {"prompt_embeddings": (cfg.context_length, cfg.text_width)}
    if method == "promptkd":   # the student has no prompt learner
        return {}
    prefix = "prompt_learner." if method in WHOLE_MODEL else ""
    return {f"{prefix}token_prefix": (1, cfg.text_width),
            f"{prefix}token_suffix": (cfg.context_length - 1 - n_ctx, cfg.text_width)}


# KgCoOp's prompt learner also saves a frozen, unused `bias_vectors` (1, 512) and `meta_net` Linear(512, 512),
# both hard-coded to 512 whatever the backbone: ignored, whatever their shape.
KGCOOP_FROZEN = ("bias_vectors", "meta_net.linear1.weight", "meta_net.linear1.bias")
ZS_PREFIX = "prompt_learner.ZS_image_encoder."   # PromptSRC's frozen copy of the image tower


def detect_method(keys: Iterable[str]) -> str | None:
    """Which official trainer wrote a state dict with these keys (None: none of them).

    A file with `ctx` alone is "coop", one with IVLP's prompts alone "ivlp": see COMPATIBLE.
    """
    keys = set(keys)
    if any(k.startswith(PROMPTKD_PREFIX) for k in keys):
        return "promptkd"
    if any(k.startswith(MMA_PREFIXES) for k in keys):
        return "mma"
    if any(k.startswith(MMRL_PREFIX) for k in keys):
        return "mmrl"
    if any(k.startswith(ZS_PREFIX) for k in keys):
        return "promptsrc"
    if "prompt_learner.proj.weight" in keys or any(k.startswith("prompt_learner.compound_prompt") for k in keys):
        return "maple"
    if "prompt_learner.ctx" in keys:
        return "ivlp"
    if "ctx" in keys:
        if "bias_vectors" in keys:
            return "kgcoop"
        return "cocoop" if any(k.startswith("meta_net.") for k in keys) else "coop"
    return None


# Methods whose checkpoints a detected layout may also be, because an exported file holds trainable tensors only:
# KgCoOp's are CoOp's `ctx`, PromptSRC's are IVLP's prompts (without the frozen ZS_image_encoder).
COMPATIBLE = {"coop": ("coop", "kgcoop"), "ivlp": ("ivlp", "promptsrc")}


def _count(keys: Iterable[str], pattern: str) -> int:
    return sum(1 for k in keys if re.fullmatch(pattern, k))


def prompt_shape(method: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """The prompt lengths and depths of a checkpoint, as our config keys (only the keys the method uses)."""
    ctx_key = "prompt_learner.ctx" if method in WHOLE_MODEL else "ctx"
    out = {"prompts.text.n_ctx": shapes[ctx_key][-2]} if len(shapes.get(ctx_key, ())) >= 2 else {}
    if method == "maple":
        out["prompts.text.depth"] = 1 + _count(shapes, r"prompt_learner\.compound_prompts_text\.\d+")
    elif method in ("ivlp", "promptsrc", "promptkd"):
        out["prompts.text.depth"] = 0 if method == "promptkd" else 1 + _count(
            shapes, r"text_encoder\.transformer\.resblocks\.\d+\.VPT_shallow")
        has_vpt = "image_encoder.VPT" in shapes
        out["prompts.vision.depth"] = int(has_vpt) + _count(
            shapes, r"image_encoder\.transformer\.resblocks\.\d+\.VPT_shallow")
        if has_vpt:
            out["prompts.vision.n_ctx"] = shapes["image_encoder.VPT"][0]
    elif method == "mma":
        out.update(_mma_shape(shapes))
    elif method == "mmrl" and len(shapes.get(MMRL_PREFIX + "compound_rep_tokens", ())) == 2:
        out["mmrl.n_tokens"], out["mmrl.rep_dim"] = shapes[MMRL_PREFIX + "compound_rep_tokens"]
    else:
        out.update({"prompts.text.depth": 1, "prompts.vision.depth": 0})
    return out


def _mma_shape(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """`mma.start`, `mma.end` (the adapted blocks, from 1) and `mma.dim` of an MMA state dict."""
    blocks = sorted({int(m.group(1)) for k in shapes for m in [re.fullmatch(r"\w+_adapter\.(\d+)\..+", k)] if m})
    out = {"mma.start": blocks[0], "mma.end": blocks[-1]} if blocks else {}
    down = [shape[0] for k, shape in shapes.items() if re.fullmatch(r"(text|visual)_adapter\.\d+\.down\.0\.weight", k)]
    if down:
        out["mma.dim"] = down[0]
    return out


def clip_shapes(cfg: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of an OpenAI CLIP ViT state dict with its shape (the layout `clip/weights.py` reads)."""
    tw, vw, hidden = cfg.text_width, cfg.vision_width, cfg.mlp_ratio
    p = cfg.vision_patch_size
    out: dict[str, tuple[int, ...]] = {
        "positional_embedding": (cfg.context_length, tw), "text_projection": (tw, cfg.embed_dim),
        "logit_scale": (), "token_embedding.weight": (cfg.vocab_size, tw),
        "ln_final.weight": (tw,), "ln_final.bias": (tw,),
        "visual.class_embedding": (vw,), "visual.positional_embedding": (cfg.num_patches + 1, vw),
        "visual.proj": (vw, cfg.embed_dim), "visual.conv1.weight": (vw, 3, p, p),
        "visual.ln_pre.weight": (vw,), "visual.ln_pre.bias": (vw,),
        "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,),
    }
    for prefix, width, layers in (("transformer", tw, cfg.text_layers), ("visual.transformer", vw, cfg.vision_layers)):
        for i in range(layers):
            b = f"{prefix}.resblocks.{i}."
            out.update({b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
                        b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
                        b + "ln_1.weight": (width,), b + "ln_1.bias": (width,),
                        b + "mlp.c_fc.weight": (hidden * width, width), b + "mlp.c_fc.bias": (hidden * width,),
                        b + "mlp.c_proj.weight": (width, hidden * width), b + "mlp.c_proj.bias": (width,),
                        b + "ln_2.weight": (width,), b + "ln_2.bias": (width,)})
    return out


def frozen_keys(method: str, cfg: CLIPConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{official key: (group, shape)} of the frozen CLIP tensors a whole-model checkpoint of `method` holds.

    Groups: "frozen CLIP" (the prompted model's towers and `logit_scale`, all of OpenAI's CLIP but the token
    embedding table; PromptKD's student: the image tower and `logit_scale`), "ZS_image_encoder" (PromptSRC's frozen
    copy of the image tower) and "BatchNorm counter" (PromptKD's projector's `num_batches_tracked`).
    """
    if method not in WHOLE_MODEL:
        return {}
    out = {PROMPTKD_PREFIX + "1.num_batches_tracked": ("BatchNorm counter", ())} if method == "promptkd" else {}
    for name, shape in clip_shapes(cfg).items():
        if name == "token_embedding.weight" or (method == "promptkd" and not name.startswith(("visual.", "logit"))):
            continue
        if name.startswith("visual."):
            out["image_encoder." + name[len("visual."):]] = ("frozen CLIP", shape)
            if method == "promptsrc":
                out[ZS_PREFIX + name[len("visual."):]] = ("ZS_image_encoder", shape)
        elif name != "logit_scale":
            out["text_encoder." + name] = ("frozen CLIP", shape)
        elif method != "mmrl":   # MMRL's CustomCLIP has no logit_scale (it scales by 100)
            out[name] = ("frozen CLIP", shape)
    return out
