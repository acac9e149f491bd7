#!/usr/bin/env python3
"""anvil's tokenizer against Hugging Face `tokenizers`, same text, same run.

Runs bench_tokenizer (anvil: load time, encode MB/s and tokens/s on one
long text, and on the same text cut into 2 KB prompts), then does the same
with HF tokenizers on the identical corpus (written by bench_tokenizer
--write-corpus), on one thread (RAYON_NUM_THREADS=1; a single encode call
is single-threaded in HF anyway), and prints one table. Token counts must
agree, as a sanity check (tests/python/test_tokenizer_diff.py checks ids).

    .venv/bin/python bench/bench_tokenizer_hf.py --bench build/bench_tokenizer \\
        --shared ../shared [--mb 4] [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Tokenizer  # noqa: E402


def hf_bench(path, text):
    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        tok = Tokenizer.from_file(path)
        loads.append(time.perf_counter() - t0)
    nbytes = len(text.encode("utf-8"))
    best, n_tokens = 1e30, 0
    for _ in range(2):
        t0 = time.perf_counter()
        n_tokens = len(tok.encode(text, add_special_tokens=False).ids)
        best = min(best, time.perf_counter() - t0)
    # 2 KB prompts, cut at the same byte boundaries as bench_tokenizer
    raw = text.encode("utf-8")
    chunks, at = [], 0
    while at < len(raw):
        e = min(at + 2048, len(raw))
        while e < len(raw) and (raw[e] & 0xC0) == 0x80:
            e += 1
        chunks.append(raw[at:e].decode("utf-8"))
        at = e
    t0 = time.perf_counter()
    for c in chunks:
        tok.encode(c)
    prompt_s = time.perf_counter() - t0
    return {"load_ms": statistics.median(loads) * 1e3, "encode_mb_s": nbytes / best / 1e6,
            "tokens_s": n_tokens / best, "tokens": n_tokens, "prompt_mb_s": nbytes / prompt_s / 1e6}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="build/bench_tokenizer")
    ap.add_argument("--shared", default=os.environ.get("ANVIL_SHARED_DIR", "../shared"))
    ap.add_argument("--mb", default="4")
    ap.add_argument("--json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        subprocess.run([a.bench, "--shared", a.shared, "--mb", a.mb, "--write-corpus", corpus], check=True)
        anvil_json = os.path.join(tmp, "anvil.json")
        subprocess.run([a.bench, "--shared", a.shared, "--mb", a.mb, "--json", anvil_json], check=True,
                       stdout=sys.stderr)
        text = open(corpus, encoding="utf-8").read()
        anvil = {r["tokenizer"]: r for r in json.load(open(anvil_json))["results"]}
    print(f"corpus: {len(text.encode('utf-8')) / 1e6:.2f} MB, one thread; HF tokenizers "
          f"{__import__('tokenizers').__version__}\n")
    hdr = ("tokenizer", "load ms", "HF load", "MB/s", "HF MB/s", "x", "Mtok/s", "HF Mtok/s", "2KB MB/s", "HF 2KB")
    print("%-26s %8s %8s %7s %8s %6s %7s %9s %9s %7s" % hdr)
    rows = []
    for name, r in anvil.items():
        hf = hf_bench(os.path.join(a.shared, "tokenizers", name, "tokenizer.json"), text)
        if hf["tokens"] != r["tokens"]:
            print(f"{name}: token counts differ: anvil {r['tokens']}, HF {hf['tokens']}", file=sys.stderr)
            sys.exit(1)
        print("%-26s %8.1f %8.1f %7.1f %8.2f %6.1f %7.2f %9.3f %9.1f %7.2f" % (
            name, r["load_ms"], hf["load_ms"], r["encode_mb_s"], hf["encode_mb_s"],
            r["encode_mb_s"] / hf["encode_mb_s"], r["tokens_s"] / 1e6, hf["tokens_s"] / 1e6, r["prompt_mb_s"],
            hf["prompt_mb_s"]))
        sys.stdout.flush()
        rows.append({"tokenizer": name, "anvil": r, "hf": hf})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"corpus_bytes": len(text.encode("utf-8")), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
