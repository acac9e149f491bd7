"""Differential test: anvil's tokenizer against Hugging Face `tokenizers`.

For every tokenizer.json under ANVIL_SHARED_DIR (tokenizers/ and models/),
and for variants of them that switch on the components those files do not
use (other normalizers, pre-tokenizers, added-token flags, decoders,
post-processors, truncation, padding), random texts are encoded and random
ids decoded by both, and the results must be identical. anvil runs once per
tokenizer through `anvil tokenize --jsonl` / `anvil detokenize --jsonl`
(ANVIL_BIN), with every case on stdin. The seed is fixed.
"""
import copy
import hashlib
import json
import os
import random
import subprocess
import tempfile

import pytest
from tokenizers import Tokenizer

SHARED = os.environ.get("ANVIL_SHARED_DIR", os.path.join(os.path.dirname(__file__), "../../../shared"))
ANVIL = os.environ.get("ANVIL_BIN", os.path.join(os.path.dirname(__file__), "../../build/anvil"))
SEED = 20240611

# Code point ranges of many scripts (and some symbols); random picks from
# them give text that exercises letters, marks, digits and punctuation.
SCRIPTS = [
    (0x20, 0x7E), (0xA0, 0x24F), (0x250, 0x2FF), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x52F),
    (0x530, 0x58F), (0x590, 0x5FF), (0x600, 0x6FF), (0x700, 0x74F), (0x900, 0x97F), (0x980, 0x9FF),
    (0xA00, 0xA7F), (0xB80, 0xBFF), (0xC00, 0xC7F), (0xD00, 0xD7F), (0xE00, 0xE7F), (0xE80, 0xEFF),
    (0xF00, 0xFFF), (0x1000, 0x109F), (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x1200, 0x137F),
    (0x13A0, 0x13FF), (0x1780, 0x17FF), (0x1E00, 0x1EFF), (0x1F00, 0x1FFF), (0x2000, 0x206F),
    (0x20A0, 0x20CF), (0x2100, 0x214F), (0x2190, 0x22FF), (0x2460, 0x24FF), (0x2500, 0x257F),
    (0x2E80, 0x2FDF), (0x3000, 0x303F), (0x3040, 0x30FF), (0x3100, 0x312F), (0x3130, 0x318F),
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xA000, 0xA48F), (0xAC00, 0xD7A3), (0xF900, 0xFAFF),
    (0xFB00, 0xFB4F), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0x10000, 0x1007F), (0x10400, 0x1044F),
    (0x1D400, 0x1D7FF), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF),
    (0x20000, 0x2A6DF), (0x2B820, 0x2CEAF), (0x30000, 0x3134F), (0x31350, 0x323AF), (0x1E900, 0x1E95F),
    (0x11000, 0x1107F), (0x16A40, 0x16A6F), (0x1E4D0, 0x1E4FF), (0x11F00, 0x11F5F),
]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n ", "\u00a0", "\u3000", "\u2009", "\u200b",
              "\u2028", "\u0085", "\u180e", "\x0b", "\x0c", "    ", "\t\t", " \t"]
EMOJI = ["😀", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷", "🧑🏿‍🔬", "✨", "🤖", "1️⃣", "👁‍🗨", "🫠", "🦀"]
WORDS = ["Hello", "world", "the", "quick", "brown", "fox", "don't", "I'm", "we'll", "they've", "it's", "HELLO",
         "naïve", "café", "Straße", "İstanbul", "ǅemal", "ΣΊΣΥΦΟΣ", "日本語", "中文", "한국어", "русский",
         "العربية", "हिन्दी", "def", "return", "self.x", "x_1", "__init__", "->", "!=", "==", "...", "??",
         "$100", "3.14159", "1,000,000", "2024-06-11", "e\u0301", "a\u0308\u0323", "\u1100\u1161\u11a8"]


def rand_cp(rng):
    lo, hi = rng.choice(SCRIPTS)
    return chr(rng.randint(lo, hi))


def rand_any_cp(rng):
    while True:
        c = rng.randint(0, 0x10FFFF)
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def rand_text(rng, specials):
    parts = []
    for _ in range(rng.randint(1, 12)):
        k = rng.random()
        if k < 0.22:
            parts.append("".join(rand_cp(rng) for _ in range(rng.randint(1, 10))))
        elif k < 0.30:
            parts.append("".join(rand_any_cp(rng) for _ in range(rng.randint(1, 4))))
        elif k < 0.45:
            parts.append(rng.choice(WORDS))
        elif k < 0.58:
            parts.append(rng.choice(WHITESPACE))
        elif k < 0.66:
            parts.append(rng.choice(EMOJI))
        elif k < 0.74:
            parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9))))
        elif k < 0.84 and specials:
            s = rng.choice(specials)
            if rng.random() < 0.3:
                s = rng.choice([" ", "  ", "\n", ""]) + s + rng.choice([" ", "  ", "\n", "x", ""])
            parts.append(s)
        elif k < 0.92:
            parts.append("".join(rng.choice("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") for _ in range(rng.randint(1, 4))))
        else:
            parts.append(rng.choice(["'s", "'T", "'re", "'LL", "'d", "'m", "'ve"]))
        if rng.random() < 0.5:
            parts.append(" ")
    text = "".join(parts)
    if rng.random() < 0.1:
        text = text * rng.randint(2, 5)
    return text


def run_anvil(cmd, tokenizer_path, lines):
    proc = subprocess.run([ANVIL, cmd, "--tokenizer", tokenizer_path, "--jsonl"],
                          input="".join(json.dumps(x) + "\n" for x in lines).encode(), capture_output=True)
    out = proc.stdout.decode().split("\n")[:-1]  # not splitlines(): U+2028 and U+0085 are text
    assert len(out) == len(lines), f"anvil {cmd} answered {len(out)} lines for {len(lines)}: {proc.stderr.decode()[:2000]}"
    return [json.loads(o) for o in out]


def check(tokenizer_path, n_encode, n_decode, seed):
    hf = Tokenizer.from_file(tokenizer_path)
    rng = random.Random(seed)
    specials = [t.content for t in hf.get_added_tokens_decoder().values()]
    texts = [rand_text(rng, specials) for _ in range(n_encode)]
    cases = [{"text": t, "add_special_tokens": rng.random() < 0.5} for t in texts]
    got = run_anvil("tokenize", tokenizer_path, cases)
    bad = []
    for c, g in zip(cases, got):
        want = hf.encode(c["text"], add_special_tokens=c["add_special_tokens"]).ids
        if g.get("ids") != want:
            bad.append((c, want, g))
    vs = hf.get_vocab_size(True)
    dec = []
    for _ in range(n_decode):
        ids = [rng.randrange(0, vs + 8) for _ in range(rng.randint(0, 24))]
        if specials and rng.random() < 0.5:
            ids.insert(rng.randint(0, len(ids)), hf.token_to_id(rng.choice(specials)))
        dec.append({"ids": ids, "skip_special_tokens": rng.random() < 0.5})
    # and the round trip of the encoded cases
    for c, g in zip(cases[: n_decode], got):
        if "ids" in g:
            dec.append({"ids": g["ids"], "skip_special_tokens": rng.random() < 0.5})
    got_d = run_anvil("detokenize", tokenizer_path, dec)
    for c, g in zip(dec, got_d):
        want = hf.decode(c["ids"], skip_special_tokens=c["skip_special_tokens"])
        if g.get("text") != want:
            bad.append((c, want, g))
    msg = "\n".join(f"{json.dumps(c, ensure_ascii=False)[:300]}\n   hf:    {json.dumps(w, ensure_ascii=False)[:300]}"
                    f"\n   anvil: {json.dumps(g, ensure_ascii=False)[:300]}" for c, w, g in bad[:8])
    assert not bad, f"{tokenizer_path}: {len(bad)} of {len(cases) + len(dec)} cases differ\n{msg}"


def shared_tokenizers():
    seen, out = set(), []
    for sub in ("tokenizers", "models"):
        base = os.path.join(SHARED, sub)
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            path = os.path.join(base, name, "tokenizer.json")
            if not os.path.exists(path):
                continue
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            out.append(pytest.param(path, id=f"{sub}/{name}"))
    return out


@pytest.mark.parametrize("path", shared_tokenizers())
def test_shared_tokenizer(path):
    check(path, n_encode=700, n_decode=200, seed=SEED)


# ------------------------------------------------------------ variants

def added(content, i, **kw):
    d = {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": False}
    d.update(kw)
    return d


def variant_specs():
    """(name, base tokenizer, function that edits its JSON)."""
    def norm(n):
        def f(j):
            j["normalizer"] = n
        return f

    def pre(p):
        def f(j):
            j["pre_tokenizer"] = p
        return f

    def both(*fs):
        def f(j):
            for g in fs:
                g(j)
        return f

    def extra_added(j):
        n = len(j["model"]["vocab"]) + len(j["added_tokens"]) + 10
        j["added_tokens"] += [
            added("<mask>", n, lstrip=True, rstrip=True, special=True),
            added("ello", n + 1, single_word=True),
            added("[X]", n + 2, rstrip=True, normalized=True),
            added("World", n + 3, normalized=True),
            added(" mid ", n + 4, special=True, lstrip=True),
        ]

    def split(pattern, behavior, invert=False):
        return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}

    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return [
        ("gpt2-nfkc-lower", "gpt2", norm({"type": "Sequence", "normalizers": [
            {"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Strip", "strip_left": True, "strip_right": True}]})),
        ("gpt2-nfd-stripaccents", "gpt2", norm({"type": "Sequence", "normalizers": [
            {"type": "NFD"}, {"type": "StripAccents"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}]})),
        ("gpt2-nfkd-nmt", "gpt2", norm({"type": "Sequence", "normalizers": [{"type": "Nmt"}, {"type": "NFKD"}]})),
        ("gpt2-bert-norm", "gpt2", norm({"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                                         "strip_accents": None, "lowercase": True})),
        ("gpt2-prefix-space", "gpt2", pre({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                           "use_regex": True})),
        ("gpt2-added-flags", "gpt2", both(extra_added, norm({"type": "Lowercase"}))),
        ("gpt2-splits", "gpt2", pre({"type": "Sequence", "pretokenizers": [
            split({"String": " "}, "MergedWithPrevious"), split({"Regex": "\\d+"}, "Contiguous", True),
            {"type": "Digits", "individual_digits": False}, {"type": "Punctuation", "behavior": "MergedWithNext"},
            bl]})),
        ("gpt2-whitespace", "gpt2", pre({"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, bl]})),
        ("gpt2-bert-pre", "gpt2", pre({"type": "Sequence", "pretokenizers": [{"type": "BertPreTokenizer"}, bl]})),
        ("gpt2-wsplit-removed", "gpt2", pre({"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"}, split({"Regex": "[aeiou]"}, "Removed"), bl]})),
        ("gpt2-roberta-trunc-pad", "gpt2", lambda j: j.update({
            "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                               "trim_offsets": True, "add_prefix_space": False},
            "truncation": {"direction": "Left", "max_length": 17, "strategy": "LongestFirst", "stride": 0},
            "padding": {"strategy": {"Fixed": 24}, "direction": "Right", "pad_to_multiple_of": None,
                        "pad_id": 50256, "pad_type_id": 0, "pad_token": "<|endoftext|>"}})),
        ("llama2-metaspace-always-split", "llama2", pre({"type": "Metaspace", "replacement": "\u2581",
                                                          "prepend_scheme": "always", "split": True})),
        ("llama2-metaspace-never", "llama2", both(
            pre({"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never", "split": True}),
            lambda j: j.update({"decoder": {"type": "Metaspace", "replacement": "\u2581",
                                            "prepend_scheme": "never", "split": True}}))),
        ("llama2-first-after-split", "llama2", both(
            norm({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}]}),
            pre({"type": "Sequence", "pretokenizers": [
                split({"Regex": "[0-9]+|\u2581"}, "Isolated"),
                {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}]}),
            lambda j: j.update({"decoder": {"type": "Metaspace", "replacement": "\u2581",
                                            "prepend_scheme": "first", "split": True}}))),
        ("llama2-bert-post", "llama2", lambda j: j.update({
            "post_processor": {"type": "Sequence", "processors": [
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                {"type": "BertProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1]}]},
            "padding": {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": 8,
                        "pad_id": 0, "pad_type_id": 0, "pad_token": "<unk>"}})),
        ("phi2-wordpiece-dec", "phi-2", lambda j: j.update({"decoder": {"type": "Sequence", "decoders": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            {"type": "WordPiece", "prefix": "##", "cleanup": True},
            {"type": "Replace", "pattern": {"Regex": "o+"}, "content": "0"},
            {"type": "Strip", "content": "e", "start": 2, "stop": 0}]}})),
        ("phi2-bpe-dec", "phi-2", lambda j: j.update({"decoder": {"type": "BPEDecoder", "suffix": "a"}})),
    ]


def variants():
    return [pytest.param(name, base, fn, id=name) for name, base, fn in variant_specs()]


@pytest.mark.parametrize("name,base,edit", variants())
def test_variant(name, base, edit, tmp_path):
    j = json.load(open(os.path.join(SHARED, "tokenizers", base, "tokenizer.json"), encoding="utf-8"))
    j = copy.deepcopy(j)
    edit(j)
    path = os.path.join(tmp_path, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    check(path, n_encode=300, n_decode=80, seed=SEED + len(name))


# ------------------------------------------------------------ synthetic models

def synthetic_bpe(seed, prefix, suffix, fuse_unk, byte_fallback, ignore_merges):
    """A small BPE over a few letters with the model options the shared files
    leave off: continuing_subword_prefix, end_of_word_suffix, unk fusing,
    partial byte fallback, ignore_merges."""
    rng = random.Random(seed)
    vocab = {"<unk>": 0}
    def add(t):
        if t not in vocab:
            vocab[t] = len(vocab)
    for c in "abcdefgh":
        for t in (c, prefix + c, c + suffix, prefix + c + suffix):
            add(t)
    for b in range(0x41, 0x48):  # byte fallback only for A..G
        add("<0x%02X>" % b)
    merges = []
    toks = list(vocab)[1:]
    for _ in range(150):
        a = rng.choice(toks)
        b = rng.choice([t for t in toks if t.startswith(prefix)] if prefix else toks)
        if a.startswith("<0x") or b.startswith("<0x") or (a, b) in merges:
            continue
        new = a + b[len(prefix):]
        add(new)
        toks.append(new)
        merges.append((a, b))
    j = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [
            {"id": 0, "content": "<unk>", "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}],
         "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None,
         "decoder": {"type": "BPEDecoder", "suffix": suffix} if suffix else
                    {"type": "WordPiece", "prefix": prefix or "##", "cleanup": False},
         "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                   "continuing_subword_prefix": prefix or None, "end_of_word_suffix": suffix or None,
                   "fuse_unk": fuse_unk, "byte_fallback": byte_fallback, "ignore_merges": ignore_merges,
                   "vocab": vocab, "merges": [list(m) for m in merges]}}
    return j


SYNTHETIC = [
    ("prefix-suffix", "##", "</w>", False, False, False),
    ("prefix-fuse-unk", "##", "", True, True, False),
    ("suffix-bytefallback", "", "</w>", False, True, True),
    ("plain-fuse-ignore", "", "", True, False, True),
]


@pytest.mark.parametrize("name,prefix,suffix,fuse,bf,im", [pytest.param(*s, id=s[0]) for s in SYNTHETIC])
def test_synthetic(name, prefix, suffix, fuse, bf, im, tmp_path):
    j = synthetic_bpe(len(name), prefix, suffix, fuse, bf, im)
    path = os.path.join(tmp_path, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    hf = Tokenizer.from_file(path)
    rng = random.Random(SEED)
    alphabet = "abcdefghabcdefghABCXYZé  \n"
    cases = [{"text": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))),
              "add_special_tokens": True} for _ in range(400)]
    got = run_anvil("tokenize", path, cases)
    bad = [(c, hf.encode(c["text"]).ids, g) for c, g in zip(cases, got) if g.get("ids") != hf.encode(c["text"]).ids]
    dec = [{"ids": g["ids"], "skip_special_tokens": i % 2 == 0} for i, g in enumerate(got) if "ids" in g]
    got_d = run_anvil("detokenize", path, dec)
    bad += [(c, hf.decode(c["ids"], skip_special_tokens=c["skip_special_tokens"]), g) for c, g in zip(dec, got_d)
            if g.get("text") != hf.decode(c["ids"], skip_special_tokens=c["skip_special_tokens"])]
    assert not bad, f"{name}: {len(bad)} differ, first: {bad[:3]}"
