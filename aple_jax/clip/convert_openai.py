"""Convert an OpenAI CLIP checkpoint (e.g. `ViT-B-16.pt`) once into a Hugging Face CLIP directory.

    python -m aple_jax.clip.convert_openai ViT-B-16.pt OUT_DIR [--bpe bpe_simple_vocab_16e6.txt.gz]

OpenAI's TorchScript archives are read as data, without torch (`torchscript.py`); a `torch.save`'d state dict needs
torch. OUT_DIR gets `config.json` + `model.safetensors` (fp32, transformers' `CLIPModel`
names, loadable by `load_clip` without torch and by `transformers.CLIPModel.from_pretrained`); with `--bpe` also
`vocab.json` + `merges.txt`, so `Tokenizer.from_path(OUT_DIR)` works and OUT_DIR is a complete backbone.weights.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from aple_jax import paths
from aple_jax.errors import AplejaxError, WeightsError, error_boundary


def convert(src: str, out_dir: str, bpe: str | None = None) -> str:
    from aple_jax.clip.tokenizer import clip_vocab, read_openai_bpe
    from aple_jax.clip.weights import flatten_params, load_clip, save_hf

    cfg, params = load_clip(src)
    save_hf(out_dir, cfg, params)
    if bpe:
        merges = read_openai_bpe(bpe)
        vocab = clip_vocab(merges)
        if len(vocab) != cfg.vocab_size:
            raise ValueError(f"{bpe} gives {len(vocab)} tokens but {src} has a vocabulary of {cfg.vocab_size}")
        with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    # Read the result back (no torch involved) and check it is the same network.
    cfg2, params2 = load_clip(out_dir)
    a, b = flatten_params(params), flatten_params(params2)
    if cfg2 != cfg or a.keys() != b.keys() or not all(np.array_equal(a[k], b[k]) for k in a):
        raise RuntimeError(f"conversion check failed: {out_dir} does not reload to the weights of {src}")
    n = sum(v.size for v in a.values())
    print(f"{src} -> {out_dir}: {n / 1e6:.1f}M parameters, {cfg}")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=paths.user_path, help="OpenAI CLIP .pt (TorchScript archive or state dict)")
    parser.add_argument("out_dir", type=paths.user_path, help="directory to write (config.json + model.safetensors)")
    parser.add_argument("--bpe", default=None, type=paths.user_path, help="OpenAI bpe_simple_vocab_16e6.txt.gz to add vocab.json/merges.txt")
    with error_boundary():
        args = parser.parse_args(argv)
        try:
            convert(args.checkpoint, args.out_dir, args.bpe)
        except (FileNotFoundError, ValueError) as e:
            if isinstance(e, AplejaxError):
                raise
            raise WeightsError(str(e)) from e


if __name__ == "__main__":
    main()
