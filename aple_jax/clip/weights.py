"""Load pretrained CLIP (ViT) weights into the parameter tree of `aple_jax.clip.model.CLIP`.

Accepted inputs (`load_clip(path)`):
- a Hugging Face CLIP directory: `config.json` + `model.safetensors` (or sharded `model.safetensors.index.json`);
  read with `safetensors` in numpy, no torch needed. `config.json` may be minimal (hub style) or absent: shapes
  always come from the tensors, the config only supplies heads, activation and LayerNorm epsilon;
- a single `.safetensors` file with HF or OpenAI names;
- an OpenAI checkpoint (`ViT-B-16.pt`, a TorchScript archive, read as data without torch: `torchscript.py`) or any
  torch-saved state dict (`.pt`, `.pth`, `.bin`, also `pytorch_model.bin` inside a HF directory; needs torch, and
  is read with `weights_only`). Convert either once with `python -m aple_jax.clip.convert_openai ViT-B-16.pt
  OUT_DIR` to get a HF directory.

Every tensor becomes float32 (OpenAI stores fp16); integer buffers (`position_ids`) and OpenAI's scalar entries
(`input_resolution`, `context_length`, `vocab_size`) are skipped. The mapping is strict: one `ValueError` lists
every missing, unexpected and mis-shaped key.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Mapping

import numpy as np

from aple_jax import pickles
from aple_jax.clip import torchscript
from aple_jax.clip.model import CLIPConfig
from aple_jax.errors import StorageError, WeightsError

Params = dict[str, Any]
StateDict = dict[str, np.ndarray]

# Class defaults of transformers' CLIPTextConfig / CLIPVisionConfig for the keys the loader reads
# (hub configs are often minimal; the shapes themselves always come from the tensors).
HF_TEXT_DEFAULTS = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407,
                    "pad_token_id": 1}
HF_VISION_DEFAULTS = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
SUPPORTED_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

HF_HINT = ("expected a Hugging Face CLIP ViT checkpoint (keys 'vision_model.*', 'text_model.*', 'visual_projection."
           "weight', 'text_projection.weight', 'logit_scale') or an OpenAI CLIP ViT checkpoint (keys 'visual.*', "
           "'transformer.resblocks.*', 'token_embedding.weight', 'logit_scale')")


class CheckpointError(WeightsError):
    """A checkpoint that cannot be mapped onto the CLIP parameter tree (the message says why and where)."""


# ------------------------------------------------------------------------------------------------ reading files

def _to_float32(name: str, value: Any) -> np.ndarray | None:
    """fp16/bf16/fp64 -> fp32; None for integer/bool buffers (position_ids) that carry no weights."""
    arr = np.asarray(value)
    if arr.dtype.kind in "iub":
        return None
    if arr.dtype.kind != "f" and arr.dtype.name != "bfloat16":
        raise CheckpointError(f"tensor {name!r} has unsupported dtype {arr.dtype}")
    return np.array(arr, dtype=np.float32, order="C")


def _raw_safetensor(path: str, header_len: int, info: Mapping[str, Any]) -> np.ndarray:
    """A tensor numpy cannot name (bf16) read from its byte range, decoded with ml_dtypes."""
    import ml_dtypes  # a jax dependency

    dtypes = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
    if info["dtype"] not in dtypes:
        raise CheckpointError(f"{path}: unsupported safetensors dtype {info['dtype']}")
    start, end = info["data_offsets"]
    with open(path, "rb") as f:
        f.seek(8 + header_len + start)
        buf = f.read(end - start)
    return np.frombuffer(buf, dtype=dtypes[info["dtype"]]).reshape(info["shape"])


def read_safetensors(path: str) -> StateDict:
    """All float tensors of one safetensors file as fp32 numpy arrays (no torch)."""
    from safetensors import SafetensorError, safe_open

    size = os.path.getsize(path)
    try:
        with safe_open(path, framework="numpy") as f:
            keys = list(f.keys())
            out: StateDict = {}
            header: dict | None = None
            for key in keys:
                try:
                    value = f.get_tensor(key)
                except TypeError:  # bfloat16 & co: numpy has no name for them
                    if header is None:
                        with open(path, "rb") as raw:
                            header_len = int.from_bytes(raw.read(8), "little")
                            header = {"len": header_len, "map": json.loads(raw.read(header_len))}
                    value = _raw_safetensor(path, header["len"], header["map"][key])
                arr = _to_float32(key, value)
                if arr is not None:
                    out[key] = arr
    except SafetensorError as e:
        raise CheckpointError(f"cannot read safetensors file {path} ({size} bytes): {e}. The file is truncated or "
                              "corrupt (an interrupted download?); download or convert it again") from e
    return out


def _read_torchscript(path: str) -> StateDict:
    """The state dict of a TorchScript archive (OpenAI's ViT-B-16.pt), read as data (`torchscript.py`, no torch)."""
    try:
        sd = torchscript.read_state_dict(path)
    except pickles.RefusedGlobalError as e:
        raise CheckpointError(pickles.refusal(path, e, "a TorchScript archive holds its modules and tensors only")
                              ) from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, StopIteration, pickle.UnpicklingError,
            zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot read TorchScript archive {path}: {type(e).__name__}: {e}. The file is "
                              "truncated, corrupt or not a checkpoint") from e
    return {key: arr for key, arr in ((k, _to_float32(k, v)) for k, v in sd.items()) if arr is not None}


def _read_torch(path: str) -> StateDict:
    """A state dict from a TorchScript archive (OpenAI's ViT-B-16.pt) or a torch.save'd dict (needs torch)."""
    if torchscript.is_torchscript(path):
        return _read_torchscript(path)
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path} is a PyTorch checkpoint and reading it needs torch, which is not installed. Install torch "
            "(CPU is enough) once and convert it: python -m aple_jax.clip.convert_openai "
            f"{path} OUT_DIR; then load OUT_DIR, which needs no torch") from e
    try:
        with open(path, "rb") as f:
            sd = pickles.torch_load(f.read())
    except pickles.RefusedGlobalError as e:
        raise CheckpointError(pickles.refusal(path, e, "a state dict holds tensors and plain containers only")) from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(f"cannot read PyTorch checkpoint {path}: {type(e).__name__}: {e}. The file is "
                              "truncated, corrupt or not a checkpoint") from e
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path} holds a {type(sd).__name__}, not a state dict. {HF_HINT}")
    out: StateDict = {}
    for key, value in sd.items():
        if not torch.is_tensor(value):
            continue
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        arr = _to_float32(key, value.numpy())
        if arr is not None:
            out[key] = arr
    return out


def _read_hf_dir(path: str) -> tuple[StateDict, str]:
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return read_safetensors(single), single
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot read the shard index {index}: {e}") from e
        out: StateDict = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(path, shard)
            if not os.path.isfile(shard_path):
                raise CheckpointError(f"{index} lists the shard {shard!r}, which is missing from {path}")
            out.update(read_safetensors(shard_path))
        return out, index
    for name in ("pytorch_model.bin", "model.pt"):
        if os.path.isfile(os.path.join(path, name)):
            return _read_torch(os.path.join(path, name)), os.path.join(path, name)
    raise StorageError(missing_weights_message(path))


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "model.pt")


def missing_weights_message(path: str) -> str | None:
    """What is wrong with a local weights directory that holds none of WEIGHT_FILES; None if it holds one."""
    found = sorted(os.listdir(path))
    if set(WEIGHT_FILES) & set(found):
        return None
    return (f"{path} has no CLIP weights: expected model.safetensors or model.safetensors.index.json (a Hugging Face "
            f"CLIP directory, e.g. a local copy of openai/clip-vit-base-patch16, or the output of "
            f"python -m aple_jax.clip.convert_openai); found {found[:20] or 'an empty directory'}")


def _read_hf_config(path: str) -> dict | None:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        return None
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot parse {cfg_path}: {e}") from e
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type not in (None, "clip") and not any(a.startswith("CLIPModel") for a in archs):
        raise CheckpointError(
            f"{cfg_path} describes a {model_type!r} model ({', '.join(archs) or 'no architectures listed'}), "
            "not a CLIP model (model_type 'clip', architectures ['CLIPModel']). Point backbone.weights at a "
            "full CLIP checkpoint with both towers")
    return cfg


def read_checkpoint(path: str) -> tuple[StateDict, dict | None, str]:
    """(fp32 state dict, HF config dict or None, the file read) for any accepted path."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise StorageError(f"CLIP weights not found: {path} does not exist (expected a Hugging Face CLIP "
                                "directory, a .safetensors file or an OpenAI .pt checkpoint)")
    if os.path.isdir(path):
        hf_config = _read_hf_config(path)
        sd, source = _read_hf_dir(path)
        return sd, hf_config, source
    if path.endswith(".safetensors"):
        sibling = os.path.dirname(os.path.abspath(path))
        return read_safetensors(path), _read_hf_config(sibling), path
    if path.endswith(TORCH_SUFFIXES):
        return _read_torch(path), None, path
    raise CheckpointError(f"{path}: unknown checkpoint file type; expected a directory, a .safetensors file or a "
                          f"PyTorch checkpoint ({', '.join(TORCH_SUFFIXES)})")


# --------------------------------------------------------------------------------------------- format detection

def detect_format(sd: Mapping[str, Any], source: str = "checkpoint") -> str:
    """'hf', 'openai' or 'ours' ('/'-joined names of our tree); a clear error for anything else."""
    keys = list(sd)
    if "vision_model.embeddings.patch_embedding.weight" in sd or "text_model.embeddings.token_embedding.weight" in sd:
        if "vision_model.embeddings.patch_embedding.weight" not in sd:
            raise CheckpointError(f"{source} is a CLIP text model only (no 'vision_model.*' tensors); both towers "
                                  "are needed")
        if "text_model.embeddings.token_embedding.weight" not in sd:
            raise CheckpointError(f"{source} is a CLIP vision model only (no 'text_model.*' tensors); both towers "
                                  "are needed")
        return "hf"
    if any(k.startswith(("visual.layer1.", "visual.attnpool.", "visual.bn1.")) for k in keys):
        raise CheckpointError(f"{source} is a CLIP ResNet checkpoint (keys 'visual.layer1.*', 'visual.attnpool.*'); "
                              "only ViT CLIP backbones (ViT-B/32, ViT-B/16, ViT-L/14) can take token prompts")
    if "visual.conv1.weight" in sd and "token_embedding.weight" in sd:
        return "openai"
    if "visual/conv1/kernel" in sd and "text/token_embedding/embedding" in sd:
        return "ours"
    sample = ", ".join(repr(k) for k in keys[:6]) or "no float tensors at all"
    raise CheckpointError(f"{source} is not a CLIP ViT checkpoint: found {len(keys)} tensors such as {sample}; "
                          f"{HF_HINT}")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unflatten(flat: Mapping[str, Any]) -> Params:
    tree: Params = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


# ------------------------------------------------------------------------------------------ config from shapes

_NAMES = {  # per format: (vision prefix of blocks, text prefix of blocks, tensor names used for shapes)
    "hf": dict(v_block=r"vision_model\.encoder\.layers\.(\d+)\.", t_block=r"text_model\.encoder\.layers\.(\d+)\.",
               conv="vision_model.embeddings.patch_embedding.weight",
               v_pos="vision_model.embeddings.position_embedding.weight",
               t_pos="text_model.embeddings.position_embedding.weight",
               tok="text_model.embeddings.token_embedding.weight", proj="visual_projection.weight",
               v_fc="vision_model.encoder.layers.0.mlp.fc1.weight", t_fc="text_model.encoder.layers.0.mlp.fc1.weight"),
    "openai": dict(v_block=r"visual\.transformer\.resblocks\.(\d+)\.", t_block=r"transformer\.resblocks\.(\d+)\.",
                   conv="visual.conv1.weight", v_pos="visual.positional_embedding", t_pos="positional_embedding",
                   tok="token_embedding.weight", proj="visual.proj",
                   v_fc="visual.transformer.resblocks.0.mlp.c_fc.weight", t_fc="transformer.resblocks.0.mlp.c_fc.weight"),
    "ours": dict(v_block=r"visual/transformer/resblocks\.(\d+)/", t_block=r"text/transformer/resblocks\.(\d+)/",
                 conv="visual/conv1/kernel", v_pos="visual/positional_embedding", t_pos="text/positional_embedding",
                 tok="text/token_embedding/embedding", proj="visual/proj/kernel",
                 v_fc="visual/transformer/resblocks.0/mlp/c_fc/kernel",
                 t_fc="text/transformer/resblocks.0/mlp/c_fc/kernel"),
}


def _count_layers(keys, pattern: str) -> int:
    rx = re.compile("^" + pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def _hf_sub(hf_config: Mapping[str, Any] | None, tower: str, key: str, defaults: Mapping[str, Any]) -> Any:
    sub = (hf_config or {}).get(f"{tower}_config") or {}
    return sub.get(key, defaults.get(key))


def config_from_params(params: Mapping[str, Any], hf_config: Mapping[str, Any] | None = None) -> CLIPConfig:
    """The `CLIPConfig` implied by tensor shapes.

    `params` may be an HF or OpenAI state dict (flat, dotted names) or our tree (nested or '/'-joined). Heads are
    read from our (D, H, Dh) kernels; for HF/OpenAI names they are width // 64 (OpenAI's rule) unless `hf_config`
    (a parsed HF `config.json`) gives `num_attention_heads`. The activation comes from its `hidden_act` (default
    quick_gelu); LayerNorm epsilon must be 1e-5.
    """
    flat = _flatten(params) if any(isinstance(v, Mapping) for v in params.values()) else dict(params)
    fmt = detect_format(flat)
    n = _NAMES[fmt]
    shape = lambda k: tuple(np.shape(flat[k]))  # noqa: E731
    missing = [n[k] for k in ("conv", "v_pos", "t_pos", "tok", "proj", "v_fc", "t_fc") if n[k] not in flat]
    if missing:
        raise CheckpointError(f"cannot infer the CLIP shape: missing {missing}")
    if fmt == "hf":
        v_width, _, patch, _ = shape(n["conv"])
        embed_dim = shape(n["proj"])[0]
        v_hidden, t_hidden = shape(n["v_fc"])[0], shape(n["t_fc"])[0]
    elif fmt == "openai":
        v_width, _, patch, _ = shape(n["conv"])
        embed_dim = shape(n["proj"])[1]
        v_hidden, t_hidden = shape(n["v_fc"])[0], shape(n["t_fc"])[0]
    else:
        patch, _, _, v_width = shape(n["conv"])
        embed_dim = shape(n["proj"])[1]
        v_hidden, t_hidden = shape(n["v_fc"])[1], shape(n["t_fc"])[1]
    vocab_size, t_width = shape(n["tok"])
    context_length = shape(n["t_pos"])[0]
    grid = math.isqrt(shape(n["v_pos"])[0] - 1)
    if grid * grid + 1 != shape(n["v_pos"])[0]:
        raise CheckpointError(f"vision positional embedding has {shape(n['v_pos'])[0]} rows, not 1 + a square "
                              "number of patches")
    if v_hidden % v_width or t_hidden % t_width or v_hidden // v_width != t_hidden // t_width:
        raise CheckpointError(f"unsupported MLP widths: vision {v_hidden} for width {v_width}, text {t_hidden} for "
                              f"width {t_width} (the model needs the same integer mlp_ratio in both towers)")

    def heads(tower: str, width: int) -> int:
        ours = ("visual" if tower == "vision" else "text") + "/transformer/resblocks.0/attn/query/kernel"
        if fmt == "ours" and ours in flat:  # our kernels are (D, H, Dh): the shape tells
            return int(shape(ours)[1])
        h = _hf_sub(hf_config, tower, "num_attention_heads", {}) or width // 64
        if width % h:
            raise CheckpointError(f"{tower} width {width} is not divisible by {h} attention heads")
        return int(h)

    acts = {}
    for tower, defaults in (("text", HF_TEXT_DEFAULTS), ("vision", HF_VISION_DEFAULTS)):
        act = _hf_sub(hf_config, tower, "hidden_act", defaults)
        eps = float(_hf_sub(hf_config, tower, "layer_norm_eps", defaults))
        if act not in SUPPORTED_ACTIVATIONS:
            raise CheckpointError(f"{tower}_config.hidden_act={act!r} is not supported; expected one of "
                                  f"{sorted(SUPPORTED_ACTIVATIONS)}")
        if abs(eps - 1e-5) > 1e-12:
            raise CheckpointError(f"{tower}_config.layer_norm_eps={eps} is not supported (the model uses 1e-5)")
        acts[tower] = SUPPORTED_ACTIVATIONS[act]
    if acts["text"] != acts["vision"]:
        raise CheckpointError(f"different activations per tower ({acts}) are not supported")
    return CLIPConfig(
        embed_dim=int(embed_dim), image_resolution=int(grid * patch),
        vision_layers=_count_layers(flat, n["v_block"]), vision_width=int(v_width), vision_patch_size=int(patch),
        vision_heads=heads("vision", v_width), context_length=int(context_length), vocab_size=int(vocab_size),
        text_width=int(t_width), text_heads=heads("text", t_width), text_layers=_count_layers(flat, n["t_block"]),
        mlp_ratio=int(v_hidden // v_width), activation=acts["text"])


# --------------------------------------------------------------------------------------------------- name maps

Transform = Callable[[np.ndarray], np.ndarray]
_ident: Transform = lambda w: w  # noqa: E731
_T: Transform = lambda w: w.T  # noqa: E731
_CONV: Transform = lambda w: w.transpose(2, 3, 1, 0)  # (D, 3, p, p) -> (p, p, 3, D)


def _qkv_kernel(heads: int) -> Transform:  # torch Linear (out, in) -> (in, H, Dh)
    return lambda w: w.T.reshape(w.shape[1], heads, -1)


def _head_bias(heads: int) -> Transform:
    return lambda b: b.reshape(heads, -1)


def _out_kernel(heads: int) -> Transform:  # (D_out, D_in) -> (H, Dh, D_out)
    return lambda w: w.T.reshape(heads, -1, w.shape[0])


def _block_rules(cfg: CLIPConfig, fmt: str) -> list[tuple[str, Any]]:
    """Per-block rules: (regex on the name after the block prefix, [(our suffix, transform), ...] or a splitter)."""
    rules: list[tuple[str, Any]] = []
    if fmt == "hf":
        for src, dst in (("q", "query"), ("k", "key"), ("v", "value")):
            rules.append((rf"self_attn\.{src}_proj\.weight", [(f"attn/{dst}/kernel", "qkv_kernel")]))
            rules.append((rf"self_attn\.{src}_proj\.bias", [(f"attn/{dst}/bias", "head_bias")]))
        rules += [(r"self_attn\.out_proj\.weight", [("attn/out/kernel", "out_kernel")]),
                  (r"self_attn\.out_proj\.bias", [("attn/out/bias", _ident)]),
                  (r"layer_norm1\.weight", [("ln_1/scale", _ident)]), (r"layer_norm1\.bias", [("ln_1/bias", _ident)]),
                  (r"layer_norm2\.weight", [("ln_2/scale", _ident)]), (r"layer_norm2\.bias", [("ln_2/bias", _ident)]),
                  (r"mlp\.fc1\.weight", [("mlp/c_fc/kernel", _T)]), (r"mlp\.fc1\.bias", [("mlp/c_fc/bias", _ident)]),
                  (r"mlp\.fc2\.weight", [("mlp/c_proj/kernel", _T)]), (r"mlp\.fc2\.bias", [("mlp/c_proj/bias", _ident)])]
    else:  # openai: fused in_proj (3D, D) split into q, k, v
        rules += [(r"attn\.in_proj_weight", "split_kernel"), (r"attn\.in_proj_bias", "split_bias"),
                  (r"attn\.out_proj\.weight", [("attn/out/kernel", "out_kernel")]),
                  (r"attn\.out_proj\.bias", [("attn/out/bias", _ident)]),
                  (r"ln_1\.weight", [("ln_1/scale", _ident)]), (r"ln_1\.bias", [("ln_1/bias", _ident)]),
                  (r"ln_2\.weight", [("ln_2/scale", _ident)]), (r"ln_2\.bias", [("ln_2/bias", _ident)]),
                  (r"mlp\.c_fc\.weight", [("mlp/c_fc/kernel", _T)]), (r"mlp\.c_fc\.bias", [("mlp/c_fc/bias", _ident)]),
                  (r"mlp\.c_proj\.weight", [("mlp/c_proj/kernel", _T)]),
                  (r"mlp\.c_proj\.bias", [("mlp/c_proj/bias", _ident)])]
    return rules


def _top_rules(fmt: str) -> dict[str, tuple[str, Transform]]:
    if fmt == "hf":
        return {
            "logit_scale": ("logit_scale", _ident),
            "text_model.embeddings.token_embedding.weight": ("text/token_embedding/embedding", _ident),
            "text_model.embeddings.position_embedding.weight": ("text/positional_embedding", _ident),
            "text_model.final_layer_norm.weight": ("text/ln_final/scale", _ident),
            "text_model.final_layer_norm.bias": ("text/ln_final/bias", _ident),
            "text_projection.weight": ("text/text_projection/kernel", _T),
            "vision_model.embeddings.class_embedding": ("visual/class_embedding", _ident),
            "vision_model.embeddings.patch_embedding.weight": ("visual/conv1/kernel", _CONV),
            "vision_model.embeddings.position_embedding.weight": ("visual/positional_embedding", _ident),
            "vision_model.pre_layrnorm.weight": ("visual/ln_pre/scale", _ident),
            "vision_model.pre_layrnorm.bias": ("visual/ln_pre/bias", _ident),
            "vision_model.post_layernorm.weight": ("visual/ln_post/scale", _ident),
            "vision_model.post_layernorm.bias": ("visual/ln_post/bias", _ident),
            "visual_projection.weight": ("visual/proj/kernel", _T),
        }
    return {
        "logit_scale": ("logit_scale", _ident),
        "token_embedding.weight": ("text/token_embedding/embedding", _ident),
        "positional_embedding": ("text/positional_embedding", _ident),
        "ln_final.weight": ("text/ln_final/scale", _ident),
        "ln_final.bias": ("text/ln_final/bias", _ident),
        "text_projection": ("text/text_projection/kernel", _ident),
        "visual.class_embedding": ("visual/class_embedding", _ident),
        "visual.conv1.weight": ("visual/conv1/kernel", _CONV),
        "visual.positional_embedding": ("visual/positional_embedding", _ident),
        "visual.ln_pre.weight": ("visual/ln_pre/scale", _ident),
        "visual.ln_pre.bias": ("visual/ln_pre/bias", _ident),
        "visual.ln_post.weight": ("visual/ln_post/scale", _ident),
        "visual.ln_post.bias": ("visual/ln_post/bias", _ident),
        "visual.proj": ("visual/proj/kernel", _ident),
    }


def _map_state_dict(sd: StateDict, cfg: CLIPConfig, fmt: str) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """(our flat params, unexpected source keys, transform errors) for an 'hf' or 'openai' state dict."""
    top = _top_rules(fmt)
    block_rules = [(re.compile(rx + "$"), dst) for rx, dst in _block_rules(cfg, fmt)]
    towers = [(re.compile("^" + _NAMES[fmt]["v_block"]), "visual", cfg.vision_heads),
              (re.compile("^" + _NAMES[fmt]["t_block"]), "text", cfg.text_heads)]
    out: dict[str, np.ndarray] = {}
    unexpected: list[str] = []
    errors: list[str] = []
    for key in sorted(sd):
        w = sd[key]
        if fmt == "openai" and key in OPENAI_SCALARS:
            continue
        if key in top:
            dst, fn = top[key]
            targets = [(dst, fn)]
        else:
            targets = None
            for rx, tower, heads in towers:
                m = rx.match(key)
                if not m:
                    continue
                rest = key[m.end():]
                prefix = f"{tower}/transformer/resblocks.{m.group(1)}/"
                for brx, dst in block_rules:
                    if not brx.fullmatch(rest):
                        continue
                    if dst == "split_kernel" or dst == "split_bias":
                        if w.shape[0] % 3:
                            errors.append(f"{key}: shape {w.shape}, expected a fused (3*width, ...) projection")
                            targets = []
                            break
                        kind = "qkv_kernel" if dst == "split_kernel" else "head_bias"
                        parts = np.split(w, 3, axis=0)
                        for name, part in zip(("query", "key", "value"), parts):
                            leaf = "kernel" if dst == "split_kernel" else "bias"
                            _assign(out, errors, key, prefix + f"attn/{name}/{leaf}", part, kind, heads)
                        targets = []
                    else:
                        targets = [(prefix + d, fn) for d, fn in dst]
                    break
                break
            if targets is None:
                unexpected.append(key)
                continue
        for dst, fn in targets:
            heads = cfg.vision_heads if dst.startswith("visual/") else cfg.text_heads
            _assign(out, errors, key, dst, w, fn, heads)
    return out, unexpected, errors


def _assign(out: dict, errors: list, src: str, dst: str, w: np.ndarray, fn: Any, heads: int) -> None:
    if isinstance(fn, str):
        fn = {"qkv_kernel": _qkv_kernel, "head_bias": _head_bias, "out_kernel": _out_kernel}[fn](heads)
    try:
        out[dst] = np.array(fn(w), dtype=np.float32, order="C")
    except ValueError as e:  # a reshape that does not fit
        errors.append(f"{src} (-> {dst}): shape {tuple(w.shape)} cannot be converted: {e}")


def expected_shapes(cfg: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """Flat '/'-joined shapes of `init_params(cfg)`, without computing anything."""
    import jax
    import jax.numpy as jnp

    from aple_jax.clip.model import CLIP

    images = jax.ShapeDtypeStruct((1, cfg.image_resolution, cfg.image_resolution, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, cfg.context_length), jnp.int32)
    abstract = jax.eval_shape(CLIP(cfg).init, jax.random.key(0), images, tokens)["params"]
    return {k: tuple(v.shape) for k, v in _flatten(abstract).items()}


def state_dict_to_params(sd: Mapping[str, Any], cfg: CLIPConfig | None = None, source: str = "checkpoint",
                         hf_config: Mapping[str, Any] | None = None) -> tuple[CLIPConfig, Params]:
    """Map an HF/OpenAI state dict (or our flat names) onto `init_params(cfg)`; one strict error on any mismatch."""
    flat_in = {}
    for k, v in sd.items():
        arr = _to_float32(k, v)
        if arr is not None:
            flat_in[k] = arr
    fmt = detect_format(flat_in, source)
    try:
        cfg = cfg or config_from_params(flat_in, hf_config)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    if fmt == "ours":
        mapped, unexpected, errors = dict(flat_in), [], []
    else:
        mapped, unexpected, errors = _map_state_dict(flat_in, cfg, fmt)
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(mapped))
    unexpected += sorted(k for k in mapped if k not in expected)
    misshaped = [f"{k}: checkpoint {mapped[k].shape}, model {expected[k]}" for k in sorted(mapped)
                 if k in expected and mapped[k].shape != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected ({len(unexpected)}): " + ", ".join(unexpected))
    if misshaped or errors:
        problems.append(f"mis-shaped ({len(misshaped) + len(errors)}): " + "; ".join(errors + misshaped))
    if problems:
        raise CheckpointError(f"{source} does not match a CLIP ViT with {cfg}:\n  " + "\n  ".join(problems))
    return cfg, _unflatten({k: mapped[k] for k in expected})


def load_clip(path: str) -> tuple[CLIPConfig, Params]:
    """(config, fp32 numpy parameter tree matching `init_params(cfg)`) from a HF dir, a .safetensors or a .pt file."""
    sd, hf_config, source = read_checkpoint(path)
    return state_dict_to_params(sd, source=source, hf_config=hf_config)


# -------------------------------------------------------------------------------------------- writing HF layout

def params_to_hf(params: Params, cfg: CLIPConfig) -> StateDict:
    """Our tree -> a transformers `CLIPModel` state dict (fp32 numpy, (out, in) Linear weights)."""
    flat = {k: np.asarray(v, np.float32) for k, v in _flatten(params).items()}
    inverse = {dst: src for src, (dst, _) in _top_rules("hf").items()}
    sd: StateDict = {}
    for key, w in flat.items():
        if key in inverse:
            src = inverse[key]
            if key.endswith(("text_projection/kernel", "proj/kernel")):
                w = w.T
            elif key == "visual/conv1/kernel":
                w = w.transpose(3, 2, 0, 1)
            sd[src] = w
            continue
        m = re.match(r"^(visual|text)/transformer/resblocks\.(\d+)/(.+)$", key)
        if not m:
            raise CheckpointError(f"params_to_hf: unknown parameter {key}")
        tower = "vision_model" if m.group(1) == "visual" else "text_model"
        base = f"{tower}.encoder.layers.{m.group(2)}."
        rest = m.group(3)
        am = re.match(r"attn/(query|key|value|out)/(kernel|bias)$", rest)
        if am:
            proj = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}[am.group(1)]
            if am.group(2) == "bias":
                sd[f"{base}self_attn.{proj}.bias"] = w.reshape(-1)
            elif am.group(1) == "out":
                sd[f"{base}self_attn.{proj}.weight"] = w.reshape(-1, w.shape[-1]).T
            else:
                sd[f"{base}self_attn.{proj}.weight"] = w.reshape(w.shape[0], -1).T
            continue
        simple = {"ln_1/scale": "layer_norm1.weight", "ln_1/bias": "layer_norm1.bias",
                  "ln_2/scale": "layer_norm2.weight", "ln_2/bias": "layer_norm2.bias",
                  "mlp/c_fc/kernel": "mlp.fc1.weight", "mlp/c_fc/bias": "mlp.fc1.bias",
                  "mlp/c_proj/kernel": "mlp.fc2.weight", "mlp/c_proj/bias": "mlp.fc2.bias"}
        if rest not in simple:
            raise CheckpointError(f"params_to_hf: unknown parameter {key}")
        sd[base + simple[rest]] = w.T if rest.endswith("kernel") else w
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in sd.items()}


def hf_config_dict(cfg: CLIPConfig, bos_token_id: int | None = None, eos_token_id: int | None = None) -> dict:
    """A complete transformers `CLIPConfig` dict for this shape (SOT/EOT default to OpenAI's last two ids)."""
    eos = cfg.vocab_size - 1 if eos_token_id is None else eos_token_id
    bos = cfg.vocab_size - 2 if bos_token_id is None else bos_token_id
    text = dict(model_type="clip_text_model", vocab_size=cfg.vocab_size, hidden_size=cfg.text_width,
                intermediate_size=cfg.text_width * cfg.mlp_ratio, num_hidden_layers=cfg.text_layers,
                num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.context_length,
                hidden_act=cfg.activation, layer_norm_eps=1e-5, attention_dropout=0.0, initializer_range=0.02,
                initializer_factor=1.0, projection_dim=cfg.embed_dim, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=1)
    vision = dict(model_type="clip_vision_model", hidden_size=cfg.vision_width,
                  intermediate_size=cfg.vision_width * cfg.mlp_ratio, num_hidden_layers=cfg.vision_layers,
                  num_attention_heads=cfg.vision_heads, num_channels=3, image_size=cfg.image_resolution,
                  patch_size=cfg.vision_patch_size, hidden_act=cfg.activation, layer_norm_eps=1e-5,
                  attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0, projection_dim=cfg.embed_dim)
    return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=cfg.embed_dim,
                logit_scale_init_value=2.6592, initializer_factor=1.0, dtype="float32",
                text_config=text, vision_config=vision)


def save_hf(out_dir: str, cfg: CLIPConfig, params: Params, dtype: str = "float32", **config_kw: Any) -> str:
    """Write `config.json` + `model.safetensors` (transformers' CLIPModel layout, tensors in `dtype`: float32 or
    float16, which halves the file; loading reads either as float32); returns out_dir."""
    from safetensors.numpy import save_file

    if dtype not in ("float32", "float16"):
        raise ValueError(f"save_hf: dtype {dtype!r}; expected float32 or float16")
    os.makedirs(out_dir, exist_ok=True)
    config = hf_config_dict(cfg, **config_kw)
    config["dtype"] = dtype
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tensors = {k: v.astype(dtype) for k, v in params_to_hf(params, cfg).items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """'/'-joined flat view of a parameter tree (e.g. `visual/conv1/kernel`)."""
    return _flatten(params)


def unflatten_params(flat: Mapping[str, Any]) -> Params:
    """The parameter tree of a '/'-joined flat view (`flatten_params`' inverse)."""
    return _unflatten(flat)
