"""Official prompt checkpoints in and out: files built as each official trainer saves them (names, shapes, mixed
fp16, frozen CLIP, buffers, optimizer and pickled scheduler), imported leaf by leaf, round trips, refusals."""
import os
import pickle
import re
import sys
from collections import OrderedDict

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from aple_jax import prompts as P  # noqa: E402
from aple_jax.clip.model import get_config  # noqa: E402
from aple_jax.clip.weights import load_clip  # noqa: E402
from aple_jax.errors import AplejaxError, CheckpointError, ConfigError  # noqa: E402
from aple_jax.interop import dassl, mapping  # noqa: E402
from aple_jax.interop.export_prompts import export  # noqa: E402
from aple_jax.interop.import_prompts import import_checkpoint  # noqa: E402
from aple_jax.prompt_files import read_leaves, read_prompts_meta  # noqa: E402
from aple_jax.run import run  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402
from tests.torch_modules import PromptedVisionTransformer, PromptKDStudent, StateDictModule  # noqa: E402
from tests.test_clip_parity import TINY_TEXT, TINY_VISION, hf_clip, hf_to_openai  # noqa: E402

TINY = get_config("tiny")
N_CLS = 5
EPOCHS = {"coop": 200, "kgcoop": 100, "cocoop": 10, "maple": 5, "ivlp": 20, "promptsrc": 20, "mma": 5, "mmrl": 10,
          "promptkd": 20}
MODEL = {"coop": "prompt_learner", "kgcoop": "prompt_learner", "cocoop": "prompt_learner",
         "maple": "MultiModalPromptLearner", "ivlp": "VLPromptLearner", "promptsrc": "VLPromptLearner",
         "mma": "adapter_learner", "mmrl": "MultiModalRepresentationLearner", "promptkd": "VLPromptLearner"}
# What each tiny config's prompt leaf is called in the official file (read from the official trainers, written
# here independently of aple_jax/interop/mapping.py): (official key, Linear weight stored (out, in): True, 1x1 conv
# weight stored (out, in, 1, 1): "conv").
EXPECTED = {
    "coop": {"text/ctx": ("ctx", False)},
    "kgcoop": {"text/ctx": ("ctx", False)},
    "cocoop": {"text/ctx": ("ctx", False),
               "meta_net/linear1/kernel": ("meta_net.linear1.weight", True),
               "meta_net/linear1/bias": ("meta_net.linear1.bias", False),
               "meta_net/linear2/kernel": ("meta_net.linear2.weight", True),
               "meta_net/linear2/bias": ("meta_net.linear2.bias", False)},
    "maple": {"text/ctx": ("prompt_learner.ctx", False),
              "text/deep_1": ("prompt_learner.compound_prompts_text.0", False),
              "coupling/proj_0/kernel": ("prompt_learner.proj.weight", True),
              "coupling/proj_0/bias": ("prompt_learner.proj.bias", False),
              "coupling/proj_1/kernel": ("prompt_learner.compound_prompt_projections.0.weight", True),
              "coupling/proj_1/bias": ("prompt_learner.compound_prompt_projections.0.bias", False)},
    "ivlp": {"text/ctx": ("prompt_learner.ctx", False),
             "text/deep_1": ("text_encoder.transformer.resblocks.1.VPT_shallow", False),
             "vision/shallow": ("image_encoder.VPT", False),
             "vision/deep_1": ("image_encoder.transformer.resblocks.1.VPT_shallow", False)},
}
EXPECTED["promptsrc"] = EXPECTED["ivlp"]
# MMA's tiny config adapts blocks 1-2 (from 1): the official ModuleLists are indexed by the block's layer_index
# (from 1), ours by the block (from 0); `down` and `shared` are Sequential(Linear, ReLU), `up` a bare Linear.
_TORCH_LEAF = {"kernel": "weight", "bias": "bias"}
EXPECTED["mma"] = {
    f"{ours}/block_{i - 1}/{part}/{leaf}": (f"{theirs}.{i}.{name}.{_TORCH_LEAF[leaf]}", leaf == "kernel")
    for i in (1, 2) for ours, theirs in (("text", "text_adapter"), ("vision", "visual_adapter"))
    for part, name in (("down", "down.0"), ("up", "up")) for leaf in _TORCH_LEAF}
EXPECTED["mma"].update({f"shared/block_{i - 1}/{leaf}": (f"shared_adapter.{i}.0.{_TORCH_LEAF[leaf]}", leaf == "kernel")
                        for i in (1, 2) for leaf in _TORCH_LEAF})
# MMRL's tiny config puts the tokens before both blocks: projection k feeds block k + 1 (from 1).
EXPECTED["mmrl"] = {"rep_tokens": ("representation_learner.compound_rep_tokens", False),
                    "vision/proj_rep": ("image_encoder.proj_rep", False)}
EXPECTED["mmrl"].update({f"{tower}/r2{t}proj_{k}/{leaf}": (f"representation_learner.compound_rep_tokens_r2{t}proj.{k}."
                                                          f"{_TORCH_LEAF[leaf]}", leaf == "kernel")
                         for tower, t in (("text", "t"), ("vision", "v")) for k in (0, 1) for leaf in _TORCH_LEAF})
# PromptKD's student: IVLP's vision prompts and `VPT_image_trans.conv1` = Sequential(conv, BatchNorm, ReLU, conv).
EXPECTED["promptkd"] = {"vision/shallow": ("image_encoder.VPT", False),
                        "vision/deep_1": ("image_encoder.transformer.resblocks.1.VPT_shallow", False),
                        "proj/fc1/kernel": ("VPT_image_trans.conv1.0.weight", "conv"),
                        "proj/fc1/bias": ("VPT_image_trans.conv1.0.bias", False),
                        "proj/bn/scale": ("VPT_image_trans.conv1.1.weight", False),
                        "proj/bn/bias": ("VPT_image_trans.conv1.1.bias", False),
                        "proj_stats/mean": ("VPT_image_trans.conv1.1.running_mean", False),
                        "proj_stats/var": ("VPT_image_trans.conv1.1.running_var", False),
                        "proj/fc2/kernel": ("VPT_image_trans.conv1.3.weight", "conv"),
                        "proj/fc2/bias": ("VPT_image_trans.conv1.3.bias", False)}
BUFFERS = ("token_prefix", "token_suffix", "token_embedding", "tokenized_prompts", "prompt_embeddings")
FP16_SUFFIXES = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias", "c_fc.weight", "c_fc.bias",
                 "c_proj.weight", "c_proj.bias", "conv1.weight", "proj", "text_projection")


@pytest.fixture(scope="module")
def hf_tiny():
    """A tiny transformers CLIP with the tiny preset's shapes (random weights, via the parity tests)."""
    return hf_clip(TINY_TEXT, TINY_VISION, projection_dim=TINY.embed_dim)


@pytest.fixture(scope="module")
def openai_tiny(hf_tiny):
    """The tiny CLIP in OpenAI names."""
    return hf_to_openai(hf_tiny.state_dict())


def _frozen(openai_sd, method):
    """The frozen CLIP of a whole-model checkpoint as `convert_weights` + PREC=fp16 leave it (no token table)."""
    def half(name, t):
        return t.half() if name.endswith(FP16_SUFFIXES) else t.float()
    out = OrderedDict(logit_scale=openai_sd["logit_scale"].float())
    for name, t in openai_sd.items():
        if name.startswith("visual."):
            out["image_encoder." + name[7:]] = half(name, t)
    for name, t in openai_sd.items():
        if not name.startswith("visual.") and name not in ("logit_scale", "token_embedding.weight",
                                                           "input_resolution", "context_length", "vocab_size"):
            out["text_encoder." + name] = half(name, t)
    if method == "promptsrc":
        out.update(("prompt_learner.ZS_image_encoder." + n[7:], half(n, t)) for n, t in openai_sd.items()
                   if n.startswith("visual."))
    return out


def ours_layout(value, kind):
    """An official tensor in our leaf's layout (EXPECTED's kind)."""
    if kind == "conv":
        value = value[:, :, 0, 0]
    return value.T if kind else value


def official_state_dict(method, openai_sd, n_ctx=None, depth=2, vision_depth=2, seed=0, csc=False):
    """The state dict the official trainer of `method` saves, on the tiny preset's shapes (fp16 as PREC=fp16)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)   # noqa: E731
    tw, vw, emb = TINY.text_width, TINY.vision_width, TINY.embed_dim
    if method == "mma":
        return mma_state_dict(rnd, n_blocks=depth)
    if method == "promptkd":
        return promptkd_file(promptkd_student(openai_sd, n_ctx or 4, vision_depth, seed=seed))
    n = n_ctx or (2 if method == "maple" else 4)
    buffers = {"token_prefix": rnd(N_CLS, 1, tw).half(), "token_suffix": rnd(N_CLS, 77 - 1 - n, tw).half()}
    sd = OrderedDict()
    if method in ("coop", "kgcoop", "cocoop"):
        sd["ctx"] = (rnd(N_CLS, n, tw) if csc else rnd(n, tw)).half()
        if method == "kgcoop":
            sd["bias_vectors"] = rnd(1, 512).half()
        sd.update(buffers)
        if method == "kgcoop":
            sd["meta_net.linear1.weight"], sd["meta_net.linear1.bias"] = rnd(512, 512).half(), rnd(512).half()
        if method == "cocoop":
            hidden = emb // 16
            sd["meta_net.linear1.weight"], sd["meta_net.linear1.bias"] = rnd(hidden, emb).half(), rnd(hidden).half()
            sd["meta_net.linear2.weight"], sd["meta_net.linear2.bias"] = rnd(tw, emb // 16).half(), rnd(tw).half()
        return sd
    frozen = _frozen(openai_sd, method)
    if method == "mmrl":   # the whole CustomCLIP, which has no logit_scale; the representation learner
        frozen.pop("logit_scale")
        sd["prompt_embeddings"] = rnd(N_CLS, 77, tw)
        sd["representation_learner.compound_rep_tokens"] = rnd(n_ctx or 5, 512)
        for name, width in (("r2vproj", vw), ("r2tproj", tw)):
            for k in range(depth):
                sd[f"representation_learner.compound_rep_tokens_{name}.{k}.weight"] = rnd(width, 512)
                sd[f"representation_learner.compound_rep_tokens_{name}.{k}.bias"] = rnd(width)
        sd.update(frozen)
        sd["image_encoder.proj_rep"] = rnd(vw, emb)
        return sd
    sd["logit_scale"] = frozen.pop("logit_scale")
    sd["prompt_learner.ctx"] = rnd(n, tw).half()
    if method == "maple":
        for k in range(depth - 1):
            sd[f"prompt_learner.compound_prompts_text.{k}"] = rnd(n, tw)
        sd.update(("prompt_learner." + k, v) for k, v in buffers.items())
        sd["prompt_learner.proj.weight"], sd["prompt_learner.proj.bias"] = rnd(vw, tw).half(), rnd(vw).half()
        for k in range(depth - 1):
            sd[f"prompt_learner.compound_prompt_projections.{k}.weight"] = rnd(vw, tw)
            sd[f"prompt_learner.compound_prompt_projections.{k}.bias"] = rnd(vw)
    else:
        sd.update(("prompt_learner." + k, v) for k, v in buffers.items())
        sd.update((k, v) for k, v in frozen.items() if k.startswith("prompt_learner.ZS_image_encoder."))
        if vision_depth:
            sd["image_encoder.VPT"] = rnd(n, vw)
        for i in range(1, vision_depth):
            sd[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = rnd(n, vw)
        for i in range(1, depth):
            sd[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = rnd(n, tw)
    sd.update((k, v) for k, v in frozen.items() if not k.startswith("prompt_learner."))
    return sd


def mma_state_dict(rnd, n_blocks=2, dim=32, start=1):
    """MMA's `adapter_learner` state dict (PREC amp: fp32) for blocks start..start+n_blocks-1 (from 1), in its
    order: the buffers, then text_adapter, visual_adapter and shared_adapter (None entries hold no keys)."""
    tw, vw = TINY.text_width, TINY.vision_width
    ids = torch.zeros(N_CLS, 77, dtype=torch.long)
    ids[:, :6] = torch.tensor([998, 5, 6, 7, 8, 999])
    sd = OrderedDict(token_embedding=rnd(N_CLS, 77, tw), tokenized_prompts=ids)
    blocks = range(start, start + n_blocks)
    for tower, width in (("text_adapter", tw), ("visual_adapter", vw)):
        for i in blocks:
            sd[f"{tower}.{i}.down.0.weight"], sd[f"{tower}.{i}.down.0.bias"] = rnd(dim, width), rnd(dim)
            sd[f"{tower}.{i}.up.weight"], sd[f"{tower}.{i}.up.bias"] = rnd(width, dim), rnd(width)
    for i in blocks:
        sd[f"shared_adapter.{i}.0.weight"], sd[f"shared_adapter.{i}.0.bias"] = rnd(dim, dim), rnd(dim)
    return sd


def promptkd_student(openai_sd, n_ctx=4, depth=2, teacher_width=TINY.embed_dim, seed=0):
    """PromptKD's student (the official module structure) on the tiny CLIP, in eval mode: random vision prompts,
    projector and BatchNorm statistics, its 1x1 convs fp16-representable (`convert_weights` stores them fp16)."""
    g = torch.Generator().manual_seed(seed)
    vision = PromptedVisionTransformer(TINY.vision_width, TINY.vision_layers, TINY.vision_heads,
                                       TINY.vision_patch_size, TINY.image_resolution, TINY.embed_dim, n_ctx, depth)
    student = PromptKDStudent(vision, TINY.embed_dim, teacher_width).eval()
    frozen = {"image_encoder." + k[7:]: v for k, v in openai_sd.items() if k.startswith("visual.")}
    frozen["logit_scale"] = openai_sd["logit_scale"]
    with torch.no_grad():
        for key, value in student.state_dict().items():
            if key in frozen:
                value.copy_(frozen[key])
            elif key.endswith("num_batches_tracked"):
                value.fill_(1234)
            elif key.endswith("running_var"):
                value.copy_(0.5 + torch.rand(value.shape, generator=g))
            else:
                value.copy_(0.3 * torch.randn(value.shape, generator=g))
                if key.startswith("VPT_image_trans.") and key.split(".")[2] in ("0", "3"):
                    value.copy_(value.half().float())
    return student


def promptkd_file(student):
    """The student's state dict as the official trainer saves it under PREC=fp16: the projector's convs and the
    image tower's Linear/conv weights fp16, the prompts, BatchNorm and LayerNorms fp32."""
    out = OrderedDict()
    for key, value in student.state_dict().items():
        half = (key.startswith("VPT_image_trans.") and key.split(".")[2] in ("0", "3")) or (
            key.startswith("image_encoder.") and key.endswith(FP16_SUFFIXES) and "VPT" not in key)
        out[key] = value.clone().half() if half else value.clone()
    return out


def save_official(root, method, sd, epoch=None, successor=None, zipped=True):
    """`<root>/<ModelName>/model.pth.tar-<epoch>` as Dassl's save_checkpoint writes it: state_dict, epoch, the SGD
    state over every parameter (momentum only for trainable ones), a pickled scheduler object (or `successor`),
    val_result; `zipped=False` writes torch's legacy format."""
    epoch = epoch or EPOCHS[method]
    params = {k: torch.nn.Parameter(v.float().clone()) for k, v in sd.items() if not k.endswith(BUFFERS)}
    trainable = {key for key, _ in EXPECTED[method].values()}
    optim = torch.optim.SGD(list(params.values()), lr=0.002, momentum=0.9, weight_decay=5e-4)
    for k, p in params.items():
        p.grad = torch.ones_like(p) if k in trainable else None
    optim.step()
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=epoch)
    scheduler = {"successor": successor or cosine, "warmup_epoch": 1, "cons_lr": 1e-5, "last_epoch": epoch, "base_lrs": [0.002]}
    path = os.path.join(root, MODEL[method], f"model.pth.tar-{epoch}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"state_dict": sd, "epoch": epoch, "optimizer": optim.state_dict(), "scheduler": scheduler,
                "val_result": None}, path, _use_new_zipfile_serialization=zipped)
    with open(os.path.join(os.path.dirname(path), "checkpoint"), "w") as f:
        f.write(os.path.basename(path) + "\n")
    return path


def config(method, **overrides):
    return tiny_config(method, **overrides)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_official_checkpoint_imports_leaf_by_leaf_and_round_trips_bit_exact(method, openai_tiny, tmp_path):
    sd = official_state_dict(method, openai_tiny)
    path = save_official(str(tmp_path / "output"), method, sd)
    meta = import_checkpoint(path, config(method), str(tmp_path / "prompts.npz"))
    leaves = read_leaves(tmp_path / "prompts.npz")
    assert sorted(leaves) == sorted(EXPECTED[method])
    for ours, (theirs, kind) in EXPECTED[method].items():
        np.testing.assert_array_equal(leaves[ours], ours_layout(sd[theirs].float().numpy(), kind), err_msg=ours)
        assert leaves[ours].dtype == np.float32
    assert meta["source"] == {"checkpoint": path, "epoch": EPOCHS[method], "method": method, "format": "dassl",
                              "model_name": MODEL[method]}
    assert read_prompts_meta(tmp_path / "prompts.npz")["config"]["method"] == method

    # export into the official layout, and the official load_model: drop the buffers, load_state_dict(strict=False)
    written = export(tmp_path / "prompts.npz", tmp_path / "exported")
    assert written == str(tmp_path / "exported" / MODEL[method] / f"model.pth.tar-{EPOCHS[method]}")
    assert (tmp_path / "exported" / MODEL[method] / "checkpoint").read_text() == f"model.pth.tar-{EPOCHS[method]}\n"
    saved = torch.load(written, map_location="cpu", weights_only=True)
    assert saved["epoch"] == EPOCHS[method] and set(saved) >= {"state_dict", "optimizer", "scheduler"}
    assert sorted(saved["state_dict"]) == sorted(k for k, _ in EXPECTED[method].values())
    model = StateDictModule(sd)
    result = model.load_state_dict(saved["state_dict"], strict=False)
    assert result.unexpected_keys == []
    for key, value in saved["state_dict"].items():
        np.testing.assert_array_equal(value.numpy(), sd[key].float().numpy(), err_msg=key)

    # ... and back: bit-exact
    import_checkpoint(written, config(method), str(tmp_path / "again.npz"))
    again = read_leaves(tmp_path / "again.npz")
    assert sorted(again) == sorted(leaves)
    for k in leaves:
        assert again[k].dtype == leaves[k].dtype and again[k].tobytes() == leaves[k].tobytes(), k


class GradientScale(torch.autograd.Function):
    """The identity whose backward multiplies the gradient by `factor` (MMA's `gradient_scale_layer`)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def mma_reference(model, sd, scale, pixels, ids, layers=("input", "output")):
    """The official MMA forward on a transformers CLIP, as `ModifiedResidualAttentionBlock` computes it: each adapted
    block (the state dict's index l, from 1) adds `gsl(scale * up(shared(down(ln_1(gsl(x, scale))))), 1 / scale)` of
    its input x to its output; `layers` names the gradient-scale layers kept. (image features, text features),
    differentiable in `sd`'s tensors."""
    F = torch.nn.functional

    def gsl(side, x, factor):
        return GradientScale.apply(x, factor) if side in layers else x

    def hook(tower, index):
        def add(module, args, output):
            y = module.layer_norm1(gsl("input", args[0], scale))
            y = F.relu(F.linear(y, sd[f"{tower}.{index}.down.0.weight"], sd[f"{tower}.{index}.down.0.bias"]))
            y = F.relu(F.linear(y, sd[f"shared_adapter.{index}.0.weight"], sd[f"shared_adapter.{index}.0.bias"]))
            y = F.linear(y, sd[f"{tower}.{index}.up.weight"], sd[f"{tower}.{index}.up.bias"]) * scale
            return output + gsl("output", y, 1.0 / scale)
        return add

    handles = [layer.register_forward_hook(hook(tower, i + 1))
               for tower, layers_ in (("text_adapter", model.text_model.encoder.layers),
                                      ("visual_adapter", model.vision_model.encoder.layers))
               for i, layer in enumerate(layers_) if f"{tower}.{i + 1}.up.weight" in sd]
    try:
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(input_ids=torch.as_tensor(ids, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    return [getattr(x, "pooler_output", x) for x in (img, txt)]


def mma_case(hf_tiny, tmp_path, scale):
    """An official MMA file (random adapters) and our method with it imported: (method, params, prompts, class
    texts, official state dict, pixels (torch), token ids, our images)."""
    import jax.numpy as jnp

    from aple_jax import interop
    from aple_jax.clip.backbone import Backbone
    from aple_jax.clip.model import CLIP
    from aple_jax.clip.tokenizer import Tokenizer
    from aple_jax.methods import build_method

    hf_tiny.save_pretrained(str(tmp_path / "hf"))
    cfg, params = load_clip(str(tmp_path / "hf"))
    g = torch.Generator().manual_seed(3)
    sd = mma_state_dict(lambda *shape: 0.2 * torch.randn(*shape, generator=g))
    path = save_official(str(tmp_path / "output"), "mma", sd)
    method = build_method(config("mma", mma__scale=scale), Backbone(CLIP(cfg)), Tokenizer.builtin_tiny())
    prompts = interop.load_prompts(path, method, jax.eval_shape(method.init, jax.random.key(0), params))
    names = ["red circle", "green square", "blue triangle"]
    texts = method.class_texts(params, names)
    ids, _ = method.tokenizer.tokenize(method.eval_texts(names, ""), cfg.context_length)
    pixels = torch.randn(3, 3, cfg.image_resolution, cfg.image_resolution, generator=g)
    images = jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1))
    return method, params, prompts, texts, sd, pixels, ids, images


def test_an_imported_mma_checkpoint_gives_the_official_forwards_features(hf_tiny, tmp_path):
    """Adapters from an official MMA file, on the same CLIP, give the features and logits of the official forward
    (a torch reference with the adapters hooked into transformers' blocks): blocks, towers and the shared
    projection land where the official code applies them."""
    import jax.numpy as jnp

    from aple_jax import losses

    scale = 0.5   # the recipe's 0.001 moves features by ~1e-3: too little to tell a misplaced adapter apart
    method, params, prompts, texts, sd, pixels, ids, images = mma_case(hf_tiny, tmp_path, scale)
    img = method.image_features(prompts, params, images)
    txt = method.text_features(prompts, params, texts)
    with torch.no_grad():
        want_img, want_txt = (x.numpy() for x in mma_reference(hf_tiny, sd, scale, pixels, ids))
        plain_img, plain_txt = (x.numpy() for x in mma_reference(hf_tiny, {}, scale, pixels, ids))
    logit_scale = float(np.exp(hf_tiny.logit_scale.item()))
    want = losses.cosine_logits(logit_scale, jnp.asarray(want_img), jnp.asarray(want_txt))
    got = losses.cosine_logits(method.backbone.logit_scale(params), img, txt)
    for name, ours, theirs, plain in (("image", img, want_img, plain_img), ("text", txt, want_txt, plain_txt)):
        assert np.linalg.norm(theirs - plain) > 1e-2 * np.linalg.norm(plain), name   # the adapters matter
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_mma_gradients_are_the_official_gradient_scale_layers(hf_tiny, tmp_path):
    """At the recipe's scale 0.001, the CE gradient of every adapter leaf (both towers, both blocks, the shared
    projections) equals the official code's, whose gradient-scale layers make it 1/scale times the true gradient
    for the adapter's own leaves and leave the gradient to its input (the earlier blocks') true."""
    import jax.numpy as jnp

    from aple_jax import losses

    scale = 0.001
    method, params, prompts, texts, sd, pixels, ids, images = mma_case(hf_tiny, tmp_path, scale)
    labels = np.array([2, 0, 1])

    def ours(tree):
        logits = losses.cosine_logits(method.backbone.logit_scale(params), method.image_features(tree, params, images),
                                      method.text_features(tree, params, texts))
        return losses.cross_entropy(logits, jnp.asarray(labels))

    loss, grads = jax.jit(jax.value_and_grad(ours))(prompts)
    grads = P.flatten(grads)

    def official(layers):
        leaves = {k: (v.clone().requires_grad_(True) if v.is_floating_point() and k not in BUFFERS else v)
                  for k, v in sd.items()}
        img, txt = mma_reference(hf_tiny, leaves, scale, pixels, ids, layers)
        img, txt = (torch.nn.functional.normalize(x, dim=-1) for x in (img, txt))
        ce = torch.nn.functional.cross_entropy(hf_tiny.logit_scale.exp() * img @ txt.t(), torch.as_tensor(labels))
        ce.backward()
        return ce.item(), {ours_: (leaves[theirs].grad.T if linear else leaves[theirs].grad).numpy()
                           for ours_, (theirs, linear) in EXPECTED["mma"].items()}

    want_loss, want = official(("input", "output"))
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    assert sorted(grads) == sorted(want)
    for path, g in want.items():
        np.testing.assert_allclose(np.asarray(grads[path]), g, rtol=2e-4, atol=1e-5 * np.abs(g).max(), err_msg=path)
    # Together the two layers make every adapter gradient 1/scale times the true one (the gradient reaching the
    # residual stream stays true); without the input-side layer block 1's adapters, whose output feeds block 2's
    # adapter input, get another gradient.
    _, true = official(())
    for path, g in want.items():
        np.testing.assert_allclose(true[path] / scale, g, rtol=1e-4, atol=1e-5 * np.abs(g).max(), err_msg=path)
    _, output_only = official(("output",))
    assert not any(np.allclose(output_only[p], g, rtol=0.01, atol=0) for p, g in want.items() if "block_0" in p)


def test_a_promptkd_student_gives_the_official_forwards_features_both_ways(hf_tiny, openai_tiny, tmp_path):
    """PromptKD's student in the official module structure (vision prompts, projector in eval mode: BatchNorm's
    running statistics) and ours on the same CLIP and weights agree: imported from its file, and ours exported and
    loaded back as the official `load_model` does (`load_state_dict(strict=False)` into the built model)."""
    import jax.numpy as jnp

    from aple_jax import interop, losses, prompt_files
    from aple_jax.clip.backbone import Backbone
    from aple_jax.clip.model import CLIP
    from aple_jax.clip.tokenizer import Tokenizer
    from aple_jax.methods.promptkd import PromptKD, TeacherWidth

    hf_tiny.save_pretrained(str(tmp_path / "hf"))
    cfg, params = load_clip(str(tmp_path / "hf"))
    width = 48   # a teacher wider than the student (ViT-B/16 512 -> ViT-L/14 768): a transposed kernel cannot fit
    student = promptkd_student(openai_tiny, teacher_width=width, seed=5)
    path = save_official(str(tmp_path / "output"), "promptkd", promptkd_file(student))
    method = PromptKD(config("promptkd"), Backbone(CLIP(cfg)), Tokenizer.builtin_tiny(), teacher=TeacherWidth(width))
    prompts = interop.load_prompts(path, method, jax.eval_shape(method.init, jax.random.key(0), params))
    g = torch.Generator().manual_seed(6)
    pixels = torch.randn(4, 3, cfg.image_resolution, cfg.image_resolution, generator=g)
    text = torch.nn.functional.normalize(torch.randn(5, width, generator=g), dim=-1)   # the teacher's, cached

    def ours(tree):
        img = method.image_features(tree, params, jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1)))
        return np.asarray(img / jnp.linalg.norm(img, axis=-1, keepdims=True)), np.asarray(
            losses.cosine_logits(method.backbone.logit_scale(params), img, jnp.asarray(text.numpy())))

    def theirs(model):
        with torch.no_grad():
            img, scale = model(pixels)
        return img.numpy(), (scale * img @ text.T).numpy()

    got, want = ours(prompts), theirs(student)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        batch_stats = student.train()(pixels)[0].numpy()   # BatchNorm on the batch: not what a test scores
    student.eval()
    assert np.abs(batch_stats - want[0]).max() > 1e-2

    # ours -> an official file -> the official load_model into a freshly built student: the same features
    tree = jax.tree.map(lambda x: np.asarray(x) * 0.7 + 0.05, prompts)
    tree["proj_stats"]["var"] = np.asarray(prompts["proj_stats"]["var"]) * 1.5
    prompt_files.save_prompts(tmp_path / "ours.npz", tree, {"config": {"method": "promptkd"}})
    written = export(tmp_path / "ours.npz", tmp_path / "exported", epoch=20)
    assert written == str(tmp_path / "exported" / "VLPromptLearner" / "model.pth.tar-20")
    fresh = promptkd_student(openai_tiny, teacher_width=width, seed=9)
    saved = torch.load(written, map_location="cpu", weights_only=True)["state_dict"]
    assert sorted(saved) == sorted(key for key, _ in EXPECTED["promptkd"].values())
    assert fresh.load_state_dict(saved, strict=False).unexpected_keys == []
    got, want = ours(tree), theirs(fresh)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)


def test_clip_shapes_are_openais_layout(openai_tiny):
    shapes = {k: tuple(v.shape) for k, v in openai_tiny.items() if k not in ("input_resolution", "context_length",
                                                                             "vocab_size")}
    assert mapping.clip_shapes(TINY) == shapes


def test_methods_are_detected_from_their_keys(openai_tiny):
    for method in EXPECTED:
        assert mapping.detect_method(official_state_dict(method, openai_tiny)) == method
    assert mapping.detect_method({"visual.conv1.weight": 0}) is None


def _refusal(tmp_path, method, sd, cfg, pattern):
    path = save_official(str(tmp_path / "o"), method, sd)
    with pytest.raises(AplejaxError, match=pattern):
        import_checkpoint(path, cfg, str(tmp_path / "p.npz"))
    assert not (tmp_path / "p.npz").exists()


def test_another_methods_checkpoint_is_refused(openai_tiny, tmp_path):
    sd = official_state_dict("ivlp", openai_tiny)
    _refusal(tmp_path, "ivlp", sd, config("maple"), r"is a IVLP checkpoint \(VLPromptLearner\), but this config's "
                                                    r"method is 'maple'")
    sd = official_state_dict("promptsrc", openai_tiny)
    _refusal(tmp_path, "promptsrc", sd, config("ivlp"), r"is a PromptSRC checkpoint.*method is 'ivlp'")
    _refusal(tmp_path, "kgcoop", official_state_dict("kgcoop", openai_tiny), config("coop"),
             r"is a KgCoOp checkpoint.*method is 'coop'")
    _refusal(tmp_path, "promptkd", official_state_dict("promptkd", openai_tiny), config("ivlp"),
             r"is a PromptKD checkpoint \(VLPromptLearner\), but this config's method is 'ivlp'")
    _refusal(tmp_path, "promptsrc", official_state_dict("promptsrc", openai_tiny), config("promptkd"),
             r"is a PromptSRC checkpoint.*method is 'promptkd'")


def test_a_plug_in_run_has_no_official_format_either_way(openai_tiny, tmp_path):
    """A +DePT or +DPC model is not its base method's: neither read from nor written as the base method's file."""
    from aple_jax.prompt_files import prompts_meta, save_prompts
    from configs.common import apply_plugin
    cfg = config("coop")
    with cfg.unlocked():
        apply_plugin(cfg, "dept")
    _refusal(tmp_path, "coop", official_state_dict("coop", openai_tiny), cfg, r"'dept' plug-in has no official")
    leaves = {"text/ctx": np.zeros((4, 32), np.float32)}
    save_prompts(tmp_path / "dept.npz", P.unflatten(leaves), prompts_meta(cfg))
    with pytest.raises(ConfigError, match=r"dept\.npz: a run with the 'dept' plug-in has no official checkpoint"):
        export(tmp_path / "dept.npz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_another_backbones_checkpoint_is_refused(tmp_path):
    other = hf_to_openai(hf_clip(TINY_TEXT, dict(TINY_VISION, hidden_size=96, intermediate_size=384),
                                 projection_dim=TINY.embed_dim).state_dict())
    sd = official_state_dict("maple", other)
    sd["prompt_learner.proj.weight"] = torch.zeros(96, 64).half()   # the coupling maps into that vision width
    sd["prompt_learner.compound_prompt_projections.0.weight"] = torch.zeros(96, 64)
    sd["prompt_learner.compound_prompt_projections.0.bias"] = torch.zeros(96)
    sd["prompt_learner.proj.bias"] = torch.zeros(96).half()
    _refusal(tmp_path, "maple", sd, config("maple"),
             r"does not fit this config: checkpoint CLIP vision width 96 patch 8, backbone 'tiny' vision width 64 "
             r"patch 8; mis-shaped \(36\): prompt_learner\.proj\.weight \(96, 64\) \(expected \(64, 64\)\)")


def test_another_prompt_length_or_depth_is_refused(openai_tiny, tmp_path):
    _refusal(tmp_path / "a", "maple", official_state_dict("maple", openai_tiny, n_ctx=3), config("maple"),
             r"checkpoint prompts\.text\.n_ctx=3, config 2; .*mis-shaped .*prompt_learner\.ctx \(3, 64\) "
             r"\(expected \(2, 64\)\)")
    _refusal(tmp_path / "b", "maple", official_state_dict("maple", openai_tiny, depth=3), config("maple"),
             r"checkpoint prompts\.text\.depth=3, config 2; unexpected \(3\): "
             r"prompt_learner\.compound_prompts_text\.1, prompt_learner\.compound_prompt_projections\.1\.weight")
    _refusal(tmp_path / "c", "maple", official_state_dict("maple", openai_tiny),
             config("maple", prompts__text__depth=1), r"unexpected \(3\): prompt_learner\.compound_prompts_text\.0")
    _refusal(tmp_path / "d", "ivlp", official_state_dict("ivlp", openai_tiny, vision_depth=1), config("ivlp"),
             r"checkpoint prompts\.vision\.depth=1, config 2; missing \(1\): "
             r"image_encoder\.transformer\.resblocks\.1\.VPT_shallow")


def test_mmrl_files_of_either_release_import_and_other_shapes_are_refused(openai_tiny, tmp_path):
    """Releases before the buffer `prompt_embeddings` (and the model name MultiModalRepresentationLearner) import
    alike; another token count or first block, and a logit_scale MMRL's CustomCLIP does not have, are named."""
    sd = official_state_dict("mmrl", openai_tiny)
    del sd["prompt_embeddings"]
    path = save_official(str(tmp_path / "old"), "mmrl", sd)
    os.rename(os.path.dirname(path), tmp_path / "old" / "MultiModalPromptLearner")
    import_checkpoint(str(tmp_path / "old" / "MultiModalPromptLearner" / "model.pth.tar-10"), config("mmrl"),
                      str(tmp_path / "old.npz"))
    assert read_leaves(tmp_path / "old.npz")["rep_tokens"].tobytes() == \
        sd["representation_learner.compound_rep_tokens"].numpy().tobytes()
    _refusal(tmp_path / "a", "mmrl", official_state_dict("mmrl", openai_tiny, n_ctx=4), config("mmrl"),
             r"MMRL checkpoint\) does not fit this config: checkpoint mmrl\.n_tokens=4, config 5; mis-shaped \(1\): "
             r"representation_learner\.compound_rep_tokens \(4, 512\) \(expected \(5, 512\)\)")
    _refusal(tmp_path / "b", "mmrl", official_state_dict("mmrl", openai_tiny, depth=1), config("mmrl"),
             r"missing \(4\): representation_learner\.compound_rep_tokens_r2tproj\.1\.bias, ")
    _refusal(tmp_path / "c", "mmrl", {**official_state_dict("mmrl", openai_tiny), "logit_scale": torch.ones(())},
             config("mmrl"), r"unexpected \(1\): logit_scale")
    _refusal(tmp_path / "d", "mmrl", official_state_dict("mmrl", openai_tiny), config("mmrl", mmrl__plus=True),
             r"MMRL has no official counterpart of our prompt leaf '.*': this config's trainable tree has no official")


def test_mma_adapters_of_other_blocks_or_width_are_refused(tmp_path):
    rnd = torch.randn
    _refusal(tmp_path / "a", "mma", mma_state_dict(rnd, n_blocks=1, start=2), config("mma"),
             r"MMA checkpoint\) does not fit this config: checkpoint mma\.start=2, config 1; missing \(10\): "
             r"shared_adapter\.1\.0\.bias, .*text_adapter\.1\.down\.0\.weight, ")
    _refusal(tmp_path / "b", "mma", mma_state_dict(rnd, n_blocks=3), config("mma"),
             r"checkpoint mma\.end=3, config 2; unexpected \(10\): text_adapter\.3\.down\.0\.weight")
    _refusal(tmp_path / "c", "mma", mma_state_dict(rnd, dim=16), config("mma"),
             r"checkpoint mma\.dim=16, config 32; mis-shaped \(16\): text_adapter\.1\.down\.0\.weight "
             r"\(16, 64\) \(expected \(32, 64\)\)")
    _refusal(tmp_path / "d", "mma", mma_state_dict(rnd), config("maple"),
             r"is a MMA checkpoint \(adapter_learner\), but this config's method is 'maple'")


@pytest.mark.parametrize("method,key", [("maple", "prompt_learner.compound_prompt_projections.0.bias"),
                                        ("ivlp", "text_encoder.transformer.resblocks.1.VPT_shallow"),
                                        ("cocoop", "meta_net.linear2.weight"),
                                        ("promptsrc", "prompt_learner.ZS_image_encoder.ln_post.bias"),
                                        ("maple", "text_encoder.ln_final.weight"),
                                        ("mma", "shared_adapter.2.0.bias"),
                                        ("mmrl", "representation_learner.compound_rep_tokens_r2tproj.1.bias"),
                                        ("mmrl", "image_encoder.proj_rep"),
                                        ("mmrl", "text_encoder.transformer.resblocks.1.ln_2.bias"),
                                        ("promptkd", "VPT_image_trans.conv1.1.running_var"),
                                        ("promptkd", "image_encoder.ln_post.weight")])
def test_a_missing_tensor_is_named(method, key, openai_tiny, tmp_path):
    sd = official_state_dict(method, openai_tiny)
    del sd[key]
    _refusal(tmp_path, method, sd, config(method), rf"missing \(1\): {re.escape(key)}")


@pytest.mark.parametrize("method,key", [("maple", "prompt_learner.proj.weight"), ("coop", "ctx"),
                                        ("ivlp", "image_encoder.transformer.resblocks.0.attn.in_proj_weight"),
                                        ("maple", "prompt_learner.token_suffix"), ("mma", "visual_adapter.1.up.weight"),
                                        ("mma", "token_embedding"), ("mmrl", "prompt_embeddings"),
                                        ("mmrl", "representation_learner.compound_rep_tokens"),
                                        ("promptkd", "VPT_image_trans.conv1.3.weight"),
                                        ("promptkd", "image_encoder.transformer.resblocks.1.VPT_shallow")])
def test_a_misshaped_tensor_is_named(method, key, openai_tiny, tmp_path):
    sd = official_state_dict(method, openai_tiny)
    sd[key] = sd[key][..., :-1].clone()
    _refusal(tmp_path, method, sd, config(method), rf"mis-shaped \(1\): {re.escape(key)} ")


def test_class_specific_context_unknown_files_and_aple_are_refused(openai_tiny, tmp_path):
    _refusal(tmp_path / "a", "coop", official_state_dict("coop", openai_tiny, csc=True), config("coop"),
             r"class-specific context \(CSC=True")
    path = str(tmp_path / "clip.pth")
    torch.save({k: v for k, v in openai_tiny.items()}, path)
    with pytest.raises(CheckpointError, match=r"clip\.pth is not a prompt checkpoint of CoOp, KgCoOp, CoCoOp"):
        import_checkpoint(path, config("coop"), str(tmp_path / "p.npz"))
    with pytest.raises(ConfigError, match="APLe has no official PyTorch code"):
        import_checkpoint(path, config("aple"), str(tmp_path / "p.npz"))
    with pytest.raises(ConfigError, match="APLe has no official PyTorch code"):
        export(tmp_path / "whatever.npz", tmp_path / "out", method="aple", epoch=1)
    (tmp_path / "broken.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"cannot read PyTorch checkpoint .*broken\.pth"):
        import_checkpoint(str(tmp_path / "broken.pth"), config("coop"), str(tmp_path / "p.npz"))


def test_missing_torch_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(CheckpointError) as e:
        dassl.read("model.pth.tar-5")
    assert "needs torch" in str(e.value) and e.value.hint == "pip install torch==2.13.0 (the CPU build is enough)"


# ----------------------------------------------------------------------------------- files are data, never code

class Trojan:
    """A pickled 'scheduler' that, unpickled in full (`weights_only=False`), calls `call(arg)`."""

    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


def trojans(marker):
    """(payload, the global it is refused by): each, if run, creates the file `marker`."""
    import builtins
    import subprocess
    return [(Trojan(builtins.exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
            (Trojan(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
            (Trojan(subprocess.check_call, ["touch", str(marker)]), "subprocess.check_call")]


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_trojan_checkpoint_is_refused_by_name_and_runs_nothing(openai_tiny, tmp_path, zipped):
    marker = tmp_path / "pwned"
    sd = official_state_dict("coop", openai_tiny)
    for i, (payload, name) in enumerate(trojans(marker)):
        path = save_official(str(tmp_path / f"o{i}"), "coop", sd, successor=payload, zipped=zipped)
        pattern = rf"refusing to read {re.escape(path)}: it names {re.escape(name)}, which is not data"
        with pytest.raises(CheckpointError, match=pattern):
            dassl.read(path)
        with pytest.raises(CheckpointError, match=pattern):
            import_checkpoint(path, config("coop"), str(tmp_path / "p.npz"))
        with pytest.raises(CheckpointError, match=pattern):
            run(tiny_config("coop", eval_only_from=path, **SMALL), str(tmp_path / f"run{i}"))
        assert not marker.exists() and not (tmp_path / "p.npz").exists()
        weights = str(tmp_path / f"clip{i}.pt")   # CLIP weights as a torch-saved state dict
        torch.save({"logit_scale": torch.ones(()), "visual.proj": payload}, weights,
                   _use_new_zipfile_serialization=zipped)
        with pytest.raises(AplejaxError, match=rf"refusing to read {re.escape(weights)}: it names {re.escape(name)}"):
            load_clip(weights)
        assert not marker.exists()
    torch.load(save_official(str(tmp_path / "unsafe"), "coop", sd, successor=trojans(marker)[0][0], zipped=zipped),
               weights_only=False)   # the full unpickler runs the payload: the trojan is real
    assert marker.exists()


def test_a_legacy_format_checkpoint_reads_as_the_zip_one(openai_tiny, tmp_path):
    sd = official_state_dict("maple", openai_tiny)
    zipped = dassl.read(save_official(str(tmp_path / "zip"), "maple", sd))
    legacy = dassl.read(save_official(str(tmp_path / "legacy"), "maple", sd, zipped=False))
    assert legacy.epoch == zipped.epoch == EPOCHS["maple"] and sorted(legacy.state_dict) == sorted(sd)
    for key, value in zipped.state_dict.items():
        assert legacy.state_dict[key].dtype == value.dtype and legacy.state_dict[key].tobytes() == value.tobytes()


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(4)
        self.proj = torch.nn.Linear(4, 3, bias=False)   # an absent (None) parameter
        self.register_buffer("mask", torch.triu(torch.ones(2, 2)))

    def forward(self, x):
        return self.proj(self.ln(x))


class _Net(torch.nn.Module):
    """Nested, repeated (name-mangled) submodules, fp16 and integer tensors: what a traced OpenAI model holds."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.Sequential(_Block(), torch.nn.Sequential(_Block()))
        self.scale = torch.nn.Parameter(torch.randn(3, 4).half())
        self.register_buffer("input_resolution", torch.tensor(224))

    def forward(self, x):
        return self.blocks[1](self.blocks[0](x).new_ones(x.shape)) + self.scale.float().sum()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torchscript_archive_is_read_as_data_and_a_trojan_one_refused(tmp_path, monkeypatch):
    import zipfile

    from aple_jax import pickles
    from aple_jax.clip import torchscript

    traced = torch.jit.trace(_Net().eval(), torch.randn(2, 4))
    traced.save(str(tmp_path / "traced.pt"))
    torch.jit.script(_Net()).save(str(tmp_path / "scripted.pt"))
    for name in ("traced.pt", "scripted.pt"):
        want = torch.jit.load(str(tmp_path / name)).state_dict()
        monkeypatch.setattr(torch.jit, "load", None)   # nothing of the archive is compiled or run
        got = torchscript.read_state_dict(str(tmp_path / name))
        monkeypatch.undo()
        assert sorted(got) == sorted(want) and "blocks.1.0.mask" in got, name
        for key, value in want.items():
            assert got[key].dtype == value.numpy().dtype and got[key].tobytes() == value.numpy().tobytes(), key

    marker = tmp_path / "pwned"
    for i, (payload, refused) in enumerate(trojans(marker)):
        trojan = tmp_path / f"trojan{i}.pt"
        with zipfile.ZipFile(tmp_path / "traced.pt") as src, zipfile.ZipFile(trojan, "w") as dst:
            for item in src.infolist():
                data = src.read(item)
                dst.writestr(item, pickle.dumps({"x": payload}, protocol=2) if item.filename.endswith("/data.pkl")
                             else data)
        with pytest.raises(pickles.RefusedGlobalError, match=re.escape(refused)):
            torchscript.read_state_dict(str(trojan))
        with pytest.raises(AplejaxError, match=rf"refusing to read {re.escape(str(trojan))}: it names "
                                               rf"{re.escape(refused)}"):
            load_clip(str(trojan))
    assert not marker.exists()


def test_a_torchscript_tensor_record_that_reaches_past_its_storage_is_refused():
    from aple_jax.clip import torchscript
    storage = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(torchscript._rebuild_tensor(storage, 2, (2, 2), (2, 1)), [[2, 3], [4, 5]])
    assert torchscript._rebuild_tensor(storage, 6, (0, 3), (3, 1)).shape == (0, 3)
    for offset, size, stride in [(3, (2, 2), (2, 1)), (0, (7,), (1,)), (-1, (2,), (1,)), (0, (2,), (-1,)),
                                 (0, (2, 2), (1,))]:
        with pytest.raises(ValueError, match="tensor record"):
            torchscript._rebuild_tensor(storage, offset, size, stride)


def test_the_entry_points_refuse_a_trojan_checkpoint_in_one_line(openai_tiny, tmp_path):
    from tests import cli
    marker = tmp_path / "pwned"
    payload, name = trojans(marker)[0]
    path = save_official(str(tmp_path / "o"), "coop", official_state_dict("coop", openai_tiny), successor=payload)
    needle = f"refusing to read {path}: it names {name}"
    cli.assert_all_user_errors([
        cli.Case("import_prompts", cli.module("aple_jax.interop.import_prompts", path, "--config",
                                              "configs/coop.py:tiny", "--out", str(tmp_path / "p.npz")), needle),
        cli.Case("eval_only_from", cli.launch("--config", "configs/coop.py:tiny", "--workdir", str(tmp_path / "run"),
                                              f"--config.eval_only_from={path}"), needle)])
    assert not marker.exists() and not (tmp_path / "p.npz").exists()


# ------------------------------------------------------------------------------------------- evaluation

SMALL = dict(dataset__shots=4, batch_size=8, eval_batch_size=16, optim__epochs=1, log_every=2)


@pytest.fixture(scope="module")
def maple_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("maple")
    return str(workdir), run(tiny_config("maple", **SMALL), str(workdir))


@pytest.mark.slow
def test_an_imported_maple_checkpoint_evaluates_as_the_prompts_trained_here(maple_run, openai_tiny, tmp_path):
    """Prompts trained here, exported, completed with the frozen CLIP and buffers as the official trainer saves
    them, then evaluated from the official file and from its import equal evaluating the run itself."""
    workdir, trained = maple_run
    exported = export(workdir, tmp_path / "output")
    assert exported.endswith("MultiModalPromptLearner/model.pth.tar-1")
    full = official_state_dict("maple", openai_tiny)
    full.update(torch.load(exported, map_location="cpu", weights_only=True)["state_dict"])
    official = save_official(str(tmp_path / "official"), "maple", full, epoch=1)
    from_run = run(tiny_config("maple", eval_only_from=workdir, **SMALL), str(tmp_path / "a"))
    from_file = run(tiny_config("maple", eval_only_from=official, **SMALL), str(tmp_path / "b"))
    import_checkpoint(official, tiny_config("maple", **SMALL), str(tmp_path / "imported.npz"))
    from_npz = run(tiny_config("maple", eval_only_from=str(tmp_path / "imported.npz"), **SMALL), str(tmp_path / "c"))
    assert from_run["accuracy"] == trained["accuracy"]
    assert from_file["evals"] == from_run["evals"] and from_npz["evals"] == from_run["evals"]


def test_eval_only_from_an_official_checkpoint_of_another_shape_is_refused(openai_tiny, tmp_path):
    path = save_official(str(tmp_path / "o"), "maple", official_state_dict("maple", openai_tiny))
    with pytest.raises(CheckpointError, match=r"model\.pth\.tar-5 is an official checkpoint of another method/prompt "
                                              r"shape \(method: checkpoint 'maple', now 'ivlp'"):
        run(tiny_config("ivlp", eval_only_from=path, **SMALL), str(tmp_path / "a"))
    with pytest.raises(CheckpointError, match=r"prompts\.text\.n_ctx: checkpoint 2, now 4"):
        run(tiny_config("maple", eval_only_from=path, prompts__text__n_ctx=4, **SMALL), str(tmp_path / "b"))


def test_the_entry_points_print_one_error_line(tmp_path):
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "aple_jax.interop.export_prompts", str(tmp_path), "--out",
                           str(tmp_path / "o"), "--method", "aple"], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: method 'aple': APLe has no official PyTorch code"), proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method,override,pattern", [("mma", {"mma__end": 1}, r"mma\.end: checkpoint 2, now 1"),
                                                     ("mmrl", {"mmrl__n_tokens": 4}, r"mmrl\.n_tokens: checkpoint 5, now 4")])
def test_an_official_checkpoint_evaluates_and_classifies_as_its_import(method, override, pattern, openai_tiny,
                                                                       tmp_path):
    """`eval_only_from=<official MMA / MMRL file>` and `predict --from` it score as the imported prompts file; a
    config of another shape is refused before anything runs."""
    from aple_jax.predict import load_classifier
    official = save_official(str(tmp_path / "output"), method, official_state_dict(method, openai_tiny, seed=4))
    imported = str(tmp_path / "imported.npz")
    import_checkpoint(official, tiny_config(method, **SMALL), imported)
    from_file = run(tiny_config(method, eval_only_from=official, **SMALL), str(tmp_path / "a"))
    from_npz = run(tiny_config(method, eval_only_from=imported, **SMALL), str(tmp_path / "b"))
    assert from_file["evals"] == from_npz["evals"] and from_file["num_train_images"] == 0
    names = ["red circle", "green square", "blue triangle"]
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    probs = load_classifier(official, names, tiny_config(method)).predict(list(images))
    np.testing.assert_array_equal(probs, load_classifier(imported, names).predict(list(images)))
    with pytest.raises(CheckpointError, match=r"official checkpoint of another method/prompt shape \(" + pattern):
        run(tiny_config(method, eval_only_from=official, **override, **SMALL), str(tmp_path / "c"))


def test_a_promptkd_student_without_its_teacher_or_with_one_of_another_width_is_refused(openai_tiny, tmp_path,
                                                                                        monkeypatch):
    """A student scores against its teacher's text features: evaluating or classifying with an official student
    file needs `kd.teacher` (no teacher is trained for an evaluation; predict says so before any CLIP loads), and one
    of the width its projector maps to."""
    from aple_jax import predict
    from aple_jax.predict import load_classifier
    path = save_official(str(tmp_path / "output"), "promptkd", official_state_dict("promptkd", openai_tiny))
    with pytest.raises(ConfigError, match=r"eval_only_from='.*/VLPromptLearner/model\.pth\.tar-20': a PromptKD "
                                          r"student .* kd\.teacher is empty"):
        run(tiny_config("promptkd", eval_only_from=path, **SMALL), str(tmp_path / "a"))
    assert not (tmp_path / "a" / "teacher").exists()
    with monkeypatch.context() as m:
        m.setattr(predict, "load_backbone", lambda *a, **k: pytest.fail("a CLIP loaded before the teacher was checked"))
        with pytest.raises(ConfigError, match=r"--from .*/model\.pth\.tar-20: a PromptKD student .* "
                                              r"kd\.teacher is empty"):
            load_classifier(path, ["red circle", "green square"], tiny_config("promptkd"))
    teacher = save_official(str(tmp_path / "teacher"), "ivlp", official_state_dict("ivlp", openai_tiny))
    wide = save_official(str(tmp_path / "wide"), "promptkd",
                         promptkd_file(promptkd_student(openai_tiny, teacher_width=48)))
    with pytest.raises(CheckpointError, match=r"wide/VLPromptLearner/model\.pth\.tar-20 \(PromptKD checkpoint\) does "
                                              r"not fit this config: checkpoint's projector maps to a 48-wide teacher, "
                                              r"this config's teacher \(kd\.teacher='.*'\) is 32 wide; "
                                              r"mis-shaped \(8\): VPT_image_trans\.conv1\.0\.weight \(48, 32, 1, 1\) "
                                              r"\(expected \(32, 32, 1, 1\)\)"):
        run(tiny_config("promptkd", eval_only_from=wide, kd__teacher=teacher, kd__teacher_config="configs/ivlp.py:tiny",
                        **SMALL), str(tmp_path / "b"))


@pytest.mark.slow
def test_an_official_promptkd_student_evaluates_and_classifies_as_its_import(openai_tiny, tmp_path):
    """`eval_only_from=<official student>` with its teacher (an official IVLP file here) scores as the imported
    prompts file, and `predict --from` it classifies alike; an exported run of ours reads back bit for bit."""
    from aple_jax.predict import load_classifier
    official = save_official(str(tmp_path / "output"), "promptkd", official_state_dict("promptkd", openai_tiny, seed=4))
    teacher = save_official(str(tmp_path / "teacher"), "ivlp", official_state_dict("ivlp", openai_tiny, seed=5))
    kd = dict(kd__teacher=teacher, kd__teacher_config="configs/ivlp.py:tiny")
    imported = str(tmp_path / "imported.npz")
    import_checkpoint(official, tiny_config("promptkd", **SMALL), imported)   # no teacher needed to import
    from_file = run(tiny_config("promptkd", eval_only_from=official, **kd, **SMALL), str(tmp_path / "a"))
    from_npz = run(tiny_config("promptkd", eval_only_from=imported, **kd, **SMALL), str(tmp_path / "b"))
    assert from_file["evals"] == from_npz["evals"] and from_file["num_train_images"] == 0
    assert from_file["kd_teacher"] == {"source": teacher}
    names = ["red circle", "green square", "blue triangle"]
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    probs = load_classifier(official, names, tiny_config("promptkd", **kd)).predict(list(images))
    np.testing.assert_array_equal(probs, load_classifier(imported, names, tiny_config("promptkd", **kd)).predict(
        list(images)))
