"""Parity with transformers' PyTorch CLIPModel, through HF directories, OpenAI state dicts and the converter.

Random weights are saved with `save_pretrained`, loaded with `load_clip`, and the projected image/text features
(`pooler_output` of get_image_features / get_text_features) and the logits compared in fp32.
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from aple_jax.clip.convert_openai import convert  # noqa: E402
from aple_jax.clip.model import CLIP, CLIPConfig, normalize  # noqa: E402
from aple_jax.clip.tokenizer import Tokenizer  # noqa: E402
from aple_jax.clip.weights import CheckpointError, flatten_params, load_clip  # noqa: E402
from tests.torch_modules import StateDictModule  # noqa: E402

TOL = 1e-5
PROMPTS = ["a photo of a red triangle.", "itap of my crème brûlée #3", "x", "a blurry photo of the cool toy dog."]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def hf_clip(text_kw, vision_kw, projection_dim, seed=0):
    """A transformers CLIPModel with every parameter random (LayerNorms and biases too)."""
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(text_config=text_kw, vision_config=vision_kw, projection_dim=projection_dim)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)
            elif name == "logit_scale":
                p.fill_(math.log(100.0) - 0.1)
    return model


def hf_to_openai(sd):
    """transformers CLIPModel names -> OpenAI CLIP names (written here, independently of the loader)."""
    out = {}
    towers = (("vision_model.encoder.layers", "visual.transformer.resblocks"),
              ("text_model.encoder.layers", "transformer.resblocks"))
    for hf_prefix, oa_prefix in towers:
        n_layers = len({k.split(".")[3] for k in sd if k.startswith(hf_prefix + ".")})
        for i in range(n_layers):
            h, o = f"{hf_prefix}.{i}.", f"{oa_prefix}.{i}."
            qkv = ("q_proj", "k_proj", "v_proj")
            out[o + "attn.in_proj_weight"] = torch.cat([sd[f"{h}self_attn.{p}.weight"] for p in qkv], 0)
            out[o + "attn.in_proj_bias"] = torch.cat([sd[f"{h}self_attn.{p}.bias"] for p in qkv], 0)
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                for leaf in ("weight", "bias"):
                    out[f"{o}{ours}.{leaf}"] = sd[f"{h}{theirs}.{leaf}"]
    renames = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight", "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "logit_scale": "logit_scale",
    }
    out.update({oa: sd[hf] for oa, hf in renames.items()})
    out["text_projection"] = sd["text_projection.weight"].T.contiguous()   # OpenAI: x @ W
    out["visual.proj"] = sd["visual_projection.weight"].T.contiguous()
    # the scalars OpenAI's JIT state dict carries
    out["input_resolution"] = torch.tensor(sd["vision_model.embeddings.position_embedding.weight"].shape[0])
    out["context_length"] = torch.tensor(sd["text_model.embeddings.position_embedding.weight"].shape[0])
    out["vocab_size"] = torch.tensor(sd["text_model.embeddings.token_embedding.weight"].shape[0])
    return {k: v.clone() for k, v in out.items()}


def torch_features(model, pixel_values, input_ids):
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixel_values)
        txt = model.get_text_features(input_ids=input_ids)
        img = getattr(img, "pooler_output", img)   # transformers 5: BaseModelOutputWithPooling (projected)
        txt = getattr(txt, "pooler_output", txt)
        logits = model.logit_scale.exp() * normalize_t(img) @ normalize_t(txt).T
    return img.numpy(), txt.numpy(), logits.numpy()


def normalize_t(x):
    return x / x.norm(dim=-1, keepdim=True)


def jax_features(cfg: CLIPConfig, params, images_nchw, ids, eot):
    model = CLIP(cfg)

    @jax.jit
    def run(params, images, ids, eot):
        img = model.apply({"params": params}, images, method=CLIP.encode_image)
        emb = model.apply({"params": params}, ids, method=CLIP.embed_tokens)
        txt = model.apply({"params": params}, emb, eot, method=CLIP.encode_text)
        return img, txt, jnp.exp(params["logit_scale"]) * normalize(img) @ normalize(txt).T

    images = jnp.asarray(np.transpose(images_nchw, (0, 2, 3, 1)))   # NCHW -> NHWC
    return [np.asarray(x) for x in run(params, images, jnp.asarray(ids), jnp.asarray(eot))]


def assert_parity(ours, theirs, what):
    for name, a, b in zip(("image features", "text features", "logits"), ours, theirs):
        assert a.shape == b.shape, (what, name)
        err = rel(a, b)
        print(f"{what}: {name} relative error {err:.2e}")
        assert err <= TOL, f"{what}: {name} relative error {err:.2e} > {TOL}"


def assert_same_params(a, b):
    fa, fb = flatten_params(a), flatten_params(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


# ------------------------------------------------------------------------------------------------------ tiny

TINY_TEXT = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, vocab_size=1000,
                 eos_token_id=999, bos_token_id=998, pad_token_id=1, max_position_embeddings=77)
TINY_VISION = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                   patch_size=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_clip")
    model = hf_clip(TINY_TEXT, TINY_VISION, projection_dim=32)
    model.save_pretrained(str(root / "hf"))
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 32, 32)
    ids, eot = Tokenizer.builtin_tiny().tokenize(PROMPTS)
    return dict(root=root, model=model, pixels=pixels, ids=ids, eot=eot,
                ref=torch_features(model, pixels, torch.as_tensor(ids, dtype=torch.long)))


def test_tiny_hf_dir_parity(tiny):
    cfg, params = load_clip(str(tiny["root"] / "hf"))
    assert cfg == CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                             vision_heads=2, vocab_size=1000, text_width=64, text_heads=2, text_layers=2)
    ours = jax_features(cfg, params, tiny["pixels"].numpy(), tiny["ids"], tiny["eot"])
    assert_parity(ours, tiny["ref"], "HF dir")
    # the full forward's logits (CLIPModel.__call__) and ours (CLIP.__call__, argmax pooling)
    with torch.no_grad():
        out = tiny["model"](input_ids=torch.as_tensor(tiny["ids"], dtype=torch.long), pixel_values=tiny["pixels"])
    logits, _ = CLIP(cfg).apply({"params": params}, jnp.asarray(tiny["pixels"].numpy().transpose(0, 2, 3, 1)),
                                jnp.asarray(tiny["ids"]))
    assert rel(logits, out.logits_per_image.numpy()) <= TOL


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_openai_state_dict_parity_fp16_torchscript_and_converter(tiny, tmp_path):
    """An OpenAI-format state dict built from HF weights (torch.save'd plain dict, and fp16 in a TorchScript archive
    like OpenAI's release). Width 128 with 2 heads, since OpenAI checkpoints carry no head count (width // 64)."""
    text = dict(TINY_TEXT, hidden_size=128, intermediate_size=512)
    vision = dict(TINY_VISION, hidden_size=128, intermediate_size=512)
    model = hf_clip(text, vision, projection_dim=32, seed=2)
    model.save_pretrained(str(tmp_path / "hf"))
    _, hf_params = load_clip(str(tmp_path / "hf"))
    sd = hf_to_openai(model.state_dict())

    torch.save(sd, str(tmp_path / "plain.pt"))
    cfg, params = load_clip(str(tmp_path / "plain.pt"))
    assert (cfg.vision_heads, cfg.text_heads, cfg.vision_width) == (2, 2, 128)
    assert_same_params(params, hf_params)
    ids = torch.as_tensor(tiny["ids"], dtype=torch.long)
    ours = jax_features(cfg, params, tiny["pixels"].numpy(), tiny["ids"], tiny["eot"])
    assert_parity(ours, torch_features(model, tiny["pixels"], ids), "OpenAI state dict")

    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    script = torch.jit.script(StateDictModule(half))
    script.save(str(tmp_path / "ViT-tiny.pt"))
    cfg16, params16 = load_clip(str(tmp_path / "ViT-tiny.pt"))
    assert cfg16 == cfg
    for k, v in flatten_params(params16).items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, flatten_params(hf_params)[k].astype(np.float16).astype(np.float32))

    # the converter: .pt -> HF dir that needs no torch, and that transformers itself loads
    out = convert(str(tmp_path / "plain.pt"), str(tmp_path / "converted"))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert_same_params(load_clip(out)[1], hf_params)
    reloaded = transformers.CLIPModel.from_pretrained(out).eval()
    torch.manual_seed(3)
    pixels = torch.randn(2, 3, 32, 32)
    for a, b in zip(torch_features(reloaded, pixels, ids), torch_features(model, pixels, ids)):
        assert rel(a, b) <= 1e-6


def test_other_architecture_pt(tmp_path):
    path = str(tmp_path / "resnet.pt")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
                "fc.weight": torch.zeros(1000, 2048)}, path)
    with pytest.raises(CheckpointError, match=r"resnet\.pt is not a CLIP ViT checkpoint.*'conv1\.weight'"):
        load_clip(path)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(open(path, "rb").read()[:100])
    with pytest.raises(CheckpointError, match=r"cannot read PyTorch checkpoint .*trunc\.pt"):
        load_clip(str(trunc))


# ------------------------------------------------------------------------------------------------ ViT-B/16

@pytest.mark.slow
def test_vit_b16_parity(tmp_path):
    """Full ViT-B/16 shapes (random weights): one forward per side; the OpenAI-format dict gives identical params."""
    model = hf_clip(dict(), dict(patch_size=16), projection_dim=512)
    model.save_pretrained(str(tmp_path / "hf"))
    cfg, params = load_clip(str(tmp_path / "hf"))
    assert cfg == CLIPConfig(vision_patch_size=16)
    torch.manual_seed(4)
    pixels = torch.randn(2, 3, 224, 224)
    rng = np.random.default_rng(0)
    lengths = [5, 17, 77]
    ids = np.zeros((3, 77), np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = np.concatenate([[49406], rng.integers(1, 49406, n - 2), [49407]])
    eot = np.asarray(lengths, np.int32) - 1
    theirs = torch_features(model, pixels, torch.as_tensor(ids, dtype=torch.long))
    ours = jax_features(cfg, params, pixels.numpy(), ids, eot)
    assert_parity(ours, theirs, "ViT-B/16")
    del ours

    path = str(tmp_path / "ViT-B-16.pt")
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in hf_to_openai(model.state_dict()).items()},
               path)
    del model
    cfg16, params16 = load_clip(path)
    assert cfg16 == cfg
    ref = flatten_params(params)
    for k, v in flatten_params(params16).items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, ref[k].astype(np.float16).astype(np.float32), err_msg=k)
