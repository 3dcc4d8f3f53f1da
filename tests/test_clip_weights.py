"""CLIP weight loading without torch: HF-layout round trips, dtypes, shards, configs, and every bad-input error."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from aple_jax.clip import model as clip_model
from aple_jax.clip.weights import (CheckpointError, config_from_params, flatten_params, load_clip, params_to_hf,
                                   save_hf)

TINY = clip_model.get_config("tiny")


@pytest.fixture(scope="module")
def tiny_params():
    return jax.tree.map(np.asarray, clip_model.init_params(TINY, seed=1))


@pytest.fixture
def tiny_dir(tmp_path, tiny_params):
    return save_hf(str(tmp_path / "clip"), TINY, tiny_params)


def assert_same(a, b):
    fa, fb = flatten_params(a), flatten_params(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == np.float32, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_roundtrip_matches_init_params_tree(tiny_dir, tiny_params):
    cfg, params = load_clip(tiny_dir)
    assert cfg == TINY
    assert jax.tree.structure(params) == jax.tree.structure(clip_model.init_params(TINY))
    assert_same(params, tiny_params)


def test_config_from_params_all_formats(tiny_params, tiny_dir):
    assert config_from_params(tiny_params) == TINY                       # nested tree
    assert config_from_params(flatten_params(tiny_params)) == TINY       # '/'-joined
    hf_sd = load_file(os.path.join(tiny_dir, "model.safetensors"))
    assert config_from_params(hf_sd) == dataclasses.replace(TINY, vision_heads=1, text_heads=1)  # 64 // 64
    with open(os.path.join(tiny_dir, "config.json")) as f:
        assert config_from_params(hf_sd, json.load(f)) == TINY


def test_fp16_and_bf16_become_fp32(tmp_path, tiny_dir, tiny_params):
    import ml_dtypes

    sd = load_file(os.path.join(tiny_dir, "model.safetensors"))
    config = open(os.path.join(tiny_dir, "config.json")).read()  # heads: 2, not 64 // 64
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text(config)
    save_file({k: v.astype(np.float16) for k, v in sd.items()}, str(half / "model.safetensors"))
    _, params = load_clip(str(half))
    for k, v in flatten_params(params).items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, flatten_params(tiny_params)[k].astype(np.float16).astype(np.float32))

    # bf16 (numpy cannot name it, safetensors.numpy refuses it): write the file by hand.
    bf = tmp_path / "bf16"
    bf.mkdir()
    (bf / "config.json").write_text(config)
    header, blobs, offset = {}, [], 0
    for k, v in sd.items():
        raw = v.astype(ml_dtypes.bfloat16).tobytes()
        header[k] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hdr = json.dumps(header).encode()
    hdr += b" " * (-len(hdr) % 8)
    (bf / "model.safetensors").write_bytes(len(hdr).to_bytes(8, "little") + hdr + b"".join(blobs))
    _, params = load_clip(str(bf))
    ref = flatten_params(tiny_params)
    for k, v in flatten_params(params).items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, ref[k].astype(ml_dtypes.bfloat16).astype(np.float32))


def test_sharded_checkpoint_and_int_buffers_skipped(tmp_path, tiny_dir, tiny_params):
    sd = load_file(os.path.join(tiny_dir, "model.safetensors"))
    sd["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    out = tmp_path / "sharded"
    out.mkdir()
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(out / name))
        weight_map.update({k: name for k in ks})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text(open(os.path.join(tiny_dir, "config.json")).read())
    cfg, params = load_clip(str(out))
    assert cfg == TINY
    assert_same(params, tiny_params)
    # a single .safetensors file path works too (config.json next to it is used)
    _, params = load_clip(os.path.join(tiny_dir, "model.safetensors"))
    assert_same(params, tiny_params)


def test_minimal_hub_config_uses_defaults(tmp_path):
    cfg = dataclasses.replace(TINY, vision_width=128, text_width=128, vision_heads=2, text_heads=2)  # 128 // 64
    params = jax.tree.map(np.asarray, clip_model.init_params(cfg))
    d = save_hf(str(tmp_path / "m"), cfg, params)
    # like openai/clip-vit-base-patch32: text_config has only bos/eos/model_type
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 32,
        "text_config": {"bos_token_id": 0, "eos_token_id": 2, "model_type": "clip_text_model"},
        "vision_config": {"patch_size": 8, "model_type": "clip_vision_model"}}))
    loaded_cfg, loaded = load_clip(d)
    assert loaded_cfg == cfg
    assert_same(loaded, params)
    os.remove(os.path.join(d, "config.json"))  # no config at all: shapes + OpenAI defaults
    assert load_clip(d)[0] == cfg


def test_float16_files_are_half_the_size_and_load_as_float32(tmp_path, tiny_params):
    full = save_hf(str(tmp_path / "fp32"), TINY, tiny_params)
    half = save_hf(str(tmp_path / "fp16"), TINY, tiny_params, dtype="float16")
    size = lambda d: os.path.getsize(os.path.join(d, "model.safetensors"))
    assert 0.45 < size(half) / size(full) < 0.55
    cfg, params = load_clip(half)
    assert cfg == TINY and json.loads((tmp_path / "fp16" / "config.json").read_text())["dtype"] == "float16"
    for name, w in flatten_params(params).items():
        want = flatten_params(tiny_params)[name]
        assert w.dtype == np.float32
        np.testing.assert_array_equal(w, want.astype(np.float16).astype(np.float32), err_msg=name)
    with pytest.raises(ValueError, match="bfloat16.*expected float32 or float16"):
        save_hf(str(tmp_path / "bad"), TINY, tiny_params, dtype="bfloat16")


# ---------------------------------------------------------------------------------------------------- bad input

def test_missing_directory(tmp_path):
    missing = str(tmp_path / "no_such_clip")
    with pytest.raises(FileNotFoundError, match="no_such_clip"):
        load_clip(missing)


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*found \['config\.json'\]"):
        load_clip(str(tmp_path))


def test_other_architecture_config(tmp_path, tiny_dir):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    save_file({"embeddings.word_embeddings.weight": np.zeros((10, 4), np.float32)}, str(bert / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"config\.json describes a 'bert' model.*BertModel"):
        load_clip(str(bert))


def test_other_architecture_state_dict(tmp_path):
    path = str(tmp_path / "bert.safetensors")
    save_file({"bert.embeddings.word_embeddings.weight": np.zeros((10, 4), np.float32),
               "bert.pooler.dense.weight": np.zeros((4, 4), np.float32)}, path)
    with pytest.raises(CheckpointError, match=r"bert\.safetensors is not a CLIP ViT checkpoint.*"
                                              r"'bert\.embeddings\.word_embeddings\.weight'"):
        load_clip(path)


def test_clip_resnet_is_refused(tmp_path):
    path = str(tmp_path / "RN50.safetensors")
    save_file({"visual.conv1.weight": np.zeros((32, 3, 3, 3), np.float32),
               "visual.layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32),
               "visual.attnpool.positional_embedding": np.zeros((50, 2048), np.float32),
               "token_embedding.weight": np.zeros((10, 4), np.float32)}, path)
    with pytest.raises(CheckpointError, match=r"RN50\.safetensors is a CLIP ResNet checkpoint"):
        load_clip(path)


def test_vision_only_checkpoint(tmp_path, tiny_dir):
    sd = load_file(os.path.join(tiny_dir, "model.safetensors"))
    path = str(tmp_path / "vision.safetensors")
    save_file({k: v for k, v in sd.items() if k.startswith("vision_model.")}, path)
    with pytest.raises(CheckpointError, match="vision model only"):
        load_clip(path)


def test_truncated_safetensors(tmp_path, tiny_dir):
    data = open(os.path.join(tiny_dir, "model.safetensors"), "rb").read()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"bad/model\.safetensors.*truncated"):
        load_clip(str(bad))


def test_strict_report_lists_missing_unexpected_and_misshaped(tmp_path, tiny_dir):
    sd = load_file(os.path.join(tiny_dir, "model.safetensors"))
    del sd["text_model.final_layer_norm.bias"]
    sd["text_model.encoder.layers.0.self_attn.extra.weight"] = np.zeros((3,), np.float32)
    sd["vision_model.encoder.layers.1.mlp.fc2.bias"] = np.zeros((65,), np.float32)
    sd["vision_model.pre_layrnorm.weight"] = np.zeros((64, 1), np.float32)
    path = str(tmp_path / "broken.safetensors")
    save_file(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_clip(path)
    msg = str(err.value)
    assert "broken.safetensors" in msg
    assert "missing (1): text/ln_final/bias" in msg
    assert "unexpected (1): text_model.encoder.layers.0.self_attn.extra.weight" in msg
    assert "mis-shaped (2)" in msg
    assert "visual/transformer/resblocks.1/mlp/c_proj/bias: checkpoint (65,), model (64,)" in msg
    assert "visual/ln_pre/scale: checkpoint (64, 1), model (64,)" in msg


def test_unsupported_activation(tmp_path, tiny_dir):
    cfg = json.load(open(os.path.join(tiny_dir, "config.json")))
    cfg["vision_config"]["hidden_act"] = "gelu_new"
    json.dump(cfg, open(os.path.join(tiny_dir, "config.json"), "w"))
    with pytest.raises(CheckpointError, match=r"vision_config\.hidden_act='gelu_new' is not supported"):
        load_clip(tiny_dir)


def test_gelu_activation_is_read_from_config(tiny_dir):
    cfg = json.load(open(os.path.join(tiny_dir, "config.json")))
    cfg["vision_config"]["hidden_act"] = cfg["text_config"]["hidden_act"] = "gelu"
    json.dump(cfg, open(os.path.join(tiny_dir, "config.json"), "w"))
    assert load_clip(tiny_dir)[0].activation == "gelu"


def test_unknown_file_type(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"weights\.npz: unknown checkpoint file type"):
        load_clip(str(path))


def test_params_to_hf_names(tiny_params):
    sd = params_to_hf(tiny_params, TINY)
    assert sd["text_projection.weight"].shape == (32, 64)
    assert sd["vision_model.embeddings.patch_embedding.weight"].shape == (64, 3, 8, 8)
    assert sd["text_model.encoder.layers.1.self_attn.q_proj.weight"].shape == (64, 64)
    assert len(sd) == len(flatten_params(tiny_params))
