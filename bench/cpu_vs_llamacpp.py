#!/usr/bin/env python3
"""Paired CPU runs, anvil against llama.cpp, on the same weights.

    bench/cpu_vs_llamacpp.py --anvil-build BUILD --model DIR --llama-bin DIR --gguf FILE
                             [--threads 2] [--pairs 3] [--only decode,pp128,pp512,batch16]

Each workload runs anvil then llama.cpp, --pairs times in alternation (the
machine's speed drifts; alternating spreads the drift over both), and the
table gives each side's median and the ratio anvil / llama.cpp (> 1: anvil
is faster), and the median of the pairs' own ratios (each pair ran back to
back: less of the drift). The workloads, as llama.cpp's tools name them:

  decode   llama-bench -p 0 -n 128 (tg128)           bench_cpu_model --prompt-len 1 --decode 128
  pp128    llama-bench -p 128 -n 0                   bench_cpu_model --prompt-len 128 (one step)
  pp512    llama-bench -p 512 -n 0                   bench_cpu_model --prompt-len 512 (one step)
  batch16  llama-batched-bench -npp 128 -ntg 128 -npl 16   anvil bench --num-requests 16
           (16 sequences of 128 prompt tokens and 128 generated: all tokens / total time)
  decode-engine  llama-bench -p 0 -n 128 on --gguf        anvil bench --model ENGINE --num-requests 1
           --input-len 1 --output-len 128 (1 / mean TPOT): a quantized engine (anvil build
           --quantize int8-wo|int4-wo --quantize-lm-head) against a quantized GGUF
           (llama-quantize --pure Q8_0|Q4_0) of the same weights

DIR is the Hugging Face folder (bench_cpu_model writes llama-1b, a random
Llama-3.2-1B-shaped bf16 model); FILE is the same weights as GGUF bf16
(bench/hf_to_gguf_bf16.py DIR FILE LLAMA_CPP/gguf-py). The
KV cache is f16 on both sides (llama.cpp's default, anvil's auto for a bf16
model on the CPU). Writes the raw numbers as JSON with --json.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout


def anvil_model_bench(a, prompt, decode):
    out = os.path.join(tempfile.mkdtemp(), "r.json")
    scratch = os.path.dirname(os.path.abspath(a.model))
    run([os.path.join(a.anvil_build, "bench_cpu_model"), "--models", "llama-1b", "--scratch", scratch,
         "--threads", str(a.threads), "--prompt-len", str(prompt), "--decode", str(decode),
         "--prefill-reps", str(a.reps), "--json", out])
    return json.load(open(out))[0]


def anvil_decode(a):
    return anvil_model_bench(a, 1, 128)["decode_tok_s"]


def anvil_prefill(a, n):
    return anvil_model_bench(a, n, 1)["prefill_tok_s"]


def anvil_engine_decode(a):
    """tg128 of a quantized engine (anvil build --quantize): one request of
    one prompt token and 128 generated, through the executor; 1 / TPOT."""
    out = os.path.join(tempfile.mkdtemp(), "e.json")
    run([os.path.join(a.anvil_build, "anvil"), "bench", "--model", a.engine, "--num-requests", "1",
         "--input-len", "1", "--output-len", "128", "--threads", str(a.threads), "--no-progress", "--json", out])
    return 1000.0 / json.load(open(out))["latency_ms"]["tpot"]["mean"]


def anvil_batch16(a):
    out = os.path.join(tempfile.mkdtemp(), "b.json")
    run([os.path.join(a.anvil_build, "anvil"), "bench", "--model", a.model, "--num-requests", "16",
         "--input-len", "128", "--output-len", "128", "--threads", str(a.threads), "--max-seq-len", "512",
         "--max-num-tokens", "512", "--no-progress", "--json", out])
    r = json.load(open(out))
    return (r["input_tokens"] + r["output_tokens"]) / r["duration_s"]


def llama_bench(a, p, n):
    out = run([os.path.join(a.llama_bin, "llama-bench"), "-m", a.gguf, "-t", str(a.threads), "-p", str(p),
               "-n", str(n), "-r", str(a.reps), "-o", "json"])
    return json.loads(out)[0]["avg_ts"]


def llama_batch16(a):
    out = run([os.path.join(a.llama_bin, "llama-batched-bench"), "-m", a.gguf, "-t", str(a.threads), "-c", "4096",
               "-b", "512", "-ub", "512", "-npp", "128", "-ntg", "128", "-npl", "16"])
    # |    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
    rows = [l for l in out.splitlines() if re.match(r"^\|\s+128\s+\|\s+128\s+\|\s+16\s+\|", l)]
    if not rows:
        sys.exit("llama-batched-bench: no result row\n" + out[-2000:])
    return float(rows[0].strip("|").split("|")[-1])


WORKLOADS = {
    "decode": (anvil_decode, lambda a: llama_bench(a, 0, 128), "decode, batch 1 (tg128), tok/s"),
    "pp128": (lambda a: anvil_prefill(a, 128), lambda a: llama_bench(a, 128, 0), "prefill 128 tokens, tok/s"),
    "pp512": (lambda a: anvil_prefill(a, 512), lambda a: llama_bench(a, 512, 0), "prefill 512 tokens, tok/s"),
    "batch16": (anvil_batch16, llama_batch16, "16 requests 128 in / 128 out, all tok/s"),
    # --engine E --gguf G: a quantized engine against a quantized GGUF
    "decode-engine": (anvil_engine_decode, lambda a: llama_bench(a, 0, 128), "decode, batch 1 (tg128), tok/s"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anvil-build", required=True)
    ap.add_argument("--model", help="the bf16 folder (decode, pp128, pp512, batch16)")
    ap.add_argument("--engine", help="an anvil engine (decode-engine)")
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3,
                    help="timed repetitions inside one run (after a warm-up): llama-bench -r, bench_cpu_model --prefill-reps")
    ap.add_argument("--only", default="decode,pp128,pp512,batch16")
    ap.add_argument("--json")
    a = ap.parse_args()
    raw = {}
    # the pairs' own ratios too: each pair ran back to back, so its ratio
    # carries less of the machine's drift than the ratio of the medians
    print(f"| workload | anvil (median of {a.pairs}) | llama.cpp (median) | anvil / llama.cpp | median of the pairs' "
          "ratios (min-max) | runs: anvil; llama.cpp |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for w in a.only.split(","):
        fa, fl, label = WORKLOADS[w]
        xs, ys = [], []
        for _ in range(a.pairs):
            xs.append(fa(a))
            ys.append(fl(a))
        raw[w] = {"anvil": xs, "llama.cpp": ys}
        ma, ml = statistics.median(xs), statistics.median(ys)
        rs = [x / y for x, y in zip(xs, ys)]
        print(f"| {label} | {ma:.2f} | {ml:.2f} | **{ma / ml:.2f}x** | {statistics.median(rs):.2f}x "
              f"({min(rs):.2f}-{max(rs):.2f}) | "
              f"{', '.join(f'{x:.2f}' for x in xs)}; {', '.join(f'{y:.2f}' for y in ys)} |", flush=True)
    if a.json:
        json.dump(raw, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
