"""anvil run as a user drives it: greedy output equal to Hugging Face's,
seeded sampling, the JSON form, and clear errors with non-zero exits."""
import json
import shutil

import pytest


def golden(shared, model):
    return json.loads((shared / "golden" / "models" / model / "cases.json").read_text())["cases"]


def run_json(anvil, *args):
    r = anvil("run", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("model", ["stories260K", "tinycode"])
def test_greedy_text_prompts_match_hf(anvil, shared, model):
    for case in golden(shared, model):
        if not case["prompt"] or len(case["ids"]) > 100:
            continue
        out = run_json(anvil, "--model", shared / "models" / model, "--prompt", case["prompt"],
                       "--temperature", "0", "--max-tokens", len(case["greedy"]))
        assert out["prompt_ids"] == case["ids"]
        assert out["ids"] == case["greedy"]
        assert out["text"] == case["greedy_text"]


def test_prompt_ids_and_streamed_text(anvil, shared):
    case = golden(shared, "stories260K")[0]
    model = shared / "models" / "stories260K"
    out = run_json(anvil, "--model", model, "--prompt-ids", "1", "--temperature", "0", "--max-tokens", "64")
    assert out["prompt_ids"] == [1]
    assert out["ids"] == case["greedy"]
    assert out["finish_reason"] == "length"
    # streamed to stdout, the same text as the JSON form
    r = anvil("run", "--model", model, "--prompt-ids", "1", "--temperature", "0", "--max-tokens", "64")
    assert r.returncode == 0, r.stderr
    assert r.stdout == case["greedy_text"] + "\n"


def test_seed_reproducible(anvil, shared):
    model = shared / "models" / "stories260K"
    args = ["--model", model, "--prompt", "Once upon a time", "--temperature", "0.9", "--top-k", "40",
            "--top-p", "0.95", "--max-tokens", "40"]
    a = run_json(anvil, *args, "--seed", "5")
    b = run_json(anvil, *args, "--seed", "5")
    c = run_json(anvil, *args, "--seed", "6")
    assert a == b
    assert a["ids"] != c["ids"]


def test_help_describes_every_flag(anvil):
    r = anvil("run", "--help")
    assert r.returncode == 0
    for flag in ["--model", "--prompt", "--prompt-ids", "--max-tokens", "--temperature", "--top-k", "--top-p",
                 "--seed", "--json", "--chat", "--system", "--device", "--threads"]:
        assert flag in r.stdout
    top = anvil("--help")
    assert top.returncode == 0 and "run" in top.stdout


@pytest.mark.parametrize("args,code,needle", [
    (["--prompt-ids", "1"], 2, "--model"),
    (["--model", "/nonexistent", "--prompt-ids", "1"], 1, "/nonexistent"),
    (["--model", "MODEL", "--prompt-ids", "1,x"], 2, "comma-separated"),
    (["--model", "MODEL", "--prompt-ids", "1,99999"], 1, "outside the vocabulary"),
    (["--model", "MODEL", "--prompt-ids", "1", "--temperature", "-1"], 2, "temperature"),
    (["--model", "MODEL", "--prompt-ids", "1", "--top-p", "1.5"], 2, "top_p"),
    (["--model", "MODEL", "--prompt-ids", "1", "--max-tokens", "ten"], 2, "--max-tokens"),
    (["--model", "MODEL"], 2, "--prompt"),
    (["--model", "MODEL", "--prompt-ids", "1", "--device", "tpu"], 1, "unknown device"),
    (["--model", "MODEL", "--prompt-ids", "1", "--bogus"], 2, "bogus"),
])
def test_usage_and_input_errors(anvil, shared, args, code, needle):
    args = [str(shared / "models" / "stories260K") if a == "MODEL" else a for a in args]
    r = anvil("run", *args)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and r.returncode < 128  # no crash


def test_broken_model_folder(anvil, shared, tmp_path):
    src = shared / "models" / "stories260K"
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(src / name, tmp_path / name)
    data = (src / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    r = anvil("run", "--model", tmp_path, "--prompt-ids", "1")
    assert r.returncode == 1
    assert "model.safetensors" in r.stderr
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (tmp_path / "model.safetensors").write_bytes(data)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = anvil("run", "--model", tmp_path, "--prompt-ids", "1")
    assert r.returncode == 1
    assert "unsupported architecture 'FalconForCausalLM'" in r.stderr
