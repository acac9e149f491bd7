"""GPT-2 through the anvil command, as a user runs it:
- tests/data/models/tiny-gpt2 (a random-weight GPT2LMHeadModel made by
  scripts/make_gpt2_model.py): `anvil run` gives Hugging Face's greedy ids
  and their text, from the folder and from an engine of `anvil build`;
- the real gpt2 tokenizer end to end: the same config at GPT-2's
  vocabulary (50257) with random weights (`anvil build --random-weights`)
  and ../shared/tokenizers/gpt2: the prompt's ids are Hugging Face
  tokenizers', the text of the new ids is their decode, and no positions
  past n_positions are taken."""
import json
import pathlib

from tokenizers import Tokenizer

from conftest import SOURCE

TINY = SOURCE / "tests" / "data" / "models" / "tiny-gpt2"


def hf_completion(tok, prompt_ids, gen_ids):
    a = tok.decode(prompt_ids, skip_special_tokens=True)
    b = tok.decode(prompt_ids + gen_ids, skip_special_tokens=True)
    assert b.startswith(a)
    return b[len(a):]


def run_json(anvil, *args):
    r = anvil("run", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_tiny_gpt2_greedy_matches_hf(anvil, tmp_path):
    case = json.loads((TINY / "cases.json").read_text())["cases"][1]
    tok = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    prompt = "Once upon a time, there was a little dog"
    assert tok.encode(prompt).ids == case["ids"]
    engine = tmp_path / "tiny-gpt2.engine"
    r = anvil("build", "--model", TINY, "--output", engine)
    assert r.returncode == 0, r.stderr
    for model in (TINY, engine):
        out = run_json(anvil, "--model", model, "--prompt", prompt, "--temperature", "0", "--max-tokens",
                       len(case["greedy"]))
        assert out["prompt_ids"] == case["ids"]
        assert out["ids"] == case["greedy"]
        assert out["text"] == hf_completion(tok, case["ids"], case["greedy"])


def gpt2_vocab_model(shared, tmp_path, anvil):
    cfg = json.loads((TINY / "config.json").read_text())
    cfg.update(vocab_size=50257, bos_token_id=50256, eos_token_id=50256)
    cfg.pop("pad_token_id", None)
    folder = tmp_path / "gpt2-vocab"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).write_bytes((shared / "tokenizers" / "gpt2" / f).read_bytes())
    engine = tmp_path / "gpt2-vocab.engine"
    r = anvil("build", "--config", folder, "--random-weights", "--output", engine)
    assert r.returncode == 0, r.stderr
    return engine


def test_gpt2_tokenizer_end_to_end(anvil, shared, tmp_path):
    engine = gpt2_vocab_model(shared, tmp_path, anvil)
    tok = Tokenizer.from_file(str(shared / "tokenizers" / "gpt2" / "tokenizer.json"))
    for prompt in ["Hello, world! GPT-2 tokenizes \u00fcn\u00efc\u00f6d\u00e9 and 12345.",
                   "def f(x):\n    return x  # \U0001F600 emoji\n"]:
        out = run_json(anvil, "--model", engine, "--prompt", prompt, "--temperature", "0", "--max-tokens", "12")
        want = tok.encode(prompt).ids
        assert out["prompt_ids"] == want  # GPT-2 adds no BOS
        assert 1 <= len(out["ids"]) <= 12
        assert all(0 <= i < 50257 for i in out["ids"])
        assert out["text"] == hf_completion(tok, want, out["ids"])
        # deterministic: the same greedy ids again
        assert run_json(anvil, "--model", engine, "--prompt", prompt, "--temperature", "0", "--max-tokens",
                        "12")["ids"] == out["ids"]


def test_gpt2_context_is_n_positions(anvil, shared, tmp_path):
    engine = gpt2_vocab_model(shared, tmp_path, anvil)
    r = anvil("run", "--model", engine, "--prompt", "Hello", "--max-seq-len", "129", "--max-tokens", "4")
    assert r.returncode != 0
    assert "n_positions" in r.stderr
    # a prompt that fills the context leaves no room: a clear error, not a crash
    r = anvil("run", "--model", engine, "--prompt", " hello" * 140, "--max-tokens", "4")
    assert r.returncode != 0
    assert "context holds 128" in r.stderr
