"""Random weights without a file: anvil run, run --input, bench and serve
with --config FILE --random-weights generate what the engine of anvil build
--random-weights (same config, seed, dtype) generates; the flags that go
together are refused apart, each with one line and exit 2."""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import ANVIL

MODEL = "tiny-mixtral"


@pytest.fixture()
def config(shared, tmp_path):
    """The tiny Mixtral's config under a name that is not config.json."""
    path = tmp_path / "mixtral-shape.json"
    shutil.copy(shared / "models" / MODEL / "config.json", path)
    return path


def one_line(r, code):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def greedy(anvil, *source, seed_args=(), extra=()):
    r = anvil("run", *source, *seed_args, "--prompt-ids", "1,5,9,44", "--max-tokens", "12", "--ignore-eos",
              "--temperature", "0", "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["ids"]


def test_run_equals_built_engine(anvil, config, tmp_path):
    for seed, dtype in ((1, "auto"), (7, "f32")):
        engine = tmp_path / f"r{seed}.engine"
        r = anvil("build", "--config", config, "--random-weights", "--seed", seed, "--dtype", dtype, "--output", engine,
                  "--no-progress")
        assert r.returncode == 0, r.stderr
        want = greedy(anvil, "--model", engine)
        got = greedy(anvil, "--config", config, "--random-weights", seed_args=("--weight-seed", seed),
                     extra=("--dtype", dtype))
        assert got == want
    # the default seed is the build's (1); another seed, other weights
    assert greedy(anvil, "--config", config, "--random-weights") == greedy(anvil, "--model", tmp_path / "r1.engine")
    assert greedy(anvil, "--config", config, "--random-weights", seed_args=("--weight-seed", 2)) != \
        greedy(anvil, "--model", tmp_path / "r1.engine")


def test_quantized_lm_head(anvil, config, shared, tmp_path):
    """--quantize S --quantize-lm-head generates what anvil build's engine of the same flags does; bench
    records it; a tied head (tinycode's) is refused by the load, by name."""
    engine = tmp_path / "q.engine"
    r = anvil("build", "--config", config, "--random-weights", "--quantize", "int8-wo", "--quantize-lm-head",
              "--output", engine, "--no-progress")
    assert r.returncode == 0, r.stderr
    flags = ("--quantize", "int8-wo", "--quantize-lm-head")
    assert greedy(anvil, "--config", config, "--random-weights", extra=flags) == greedy(anvil, "--model", engine)
    out = tmp_path / "bench.json"
    r = anvil("bench", "--config", config, "--random-weights", *flags, "--num-requests", "2", "--input-len", "8",
              "--output-len", "4", "--json", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(out.read_text())["config"]
    assert cfg["quantize"] == "int8-wo" and cfg["quantize_lm_head"] is True
    tied = tmp_path / "tied.json"
    shutil.copy(shared / "models" / "tinycode" / "config.json", tied)
    r = anvil("run", "--config", tied, "--random-weights", *flags, "--prompt-ids", "1")
    assert r.returncode == 1 and "tied" in r.stderr, r.stderr


def test_run_input_and_bench(anvil, config, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"prompt_ids": [1, 5, 9, 44], "max_tokens": 12, "ignore_eos": true, '
                                       '"temperature": 0}\n')
    r = anvil("run", "--config", config, "--random-weights", "--input", tmp_path / "in.jsonl")
    assert r.returncode == 0, r.stderr
    ids = json.loads(r.stdout.splitlines()[0])["choices"][0]["token_ids"]
    assert ids == greedy(anvil, "--config", config, "--random-weights")
    out = tmp_path / "bench.json"
    r = anvil("bench", "--config", config, "--random-weights", "--num-requests", "3", "--input-len", "8",
              "--output-len", "4", "--json", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["requests"] == 3 and res["failed"] == 0 and res["output_tokens"] == 12
    assert res["config"]["random_weights"] is True and res["config"]["weight_seed"] == 1


def test_refusals(anvil, config, shared):
    model = shared / "models" / MODEL
    for cmd in (("run", "--prompt-ids", "1"), ("bench", "--num-requests", "1")):
        tool = f"anvil {cmd[0]}"
        assert one_line(anvil(*cmd, "--random-weights"), 2) == \
            f"{tool}: --random-weights needs --config FILE (an HF config.json: the shape to make)"
        assert one_line(anvil(*cmd, "--config", config), 2) == \
            f"{tool}: --config goes with --random-weights (a model folder or engine is --model DIR)"
        assert one_line(anvil(*cmd, "--model", model, "--weight-seed", "3"), 2) == \
            f"{tool}: --weight-seed goes with --random-weights (a model folder or engine is --model DIR)"
        assert one_line(anvil(*cmd, "--model", model, "--quantize", "int8-wo"), 2) == \
            f"{tool}: --quantize goes with --random-weights (a model folder or engine is --model DIR)"
        assert one_line(anvil(*cmd, "--model", model, "--quantize-lm-head"), 2) == \
            f"{tool}: --quantize-lm-head goes with --random-weights (a model folder or engine is --model DIR)"
        assert one_line(anvil(*cmd, "--config", config, "--random-weights", "--quantize-lm-head"), 2) == \
            f"{tool}: --quantize-lm-head goes with --quantize fp8, int8-wo or int4-wo"
        assert one_line(anvil(*cmd, "--config", config, "--random-weights", "--model", model), 2) == \
            f"{tool}: --random-weights takes the shape from --config FILE, not --model (give one)"
        assert "--model DIR is required" in one_line(anvil(*cmd), 2)
    assert one_line(anvil("run", "--config", config, "--random-weights", "--prompt", "Once"), 1) == \
        (f"anvil run: random weights come without a tokenizer ({config} has none): give the prompt as "
         "--prompt-ids IDS")
    r = anvil("run", "--config", f"{config}.missing", "--random-weights", "--prompt-ids", "1")
    assert r.returncode == 1 and "mixtral-shape.json.missing" in r.stderr, r.stderr
    assert one_line(anvil("serve", "--config", config, "--random-weights", "--model", model), 2) == \
        "anvil serve: --random-weights serves the one model of --config FILE (no --model or --model-repo)"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve(anvil, config):
    port = free_port()
    p = subprocess.Popen([ANVIL, "serve", "--config", str(config), "--random-weights", "--port", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the server did not become ready")
        body = json.dumps({"model": "mixtral-shape.json", "prompt": [1, 5, 9, 44], "max_tokens": 12,
                           "temperature": 0, "ignore_eos": True, "return_token_ids": True}).encode()
        req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            res = json.loads(r.read())
        assert res["usage"]["completion_tokens"] == 12
        choice = res["choices"][0]
        if "token_ids" in choice:
            assert choice["token_ids"] == greedy(anvil, "--config", config, "--random-weights")
    finally:
        p.terminate()
        p.wait(timeout=30)
