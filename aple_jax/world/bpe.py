"""A CLIP-format BPE vocabulary learnt on the world's captions with the `tokenizers` library.

Layout as OpenAI's: the 256 byte symbols, their `</w>` variants, the learnt merges, `<|startoftext|>`, then
`<|endoftext|>` with the largest id; so `aple_jax.clip.tokenizer.Tokenizer.from_path(out_dir)` loads it.

    python -m aple_jax.world.bpe OUT_DIR [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re

import numpy as np

from aple_jax import paths
from aple_jax.clip.tokenizer import EOT_TOKEN, SOT_TOKEN, bytes_to_unicode, clip_vocab
from aple_jax.errors import error_boundary
from aple_jax.world.attributes import sample_attributes
from aple_jax.world.captions import captions
from aple_jax.world.datasets import BASE_DATASETS, SPECS

MAX_MERGES = 510  # at most 512 + 510 + 2 = 1024 tokens; the world's words need fewer
N_CAPTIONS = 20000
PRETOKEN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


def corpus(seed: int, n_captions: int = N_CAPTIONS) -> list[str]:
    """Random captions of the world plus every world dataset's prompts."""
    rng = np.random.default_rng([seed, 99])
    lines = captions(sample_attributes(rng, n_captions), random.Random(seed))
    lines += [SPECS[d].template.format(c) for d in BASE_DATASETS for c in SPECS[d].classnames]
    return lines


def pre_tokenize(line: str) -> list[str]:
    """CLIP's pre-tokens (words, single digits, punctuation runs) of a line, lower-cased, as byte symbols."""
    b2u = bytes_to_unicode()
    return ["".join(b2u[b] for b in tok.encode("utf-8")) for tok in PRETOKEN.findall(line.lower())]


def learn_merges(lines: list[str], max_merges: int = MAX_MERGES) -> list[tuple[str, str]]:
    """BPE merges of `lines` (words end with `</w>`), learnt by `tokenizers`' BpeTrainer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    alphabet = list(bytes_to_unicode().values())
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=2 * len(alphabet) + max_merges, initial_alphabet=alphabet,
                                  limit_alphabet=len(alphabet), end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator((" ".join(pre_tokenize(line)) for line in lines), trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges][:max_merges]


def write_vocabulary(out_dir: str, merges: list[tuple[str, str]]) -> int:
    """Writes vocab.json + merges.txt in CLIP's layout; returns the vocabulary size."""
    vocab = clip_vocab(merges)
    if len(vocab) != 512 + len(merges) + 2 or vocab[EOT_TOKEN] != len(vocab) - 1 or vocab[SOT_TOKEN] != len(vocab) - 2:
        raise ValueError(f"the merges give a vocabulary of {len(vocab)} tokens with duplicates; expected "
                         f"{512 + len(merges) + 2}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=0)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2 - world CLIP BPE made by aple_jax/world/bpe.py\n")
        f.write("".join(f"{a} {b}\n" for a, b in merges))
    return len(vocab)


def train_world_bpe(out_dir: str, seed: int = 0) -> int:
    """Learns the world's BPE and writes it to `out_dir`; returns the vocabulary size."""
    return write_vocabulary(out_dir, learn_merges(corpus(seed)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=paths.user_path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {args.out_dir}: {train_world_bpe(args.out_dir, args.seed)} tokens")


if __name__ == "__main__":
    with error_boundary():
        main()
