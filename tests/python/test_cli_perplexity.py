"""anvil perplexity against a reference computed here from the Hugging Face
golden logits (../shared/golden/models/<model>/logits.safetensors, float32
from transformers): the same windows, the same scored rows (the second half
of each window, llama.cpp's convention), log-softmax in float64. Then the
comparison with a base (the same model: KL 0 and full agreement; another
dtype: KL small but not 0), the text path (BOS first, as the tokenizer
says), the corpus script, and the errors."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import SOURCE


def golden_cases(shared, model):
    return json.loads((shared / "golden" / "models" / model / "cases.json").read_text())["cases"]


def golden_logits(shared, model):
    """{name: float32 array [positions, vocab]} from a safetensors file, read by hand."""
    raw = (shared / "golden" / "models" / model / "logits.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32"
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(info["shape"])
    return out


def nll_rows(logits, targets):
    """-log softmax(row)[target] for each row, in float64."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return lse - x[np.arange(len(targets)), targets]


def window_nll(logits, ids, ctx):
    """The NLLs anvil scores in one window whose logits (from position 0) are given."""
    first = ctx // 2
    rows = np.arange(first, ctx - 1)
    return nll_rows(logits[rows], np.array(ids)[rows + 1])


def perplexity(anvil, *args):
    r = anvil("perplexity", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def write_ids(tmp_path, ids, name="ids.json"):
    p = tmp_path / name
    p.write_text(json.dumps([int(i) for i in ids]))
    return p


F32 = ("--dtype", "f32", "--kv-cache-dtype", "f32", "--threads", "2")


def test_windows_match_golden_logits(anvil, shared, tmp_path):
    """Four windows of 8 tokens, one from each tinycode prompt (the golden
    logits of a prompt's first 8 positions are a window's: attention is
    causal), then a tail shorter than a window, which is left out. The second
    window's first token is not BOS: anvil puts BOS there, as llama.cpp does,
    so its logits are still the prompt's."""
    ctx = 8
    cases = golden_cases(shared, "tinycode")
    logits = golden_logits(shared, "tinycode")
    ids, ref = [], []
    for i, case in enumerate(cases):
        window = case["ids"][:ctx]
        assert window[0] == 0  # BOS
        ref.append(window_nll(logits[f"prompt{i}.logits"], window, ctx))
        ids += [7] + window[1:] if i == 1 else window
    ids += cases[0]["ids"][1:6]  # a tail of 5: no whole window
    ref = np.concatenate(ref)
    out = perplexity(anvil, "--model", shared / "models" / "tinycode", "--ids", write_ids(tmp_path, ids),
                     "--ctx", ctx, *F32)
    assert out["windows"] == 4
    assert out["input_tokens"] == len(ids)
    assert out["tokens_scored"] == len(ref) == 4 * (ctx - 1 - ctx // 2)
    assert out["mean_nll"] == pytest.approx(ref.mean(), abs=2e-4)
    assert out["perplexity"] == pytest.approx(np.exp(ref.mean()), rel=2e-4)
    err = np.exp(ref.mean()) * ref.std(ddof=1) / np.sqrt(len(ref))
    assert out["perplexity_stderr"] == pytest.approx(err, rel=1e-2)


def test_long_window_matches_golden(anvil, shared, tmp_path):
    """One window of stories260K's 440-token prompt: 219 scored rows."""
    case = golden_cases(shared, "stories260K")[4]
    ids = case["ids"]
    ref = window_nll(golden_logits(shared, "stories260K")["prompt4.logits"], ids, len(ids))
    out = perplexity(anvil, "--model", shared / "models" / "stories260K", "--ids", write_ids(tmp_path, ids),
                     "--ctx", len(ids), "--threads", "2")
    assert out["tokens_scored"] == len(ids) - 1 - len(ids) // 2 == len(ref)
    assert out["perplexity"] == pytest.approx(np.exp(ref.mean()), rel=2e-4)


# Under the sanitizers (ANVIL_TEST_SANITIZED=1) the text is shorter: every
# check below still holds (each needs only a few 128-token windows: 3 here,
# --max-tokens 300 keeps 2, the 256-token window of the human output fits),
# and the runs there took 145 s with the whole 6,000 characters, 83 CPU-s
# with 2,500 (6 windows; ~1.4 CPU-s a window and model under ASan).
TEXT_CHARS = 1300 if os.environ.get("ANVIL_TEST_SANITIZED") == "1" else 6000


def python_text():
    """A few KB of Python source that ships with the repository."""
    return (SOURCE / "scripts" / "quant_corpus.py").read_text()[:TEXT_CHARS]


def test_text_is_tokenized_with_bos(anvil, shared, tmp_path):
    """--input FILE scores what Hugging Face's encode(text) gives (BOS
    first): the same numbers as --ids of those ids."""
    text = tmp_path / "code.py"
    text.write_text(python_text())
    ids = Tokenizer.from_file(str(shared / "models" / "tinycode" / "tokenizer.json")).encode(text.read_text()).ids
    assert ids[0] == 0
    model = shared / "models" / "tinycode"
    a = perplexity(anvil, "--model", model, "--input", text, "--ctx", 128, "--threads", "2")
    b = perplexity(anvil, "--model", model, "--ids", write_ids(tmp_path, ids), "--ctx", 128, "--threads", "2")
    assert a["input_tokens"] == len(ids)
    assert a["windows"] == len(ids) // 128 and a["tokens_scored"] == a["windows"] * 63
    assert a["perplexity"] == b["perplexity"]
    # --max-tokens keeps the first windows only
    c = perplexity(anvil, "--model", model, "--input", text, "--ctx", 128, "--max-tokens", 300, "--threads", "2")
    assert c["windows"] == 2 and c["tokens_scored"] == 126


def test_base_same_model_agrees(anvil, shared, tmp_path):
    text = tmp_path / "code.py"
    text.write_text(python_text())
    model = shared / "models" / "tinycode"
    out = perplexity(anvil, "--model", model, "--base", model, "--input", text, "--ctx", 128, "--threads", "2")
    assert out["tokens_scored"] > 100
    assert out["kl_mean"] == 0 and out["kl_max"] == 0
    assert out["top1_agreement"] == 1
    assert out["perplexity_ratio"] == 1
    assert out["base_perplexity"] == out["perplexity"]
    assert out["abs_dp_max"] == 0


def test_base_other_dtype_differs_a_little(anvil, shared, tmp_path):
    """The model with a bf16 KV cache (on the CPU activations stay f32) against
    itself all in f32: not the same distributions, but close."""
    text = tmp_path / "code.py"
    text.write_text(python_text())
    model = shared / "models" / "tinycode"
    out = perplexity(anvil, "--model", model, "--dtype", "bf16", "--kv-cache-dtype", "bf16", "--base", model,
                     "--base-dtype", "f32", "--input", text, "--ctx", 128, "--threads", "2")
    assert 0 < out["kl_mean"] < 1e-3
    assert out["kl_median"] <= out["kl_p99"] <= out["kl_p999"] <= out["kl_max"]
    assert out["top1_agreement"] > 0.95
    assert out["perplexity_ratio"] == pytest.approx(1, abs=0.01)
    assert out["perplexity"] != out["base_perplexity"]
    assert out["abs_dp_max"] > 0


def test_human_output(anvil, shared, tmp_path):
    text = tmp_path / "code.py"
    text.write_text(python_text())
    model = shared / "models" / "tinycode"
    r = anvil("perplexity", "--model", model, "--base", model, "--input", text, "--ctx", 256, "--threads", "2")
    assert r.returncode == 0, r.stderr
    for line in ("perplexity:", "base perplexity:", "mean KL divergence (base || model):", "top-1 agreement:",
                 "tokens scored", "time:"):
        assert line in r.stdout


def test_errors(anvil, shared, tmp_path):
    model = shared / "models" / "tinycode"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x\n")
    cases = [
        (["--input", tmp_path / "missing.txt"], "missing.txt"),
        (["--input", empty], "is empty"),
        (["--input", short, "--ctx", 64], "needs at least 64"),
        (["--input", short, "--ctx", 4096], "longer than the context"),
        (["--input", short, "--ctx", 8, "--base", shared / "models" / "stories260K"], "vocabulary"),
        (["--ids", write_ids(tmp_path, [0, 1, 99999])], "outside the vocabulary"),
        (["--ids", short], "expected token ids"),
        ([], "--input FILE"),
        (["--input", short, "--ids", short], "one of them"),
    ]
    for args, msg in cases:
        r = anvil("perplexity", "--model", model, *args)
        assert r.returncode != 0, args
        assert msg in r.stderr, (args, r.stderr)
        assert r.stdout == "", args
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = anvil("perplexity", "--model", model, "--input", short, "--ctxx", 8)
    assert r.returncode == 2 and "--ctx" in r.stderr


def test_corpus_script(anvil, shared, tmp_path):
    """scripts/quant_corpus.py: the same bytes twice, a header naming the
    Python version, a side file listing every file, and at least 100,000
    tinycode tokens."""
    outs = []
    for name in ("a.txt", "b.txt"):
        out = tmp_path / name
        subprocess.run([sys.executable, SOURCE / "scripts" / "quant_corpus.py", out], check=True,
                       capture_output=True, text=True)
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    text = outs[0].read_text()
    meta = json.loads((tmp_path / "a.txt.json").read_text())
    assert text.startswith(f"# anvil quantization corpus (scripts/quant_corpus.py): Python {meta['python_version']}")
    assert meta["files"] and all(f"anvil corpus file: {f['path']} ====" in text for f in meta["files"])
    assert meta["bytes"] == len(outs[0].read_bytes())
    ids = Tokenizer.from_file(str(shared / "models" / "tinycode" / "tokenizer.json")).encode(text).ids
    assert len(ids) >= 100_000
