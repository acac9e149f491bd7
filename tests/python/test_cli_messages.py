"""The anvil command's messages, as a user meets them: each names the
problem in one line a user can act on, with its exit code. A model path
that is not a model; a flag typo (the closest flag, not the whole usage)
for every command; a request the context cannot hold in full; Ctrl-C,
which keeps what was generated (run, run --json, bench)."""
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import ANVIL


def models(shared, name="stories260K"):
    return str(shared / "models" / name)


def one_line(r, code):
    """r failed with code and said one line on stderr; returns it."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# ---------------------------------------------------------------- model paths

def test_model_folder_that_does_not_exist(anvil, tmp_path):
    want = f"anvil run: {tmp_path}/nope does not exist (--model takes a model folder or an engine file)"
    for prompt in (["--prompt", "Once"], ["--prompt-ids", "1"]):
        assert one_line(anvil("run", "--model", tmp_path / "nope", *prompt), 1) == want
    (tmp_path / "in.jsonl").write_text('{"prompt": "Once"}\n')
    assert one_line(anvil("run", "--model", tmp_path / "nope", "--input", tmp_path / "in.jsonl"), 1) == want
    line = one_line(anvil("bench", "--model", tmp_path / "nope", "--num-requests", "1"), 1)
    assert line == want.replace("anvil run", "anvil bench")


def test_model_path_that_is_a_file_but_no_engine(anvil, shared):
    path = f"{models(shared)}/config.json"
    line = one_line(anvil("run", "--model", path, "--prompt", "Once"), 1)
    assert line == f"anvil run: {path} is neither a model folder nor an anvil engine file"


def test_folder_without_config_json(anvil, tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    line = one_line(anvil("run", "--model", tmp_path, "--prompt", "Once"), 1)
    assert line == (f"anvil run: {tmp_path} is not a model folder: it has no config.json (a Hugging Face model "
                    "folder holds config.json, *.safetensors and tokenizer.json)")


def test_folder_of_per_rank_engines_without_its_ranks(anvil, tmp_path):
    # what anvil build --tp 3 writes (the names are all the check reads)
    for r in range(3):
        (tmp_path / f"rank{r}.engine").write_bytes(b"")
    for tool in ("run", "bench"):
        args = ["--prompt", "Once"] if tool == "run" else ["--num-requests", "1"]
        line = one_line(anvil(tool, "--model", tmp_path, *args), 1)
        assert line == (f"anvil {tool}: {tmp_path} holds the per-rank engines of a --tp build (rank0.engine ... "
                        f"rank2.engine): run it with its ranks, mpirun -np 3 anvil {tool} --model {tmp_path} "
                        "--tp 3 (docs/parallel.md)")


def test_prompt_text_without_tokenizer(anvil, shared, tmp_path):
    for name in ("config.json", "model.safetensors"):
        os.symlink(f"{models(shared)}/{name}", tmp_path / name)
    line = one_line(anvil("run", "--model", tmp_path, "--prompt", "Once"), 1)
    assert line == f"anvil run: {tmp_path} has no tokenizer.json: give the prompt as --prompt-ids IDS"
    r = anvil("run", "--model", tmp_path, "--prompt-ids", "1", "--max-tokens", "3")
    assert r.returncode == 0 and len(r.stdout.split()) == 3, r.stderr


# ---------------------------------------------------------------- flag typos

@pytest.mark.parametrize("args,flag,closest", [
    (["run", "--model", "M", "--prompt", "x"], "--temprature", "--temperature"),
    (["run", "--model", "M", "--input", "f.jsonl"], "--temprature", "--temperature"),
    (["run", "--model", "M", "--input", "f.jsonl"], "--min-pp", "--min-p"),
    (["bench", "--model", "M"], "--concurency", "--concurrency"),
    (["bench", "--model", "M"], "--repetition-penallty", "--repetition-penalty"),
    (["serve", "--model", "M"], "--max-conections", "--max-connections"),
    (["build", "--model", "M"], "--ouput", "--output"),
    (["inspect", "x.engine"], "--jsn", "--json"),
    (["refit", "x.engine"], "--wieghts", "--weights"),
    (["tokenize", "hi"], "--tokeniser", "--tokenizer"),
    (["detokenize", "1"], "--skip-specal", "--skip-special"),
    (["chat-template"], "--tempalte", "--template"),
])
def test_flag_typo_is_one_line_with_the_closest_flag(anvil, shared, args, flag, closest):
    args = [models(shared) if a == "M" else a for a in args]
    cmd = "anvil " + args[0]
    for given in (flag, flag + "=1"):
        r = anvil(*args, given)
        assert one_line(r, 2) == f"{cmd}: unknown flag {flag} (did you mean {closest}?); {cmd} --help lists the flags"
        assert r.stdout == ""


def test_flag_far_from_every_flag_gets_no_guess(anvil, shared):
    line = one_line(anvil("run", "--model", models(shared), "--prompt", "x", "--zzzzzzzz"), 2)
    assert line == "anvil run: unknown flag --zzzzzzzz; anvil run --help lists the flags"


def test_other_flag_errors_are_one_line(anvil, shared):
    m = models(shared)
    assert one_line(anvil("run", "--model", m, "--prompt"), 2) == \
        "anvil run: --prompt needs a value; anvil run --help lists the flags"
    assert one_line(anvil("run", "--model", m, "--prompt", "x", "--json=yes"), 2) == \
        "anvil run: --json takes no value; anvil run --help lists the flags"
    assert one_line(anvil("run", "--model", m, "--prompt", "x", "--top", "5"), 2) == \
        "anvil run: --top is ambiguous (--top-k or --top-p?); anvil run --help lists the flags"
    assert one_line(anvil("run", "--model", m, "--prompt", "x", "-q"), 2) == \
        "anvil run: unknown flag -q; anvil run --help lists the flags"
    # a flag of the executor's, given to one prompt, says where it works
    assert one_line(anvil("run", "--model", m, "--prompt", "x", "--stop", "."), 2) == \
        "anvil run: --stop works with --input FILE (the executor), not with one prompt"
    assert one_line(anvil("bench", "--model", m, "--max-tokens", "5"), 2) == \
        "anvil bench: the synthetic requests' length is --output-len A[:B]; --dataset lines give their own max_tokens"
    # values: named with their range
    assert one_line(anvil("run", "--model", m, "--prompt", "x", "--top-p", "0"), 2) == \
        "anvil run: --top-p expects a number in (0, 1], got '0'"
    assert one_line(anvil("bench", "--model", m, "--min-p", "2"), 2) == \
        "anvil bench: --min-p expects a number in [0, 1], got '2'"
    assert one_line(anvil("run", "--model", m, "--input", "f", "--stop-token-ids", "1,x"), 2) == \
        "anvil run: --stop-token-ids expects comma-separated token ids, got '1,x'"


def test_unknown_command(anvil):
    assert one_line(anvil("rnu"), 2) == "anvil: unknown command 'rnu' (did you mean run?); anvil --help lists the commands"
    assert one_line(anvil("inspet"), 2) == \
        "anvil: unknown command 'inspet' (did you mean inspect?); anvil --help lists the commands"
    assert one_line(anvil("frobnicate"), 2) == "anvil: unknown command 'frobnicate'; anvil --help lists the commands"
    assert one_line(anvil("--temperature"), 2) == \
        "anvil: --temperature: the command comes first (anvil <command> [options]); anvil --help lists the commands"


# ---------------------------------------------------------------- one table of request flags

def test_request_flags_are_one_table(anvil):
    """The request flags read the same in run, run --input and bench: their help lines are equal."""
    def helps(*args):
        out = anvil(*args, "--help").stdout
        found = (re.match(r"^  (?:-\w, |    )(--[\w-]+)", line) for line in out.splitlines())
        return {m.group(1): m.string for m in found if m}

    run, batch, bench = helps("run"), helps("run", "--input", "f"), helps("bench")
    for flag in ("--temperature", "--top-k", "--top-p", "--min-p", "--seed", "--ignore-eos"):
        assert run[flag] == batch[flag] == bench[flag], flag
    assert run["--max-tokens"] == batch["--max-tokens"]
    for flag in ("--repetition-penalty", "--presence-penalty", "--frequency-penalty", "--stop", "--stop-token-ids",
                 "--min-tokens"):
        assert batch[flag] == bench[flag] and flag not in run, flag
    for flag in ("--logprobs", "--beam-width", "--length-penalty"):
        assert flag in batch and flag not in bench, flag
    # the JSONL fields --input lines take are the flags' names
    text = anvil("run", "--input", "f", "--help").stdout
    for field in ("max_tokens", "temperature", "top_p", "min_p", "repetition_penalty", "stop_token_ids", "beam_width"):
        assert field in text, field


def test_request_flags_are_defaults_of_input_lines(anvil, shared, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt_ids": [1], "max_tokens": 40}\n{"prompt_ids": [1], "max_tokens": 40, "stop": []}\n')
    r = anvil("run", "--model", models(shared), "--input", path, "--temperature", "0", "--stop", "Once",
              "--repetition-penalty", "1.0")
    assert r.returncode == 0, r.stderr
    a, b = [json.loads(x)["choices"][0] for x in r.stdout.splitlines()]
    assert a["finish_reason"] == "stop" and a["stop_reason"] == "Once" and a["text"] == " "  # the flag's stop
    assert b["finish_reason"] == "length" and "Once upon a time" in b["text"]  # the line's own (none)


# ---------------------------------------------------------------- the context

def test_request_the_context_cannot_hold_in_full(anvil, shared, tmp_path):
    m = models(shared)  # context 512
    ids = ",".join(["1"] + ["403"] * 499)
    r = anvil("run", "--model", m, "--prompt-ids", ids, "--max-tokens", "100", "--temperature", "0", "--json")
    assert r.returncode == 0
    assert r.stderr == "anvil run: the context holds 512 tokens; the prompt has 500, so at most 12 new tokens (not 100)\n"
    out = json.loads(r.stdout)
    assert len(out["ids"]) == 12 and out["finish_reason"] == "length"
    assert out["context_limit"] == {"context": 512, "prompt_tokens": 500, "max_tokens": 100, "max_new_tokens": 12}
    # streamed: the same line on stderr, the text on stdout
    r = anvil("run", "--model", m, "--prompt-ids", ids, "--max-tokens", "100", "--max-seq-len", "505")
    assert r.returncode == 0 and r.stderr.startswith("anvil run: the context holds 505 tokens; the prompt has 500, "
                                                     "so at most 5 new tokens (not 100)\n"), r.stderr
    # what fits is said nothing about
    r = anvil("run", "--model", m, "--prompt-ids", ids, "--max-tokens", "12", "--json")
    assert r.returncode == 0 and r.stderr == "" and "context_limit" not in json.loads(r.stdout)
    # --input: the result says it
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt_ids": [1] + [403] * 499, "max_tokens": 100}) + "\n")
    r = anvil("run", "--model", m, "--input", tmp_path / "in.jsonl")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["context_limit"] == {"context": 512, "prompt_tokens": 500, "max_tokens": 100,
                                                     "max_new_tokens": 12}


def test_prompt_that_does_not_fit(anvil, shared):
    m = models(shared)
    ids = ",".join(["1"] + ["403"] * 599)
    assert one_line(anvil("run", "--model", m, "--prompt-ids", ids), 1) == \
        "anvil run: the prompt has 600 tokens and the context holds 512, so no new token fits: shorten the prompt"
    assert one_line(anvil("run", "--model", m, "--prompt-ids", "1,2,3", "--max-seq-len", "3"), 1) == \
        "anvil run: the prompt has 3 tokens and the context holds 3, so no new token fits " \
        "(--max-seq-len can go up to the model's 512)"


# ---------------------------------------------------------------- Ctrl-C

LONG = ["--max-seq-len", "8192", "--max-tokens", "8000", "--ignore-eos"]


def start(*args):
    return subprocess.Popen([ANVIL, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "ANVIL_LOG": "info"})


def wait_loaded(p):
    """Reads stderr up to the runtime's "loaded" line (ANVIL_LOG=info)."""
    for line in iter(p.stderr.readline, b""):
        if b": loaded " in line:
            return
    raise AssertionError("no 'loaded' line: " + str(p.communicate(timeout=30)))


def test_ctrl_c_on_run_keeps_the_streamed_text(shared):
    p = start("run", "--model", models(shared, "tinycode"), "--prompt", "def add(a, b):", "--no-echo", *LONG)
    first = p.stdout.read(8)  # generation has begun
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    text = (first + out).decode()
    assert text.endswith("\n") and len(text) > 8
    n = int(err.decode().splitlines()[-1].split("after ")[1].split(" ")[0])
    assert err.decode().splitlines()[-1] == f"anvil run: interrupted after {n} new tokens" and 0 < n < 8000


def test_ctrl_c_on_run_json_prints_what_was_generated(shared):
    model = models(shared, "tinycode")
    p = start("run", "--model", model, "--prompt", "def add(a, b):", "--temperature", "0", "--json", *LONG)
    wait_loaded(p)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    got = json.loads(out)
    assert got["finish_reason"] == "cancelled" and 0 < len(got["ids"]) < 8000
    assert err.decode().splitlines()[-1] == f"anvil run: interrupted after {len(got['ids'])} new tokens"
    # the tokens so far are the greedy continuation's first ones, text and all
    r = subprocess.run([ANVIL, "run", "--model", model, "--prompt", "def add(a, b):", "--temperature", "0", "--json",
                        "--ignore-eos", "--max-tokens", str(len(got["ids"]))], capture_output=True, timeout=120)
    full = json.loads(r.stdout)
    assert full["ids"] == got["ids"] and full["text"] == got["text"]


def test_ctrl_c_on_bench_reports_the_requests_completed(shared, tmp_path):
    data = tmp_path / "data.jsonl"
    short = {"prompt": "def f(x):", "max_tokens": 2, "ignore_eos": True}
    long = {"prompt": "def g(y):", "max_tokens": 6000, "ignore_eos": True}
    # 6 at a time: the 4 short ones complete, the long ones fill the 6 places, 2 wait
    data.write_text("".join(json.dumps(x) + "\n" for x in [short] * 4 + [long] * 8))
    report = tmp_path / "bench.json"
    p = start("bench", "--model", models(shared, "tinycode"), "--dataset", data, "--concurrency", "6",
              "--max-seq-len", "8192", "--no-progress", "--json", report)
    wait_loaded(p)
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    out = out.decode()
    assert "PARTIAL" in out and "requests                   4 ok, 0 failed" in out, out
    assert "time to first token" in out
    assert err.decode().splitlines()[-1] == "anvil bench: interrupted: a partial report of 4 of 12 requests"
    got = json.loads(report.read_text())
    assert got["partial"] is True and got["requests"] == 4 and got["cancelled"] == 6 and got["not_sent"] == 2
    assert got["output_tokens"] == 4 * 2 and got["latency_ms"]["ttft"]["count"] == 4


def test_ctrl_c_on_run_input_writes_a_line_for_every_request(shared, tmp_path):
    data = tmp_path / "requests.jsonl"
    short = {"prompt": "def f(x):", "max_tokens": 2, "ignore_eos": True, "temperature": 0}
    long = {"prompt": "def g(y):", "max_tokens": 6000, "ignore_eos": True, "temperature": 0}
    data.write_text("".join(json.dumps(x) + "\n" for x in [short] * 3 + [long] * 3))
    p = start("run", "--model", models(shared, "tinycode"), "--input", data, "--max-seq-len", "8192")
    wait_loaded(p)
    # the short requests' lines (written in order, each as it ends), then ^C:
    # a fixed second was not enough under ASan on a loaded 2-core machine
    first = [p.stdout.readline() for _ in range(3)]
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    lines = [json.loads(x) for x in b"".join(first + [out]).decode().splitlines()]
    assert [x["index"] for x in lines] == list(range(6))  # one line each, in order
    assert [x["finish_reason"] for x in lines] == ["length"] * 3 + ["cancelled"] * 3
    assert all(len(x["choices"][0]["token_ids"]) == 2 for x in lines[:3])
    assert all(0 < len(x["choices"][0]["token_ids"]) < 6000 for x in lines[3:])  # what they had generated
    assert "anvil run: interrupted: the requests in flight were cancelled" in err.decode()
