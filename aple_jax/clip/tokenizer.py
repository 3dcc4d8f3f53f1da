"""CLIP BPE tokenization of prompts: `[SOT] + bpe(text) + [EOT]`, zero-padded like OpenAI's `clip.tokenize`.

The BPE itself is transformers' `CLIPTokenizer` (backed by the `tokenizers` library; no torch), built from
- a Hugging Face tokenizer directory (`vocab.json` + `merges.txt`, or `tokenizer.json`), or
- OpenAI's `bpe_simple_vocab_16e6.txt.gz`, turned into the same vocabulary and merges that OpenAI's
  `SimpleTokenizer` builds (256 byte symbols, their `</w>` variants, the merges, then SOT and EOT).
"""
from __future__ import annotations

import functools
import gzip
import os
from typing import Sequence

import numpy as np

from aple_jax.errors import ConfigError, StorageError, WeightsError

TINY_TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                  "tiny_tokenizer")
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
OPENAI_MERGES_END = 49152 - 256 - 2 + 1  # OpenAI reads merges lines [1:OPENAI_MERGES_END]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the remaining bytes (control chars, space, ...) map, in byte order,
    to code points 256, 257, ... The dict is ordered printable bytes first, then the remapped ones, which is the
    order of the first 256 entries of CLIP's vocabulary.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def clip_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """The vocabulary OpenAI's SimpleTokenizer derives from a merge list (EOT gets the largest id)."""
    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab[t] = i  # a duplicate merge result keeps its last id, as dict(zip(vocab, range(...))) does
    return vocab


def read_openai_bpe(path: str) -> list[tuple[str, str]]:
    """Merges of an OpenAI `bpe_simple_vocab_16e6.txt.gz` (or an uncompressed .txt): lines [1:48895], as OpenAI."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise WeightsError(f"cannot read the BPE merges file {path}: {e} (expected OpenAI's "
                         "bpe_simple_vocab_16e6.txt.gz)") from e
    merges = []
    for n, line in enumerate(text.split("\n")[1:OPENAI_MERGES_END], start=2):
        if not line.strip():
            continue  # the trailing empty line of a short file
        parts = line.split()
        if len(parts) != 2:
            raise WeightsError(f"{path}, line {n}: expected a merge 'a b', got {line!r}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise WeightsError(f"{path} holds no BPE merges")
    return merges


class Tokenizer:
    """CLIP prompt tokenizer: `tokenize(texts) -> (ids (N, L) int32 zero-padded, eot_idx (N,) int32)`."""

    def __init__(self, hf_tokenizer, source: str):
        self._tok = hf_tokenizer
        self.source = source
        self.sot_id = int(hf_tokenizer.convert_tokens_to_ids(SOT_TOKEN))
        self.eot_id = int(hf_tokenizer.convert_tokens_to_ids(EOT_TOKEN))
        if hf_tokenizer.bos_token_id != self.sot_id or hf_tokenizer.eos_token_id != self.eot_id:
            raise WeightsError(f"tokenizer {source}: expected bos/eos tokens {SOT_TOKEN}/{EOT_TOKEN}, got "
                             f"{hf_tokenizer.bos_token!r}/{hf_tokenizer.eos_token!r}")
        self.vocab_size = len(hf_tokenizer)

    @property
    def max_length(self) -> int | None:
        """The context length the tokenizer files declare (`model_max_length`), None where they declare none."""
        n = getattr(self._tok, "model_max_length", None)
        return int(n) if isinstance(n, int) and 0 < n < 10 ** 6 else None

    # ------------------------------------------------------------------------------------------------ builders
    @classmethod
    def from_path(cls, path: str) -> "Tokenizer":
        """A HF tokenizer dir (vocab.json + merges.txt, or tokenizer.json) or OpenAI's bpe_simple_vocab_16e6.txt.gz."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise StorageError(f"tokenizer not found: {path} does not exist (expected a directory with "
                                    "vocab.json + merges.txt or tokenizer.json, or bpe_simple_vocab_16e6.txt.gz)")
        if os.path.isdir(path):
            files = set(os.listdir(path))
            if {"vocab.json", "merges.txt"} <= files or "tokenizer.json" in files:
                return cls(_hf_from_dir(path), path)
            for name in ("bpe_simple_vocab_16e6.txt.gz", "bpe_simple_vocab_16e6.txt"):
                if name in files:
                    return cls.from_openai_bpe(os.path.join(path, name))
            raise StorageError(
                f"{path} has no tokenizer files: expected vocab.json + merges.txt, tokenizer.json or "
                f"bpe_simple_vocab_16e6.txt.gz; found {sorted(files)[:20]}. For an OpenAI .pt checkpoint pass the "
                "BPE file explicitly (backbone.tokenizer=/path/to/bpe_simple_vocab_16e6.txt.gz)")
        if path.endswith((".txt.gz", ".txt")):
            return cls.from_openai_bpe(path)
        if os.path.basename(path) in ("vocab.json", "merges.txt", "tokenizer.json"):
            return cls.from_path(os.path.dirname(os.path.abspath(path)))
        raise WeightsError(f"{path} is not a tokenizer (expected a directory with vocab.json + merges.txt or "
                         "tokenizer.json, or OpenAI's bpe_simple_vocab_16e6.txt.gz). A .pt/.safetensors checkpoint "
                         "holds no vocabulary: pass backbone.tokenizer=/path/to/bpe_simple_vocab_16e6.txt.gz")

    @classmethod
    def from_openai_bpe(cls, path: str) -> "Tokenizer":
        from transformers import CLIPTokenizer

        merges = read_openai_bpe(path)
        return cls(CLIPTokenizer(vocab=clip_vocab(merges), merges=merges), path)

    @classmethod
    def builtin_tiny(cls) -> "Tokenizer":
        """The ~1000-entry CLIP-format BPE shipped in aple_jax/assets/tiny_tokenizer (tiny random CLIPs, demo)."""
        return _builtin_tiny()

    # ------------------------------------------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """`[SOT] + bpe(text) + [EOT]` without padding."""
        return list(self._tok(text, add_special_tokens=True)["input_ids"])

    def tokenize(self, texts: Sequence[str] | str, context_length: int = 77) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N, context_length) int32, zero-padded after EOT; eot_idx (N,) int32, the EOT position)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        encoded = self._tok(texts, add_special_tokens=True)["input_ids"] if texts else []
        ids = np.zeros((len(texts), context_length), np.int32)
        eot = np.zeros((len(texts),), np.int32)
        too_long = []
        for i, (text, seq) in enumerate(zip(texts, encoded)):
            if len(seq) > context_length:
                shown = text if len(text) <= 120 else text[:100] + "..." + text[-10:]
                too_long.append(f"{shown!r} ({len(seq)} tokens)")
                continue
            ids[i, :len(seq)] = seq
            eot[i] = len(seq) - 1
        if too_long:
            shown = "; ".join(too_long[:5]) + (f"; and {len(too_long) - 5} more" if len(too_long) > 5 else "")
            raise ConfigError(f"{len(too_long)} prompt(s) do not fit the context length of {context_length} tokens "
                             f"(including SOT and EOT): {shown}. Shorten the class name or template, or use fewer "
                             "context tokens")
        return ids, eot

    def decode(self, ids: Sequence[int]) -> str:
        """The text of one row of `tokenize` (SOT dropped, cut at the first EOT)."""
        ids = [int(i) for i in ids]
        if self.eot_id in ids:
            ids = ids[:ids.index(self.eot_id)]
        return self._tok.decode([i for i in ids if i != self.sot_id])

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"


def _hf_from_dir(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise WeightsError(f"cannot load a CLIP tokenizer from {path}: {type(e).__name__}: {e}") from e


@functools.lru_cache(maxsize=1)
def _builtin_tiny() -> Tokenizer:
    return Tokenizer(_hf_from_dir(TINY_TOKENIZER_DIR), TINY_TOKENIZER_DIR)
