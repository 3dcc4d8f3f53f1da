"""Generate the tiny CLIP-format BPE shipped in `aple_jax/assets/tiny_tokenizer/` (vocab.json + merges.txt).

    python -m aple_jax.clip.make_tiny_tokenizer [OUT_DIR]

Layout exactly as OpenAI's CLIP vocabulary, only shorter: the 256 byte symbols, their `</w>` (end of word)
variants, the learned merges, then `<|startoftext|>` and `<|endoftext|>` (the largest id). With all 512 byte
symbols present any text tokenizes (unknown words fall back to byte-level pieces), so any class name works.

The merges come from a small deterministic BPE learner (most frequent adjacent pair; ties broken by the pair's
string order) run on English prompt text: CoOp's hand-crafted templates, CLIP's ImageNet prompt-ensemble phrases,
and colour, shape, texture and object words. The output is byte-for-byte reproducible.
"""
from __future__ import annotations

import collections
import json
import os
import re
import sys

from aple_jax import paths
from aple_jax.clip.tokenizer import EOT_TOKEN, SOT_TOKEN, TINY_TOKENIZER_DIR, bytes_to_unicode, clip_vocab
from aple_jax.errors import error_boundary

VOCAB_SIZE = 1000
N_MERGES = VOCAB_SIZE - 512 - 2

# CoOp's per-dataset templates (protocol.md section 3.7).
CUSTOM_TEMPLATES = [
    "a photo of a {}, a type of pet.", "a photo of a {}, a type of flower.", "a photo of a {}, a type of aircraft.",
    "{} texture.", "a centered satellite photo of {}.", "a photo of a {}.", "a photo of {}, a type of food.",
    "a photo of a person doing {}.",
]
# Phrases of CLIP's ImageNet prompt ensemble (the "{}" is the class name).
ENSEMBLE_PHRASES = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a cropped photo of the {}.",
    "a tattoo of a {}.", "the embroidered {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "the plastic {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a pixelated photo of the {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a good photo of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "the origami {}.", "a sketch of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of a large {}.", "a photo of a nice {}.", "a photo of a weird {}.", "a cartoon {}.", "art of a {}.",
    "a plushie {}.", "a photo of the small {}.", "itap of a {}.", "itap of my {}.",
]
COLOURS = ("red green blue yellow orange purple pink brown black white gray grey cyan magenta violet gold silver "
           "beige maroon navy olive teal turquoise")
SHAPES = ("circle square triangle rectangle star hexagon pentagon diamond oval ellipse cross ring heart arrow line "
          "dot stripe spiral cube sphere cone cylinder pyramid")
TEXTURES = ("banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted fibrous "
            "flecked frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined marbled matted meshed "
            "paisley perforated pitted pleated polka-dotted porous potholed scaly smeared spiralled sprinkled stained "
            "stratified striped studded swirly veined waffled woven wrinkled zigzagged smooth rough")
OBJECTS = ("cat dog bird fish horse cow sheep pig frog snake lizard turtle bear lion tiger zebra giraffe elephant "
           "monkey rabbit mouse butterfly bee spider flower rose tulip daisy sunflower lily orchid tree leaf grass "
           "forest mountain river lake sea beach desert field highway road street bridge building house church "
           "tower castle car truck bus train bicycle motorcycle airplane aircraft boat ship plane wheel chair table "
           "bed sofa lamp door window clock phone computer keyboard camera television bottle cup glass plate bowl "
           "knife fork spoon apple banana orange lemon grape strawberry pizza burger cake bread cheese soup salad "
           "rice noodles sushi steak chicken egg coffee tea water fire snow rain cloud sky sun moon person man woman "
           "child people face hand playing running walking jumping swimming riding cutting dancing singing "
           "industrial residential pasture permanent crop annual vegetation herbaceous forest land satellite "
           "animal object thing picture image scene background texture pattern surface shape colour color")
DIGITS = "0 1 2 3 4 5 6 7 8 9 10 100 2000"

_PRETOKEN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


def corpus() -> list[str]:
    words = " ".join([COLOURS, SHAPES, TEXTURES, OBJECTS]).split()
    lines = [t.format(w) for t in CUSTOM_TEMPLATES + ENSEMBLE_PHRASES for w in words[::25]]
    lines += [f"a photo of a {w}." for w in words]
    lines += [f"a {c} {s}." for c in COLOURS.split() for s in SHAPES.split()[:6]]
    lines.append(DIGITS)
    return lines


def word_counts(lines: list[str]) -> collections.Counter:
    """CLIP-style pre-tokens (lower-case) as tuples of byte symbols, the last one carrying `</w>`."""
    b2u = bytes_to_unicode()
    counts: collections.Counter = collections.Counter()
    for line in lines:
        for tok in _PRETOKEN.findall(line.lower()):
            syms = [b2u[b] for b in tok.encode("utf-8")]
            syms[-1] += "</w>"
            counts[tuple(syms)] += 1
    return counts


def learn_merges(counts: collections.Counter, n_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair), never re-creating a token."""
    base = set(bytes_to_unicode().values())
    known = base | {s + "</w>" for s in base}
    words = dict(counts)
    merges: list[tuple[str, str]] = []
    banned: set[tuple[str, str]] = set()
    while len(merges) < n_merges:
        pairs: collections.Counter = collections.Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        candidates = [(-c, p) for p, c in pairs.items() if p not in banned]
        if not candidates:
            break
        _, best = min(candidates)
        if "".join(best) in known:
            banned.add(best)
            continue
        merges.append(best)
        known.add("".join(best))
        merged = "".join(best)
        new_words = {}
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + freq
        words = new_words
    return merges


def write(out_dir: str, merges: list[tuple[str, str]]) -> dict[str, int]:
    vocab = clip_vocab(merges)
    assert len(vocab) == 512 + len(merges) + 2 and vocab[EOT_TOKEN] == len(vocab) - 1 and vocab[SOT_TOKEN] == \
        len(vocab) - 2, "duplicate tokens in the vocabulary"
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(f"{json.dumps(t, ensure_ascii=False)}: {i}" for t, i in vocab.items()) + "\n}\n")
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2 - tiny CLIP BPE made by aple_jax/clip/make_tiny_tokenizer.py\n")
        f.write("".join(f"{a} {b}\n" for a, b in merges))
    return vocab


def main(argv: list[str]) -> None:
    out_dir = paths.check_path(argv[1], "OUT_DIR") if len(argv) > 1 else TINY_TOKENIZER_DIR
    merges = learn_merges(word_counts(corpus()), N_MERGES)
    if len(merges) != N_MERGES:
        raise SystemExit(f"the corpus gave only {len(merges)} merges; {N_MERGES} are needed for {VOCAB_SIZE} entries")
    vocab = write(out_dir, merges)
    print(f"wrote {out_dir}: {len(vocab)} tokens ({len(merges)} merges)")


if __name__ == "__main__":
    with error_boundary():
        main(sys.argv)
