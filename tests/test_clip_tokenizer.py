"""Prompt tokenization: parity with transformers' CLIPTokenizer, the OpenAI .txt.gz path, the tiny BPE."""
import gzip
import json
import os

import numpy as np
import pytest
from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode as hf_bytes_to_unicode

from aple_jax.clip import make_tiny_tokenizer
from aple_jax.clip.tokenizer import TINY_TOKENIZER_DIR, Tokenizer, bytes_to_unicode

AWKWARD = [
    "Crème brûlée", "St. John's wort", "7-Eleven", "BMW M3 coupe 2012", "Hôtel-de-Ville", "jack-o'-lantern",
    "café au lait", "naïve", "  multiple   spaces\tand\ttabs ", "TOYOTA Prius", "100% cotton", "c++ (language)",
    "Überstraße", "日本の庭", "emoji 🙂 face", "", "x", "a" * 60, "Abyssinian", "great_crested_newt",
    "o'reilly & sons, inc.", "1/2-inch", "rock'n'roll", "don't stop", "she'll", "Ångström", "ﬁsh (ligature)",
    "a photo of a {}, a type of pet.".format("Egyptian Mau"),
]
TOO_LONG = "a very long class name " * 20


def hf_reference(hf, texts, context_length=77):
    """transformers' ids, padded with 0 after EOT like OpenAI's clip.tokenize, and the EOT position."""
    ids = np.zeros((len(texts), context_length), np.int32)
    eot = np.zeros(len(texts), np.int32)
    for i, t in enumerate(texts):
        seq = hf(t)["input_ids"]
        assert seq[-1] == hf.eos_token_id and len(seq) <= context_length
        ids[i, :len(seq)] = seq
        eot[i] = len(seq) - 1
    return ids, eot


@pytest.fixture(scope="module")
def hf_tiny():
    return CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def test_builtin_tiny_facts():
    tok = Tokenizer.builtin_tiny()
    vocab = json.load(open(os.path.join(TINY_TOKENIZER_DIR, "vocab.json"), encoding="utf-8"))
    assert len(vocab) == tok.vocab_size == 1000
    assert (tok.sot_id, tok.eot_id) == (998, 999) == (vocab["<|startoftext|>"], vocab["<|endoftext|>"])
    assert max(vocab.values()) == tok.eot_id
    size = sum(os.path.getsize(os.path.join(TINY_TOKENIZER_DIR, f)) for f in os.listdir(TINY_TOKENIZER_DIR))
    assert size < 32_000


def test_tiny_matches_transformers_on_awkward_names(hf_tiny):
    tok = Tokenizer.from_path(TINY_TOKENIZER_DIR)
    ids, eot = tok.tokenize(AWKWARD)
    ref_ids, ref_eot = hf_reference(hf_tiny, AWKWARD)
    assert ids.dtype == np.int32 and eot.dtype == np.int32 and ids.shape == (len(AWKWARD), 77)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(eot, ref_eot)
    # [SOT] + bpe + [EOT], zeros after, EOT the row maximum (argmax pooling works)
    assert (ids[:, 0] == tok.sot_id).all()
    np.testing.assert_array_equal(ids[np.arange(len(AWKWARD)), eot], tok.eot_id)
    np.testing.assert_array_equal(np.argmax(ids, axis=-1), eot)
    assert all((row[e + 1:] == 0).all() for row, e in zip(ids, eot))


def test_any_lowercase_ascii_text_roundtrips():
    tok = Tokenizer.builtin_tiny()
    texts = ["zyxwvutsrqponm", "qwerty uiop", "the quick brown fox jumps over the lazy dog", "0123456789"]
    ids, eot = tok.tokenize(texts)
    assert [tok.decode(r) for r in ids] == ["zyxwvutsrqponm", "qwerty uiop",
                                            "the quick brown fox jumps over the lazy dog",
                                            "0 1 2 3 4 5 6 7 8 9"]  # CLIP splits digits
    assert (ids < tok.vocab_size).all()


def test_prompt_too_long_is_a_clear_error():
    tok = Tokenizer.builtin_tiny()
    with pytest.raises(ValueError, match=r"1 prompt\(s\) do not fit the context length of 77 tokens.*"
                                         r"'a very long class name .*' \(\d+ tokens\)"):
        tok.tokenize(["ok", TOO_LONG])
    ids, eot = tok.tokenize(["a photo"], context_length=4)  # exactly fits: SOT a photo EOT
    assert eot.tolist() == [3]
    with pytest.raises(ValueError, match=r"'a red photo' \(5 tokens\)"):
        tok.tokenize(["a red photo"], context_length=4)


def _write_bpe_gz(path, merges, extra_lines=0):
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def test_openai_bpe_gz_gives_same_ids_as_hf(tmp_path, hf_tiny):
    merges = [tuple(line.split()) for line in
              open(os.path.join(TINY_TOKENIZER_DIR, "merges.txt"), encoding="utf-8").read().splitlines()[1:]]
    gz = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    _write_bpe_gz(gz, merges)
    tok = Tokenizer.from_path(str(gz))
    assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (1000, 998, 999)
    np.testing.assert_array_equal(tok.tokenize(AWKWARD)[0], hf_reference(hf_tiny, AWKWARD)[0])
    # a directory holding only the .gz works too
    assert Tokenizer.from_path(str(tmp_path)).vocab_size == 1000


def test_synthetic_openai_bpe_matches_clip_tokenizer_built_from_vocab(tmp_path):
    """A different, synthetic merge list: our OpenAI path vs CLIPTokenizer over the equivalent vocab/merges files,
    the vocabulary built here independently (transformers' byte table, OpenAI's order)."""
    counts = make_tiny_tokenizer.word_counts(["the striped zebra crossing", "a photo of the zebra's stripes",
                                              "crossing the street, zebra-like stripes!", "photo photo photo"])
    merges = make_tiny_tokenizer.learn_merges(counts, 30)
    assert len(merges) == 30
    gz = tmp_path / "synthetic.txt.gz"
    _write_bpe_gz(gz, merges)

    base = list(hf_bytes_to_unicode().values())
    assert base == list(bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    (ref_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (ref_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                        encoding="utf-8")
    hf = CLIPTokenizer.from_pretrained(str(ref_dir))
    ours = Tokenizer.from_path(str(gz))
    texts = AWKWARD + ["zebra crossing stripes", "The Striped Street!"]
    np.testing.assert_array_equal(ours.tokenize(texts)[0], hf_reference(hf, texts)[0])
    assert ours.vocab_size == len(tokens) == 512 + 30 + 2
    assert ours.tokenize(["zebra"])[0][0, 1] == tokens.index("zebra</w>")


def test_tiny_tokenizer_is_reproducible(tmp_path):
    make_tiny_tokenizer.main(["make_tiny_tokenizer", str(tmp_path)])
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == open(os.path.join(TINY_TOKENIZER_DIR, name), "rb").read(), name


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_tokenizer_here"):
        Tokenizer.from_path(str(tmp_path / "no_tokenizer_here"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"has no tokenizer files.*vocab\.json"):
        Tokenizer.from_path(str(tmp_path))
    pt = tmp_path / "ViT-B-16.pt"
    pt.write_bytes(b"")
    with pytest.raises(ValueError, match=r"ViT-B-16\.pt is not a tokenizer.*bpe_simple_vocab_16e6"):
        Tokenizer.from_path(str(pt))
    bad = tmp_path / "broken.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"broken\.txt\.gz"):
        Tokenizer.from_path(str(bad))
