"""Load measurement (not a test): N concurrent streaming clients against a
running `anvil serve`, each sending R completions one after the other;
prints throughput, time to first token and inter-chunk latency percentiles,
errors, and (--metrics) the server's own CPU share from /metrics.

    anvil serve --model models/stories260K --port 8000 &
    python tests/server/load_clients.py --port 8000 --clients 256 --requests 4 --max-tokens 64

Each stream is read through http.client (chunked transfer decoding) and
parsed as SSE: a request counts as ok only with status 200, a finish_reason,
a usage chunk (include_usage) and `data: [DONE]` last; generated tokens are
the usage's completion_tokens. The clients are threads of one Python
process: on a small machine they take CPU from the server (say so with the
numbers). bench/server_cost.py imports run_load and scrape_metrics.
"""
import argparse
import multiprocessing
import http.client
import json
import threading
import time

# --input-len: prompts of this many token ids (as `anvil bench` makes them) instead of a short text
INPUT_LEN = 0


def one(port, path, body, key, timeout=600):
    """One streamed request. Returns (ok, ttft_s, event stamps, completion_tokens, status or error)."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        c.request("POST", path, body=json.dumps(body), headers=headers)
        r = c.getresponse()
        if r.status != 200:
            return False, None, [], 0, f"HTTP {r.status}"
        buf, first, stamps, finish, usage, done = b"", None, [], None, None, False
        while True:
            part = r.read1(65536)  # one HTTP chunk as it arrives
            if not part:
                break
            now = time.perf_counter()
            buf += part
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: "):
                    return False, None, [], 0, f"not SSE: {event[:60]!r}"
                if event == b"data: [DONE]":
                    done = True
                    continue
                if first is not None and b'"finish_reason":null' in event and b'"usage":{' not in event:
                    stamps.append(now)  # a middle chunk: one piece of text (parsing each costs the client CPU)
                    continue
                ch = json.loads(event[6:])
                if ch.get("usage"):
                    usage = ch["usage"]
                for choice in ch["choices"]:
                    piece = choice.get("text") or (choice.get("delta") or {}).get("content")
                    if first is None and (piece or choice.get("finish_reason")):
                        first = now - t0  # random weights may stream tokens that print nothing
                    if piece:
                        stamps.append(now)
                    finish = choice.get("finish_reason") or finish
        ok = done and finish is not None and usage is not None and buf == b""
        return ok, first, stamps, usage["completion_tokens"] if usage else 0, "" if ok else "incomplete stream"
    except (OSError, http.client.HTTPException, ValueError) as e:
        return False, None, [], 0, repr(e)
    finally:
        c.close()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def run_load(port, clients, requests, max_tokens, key="", model=None, greedy=False, chat=False, procs=1, first_client=0):
    """Runs the load (clients threads x requests each, all released together); returns a dict of results.
    procs > 1: the clients spread over that many processes (one Python process's GIL caps the events
    it can parse near 50k a second); first_client: the number of the first client (its prompt and seed)."""
    if procs > 1:
        return run_procs(port, clients, requests, max_tokens, key, model, greedy, chat, procs)
    ttft, itl, errors, tokens, n_ok = [], [], [], [0], [0]
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def worker(i):
        i += first_client
        start.wait()
        for r in range(requests):
            text = f"Once upon a time {i} {r}"
            ids = [100 + (i * 7919 + r * 104729 + j * 31337) % 7000 for j in range(INPUT_LEN)]
            body = {"max_tokens": max_tokens, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            body.update({"temperature": 0} if greedy else {"temperature": 0.8, "seed": i * 1000 + r})
            if model:
                body["model"] = model
            if chat:
                body["messages"] = [{"role": "user", "content": text}]
            else:
                body["prompt"] = ids if INPUT_LEN else text
            ok, first, stamps, n, err = one(port, "/v1/chat/completions" if chat else "/v1/completions", body, key)
            with lock:
                if not ok:
                    errors.append(err)
                    continue
                ttft.append(first)
                itl.extend(b - a for a, b in zip(stamps, stamps[1:]))
                tokens[0] += n
                n_ok[0] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()  # the barrier releases the clients once the last thread starts
    for t in threads:
        t.join()
    t1 = time.perf_counter()
    # a client thread that died (an exception) did not count its requests as ok
    return {"wall": t1 - t0, "t0": t0, "t1": t1, "ok": n_ok[0], "errors": errors,
            "tokens": tokens[0], "ttft": ttft, "itl": itl}


def run_procs(port, clients, requests, max_tokens, key, model, greedy, chat, procs):
    """run_load over procs processes, released together; the results merged (wall: the first start to
    the last end, on the system-wide monotonic clock perf_counter reads)."""
    ctx = multiprocessing.get_context("fork")
    ready, q = ctx.Barrier(procs), ctx.Queue()

    def child(k, n, first):
        ready.wait()
        q.put(run_load(port, n, requests, max_tokens, key, model, greedy, chat, first_client=first))

    sizes = [clients // procs + (k < clients % procs) for k in range(procs)]
    ps = [ctx.Process(target=child, args=(k, sizes[k], sum(sizes[:k]))) for k in range(procs) if sizes[k]]
    for p in ps:
        p.start()
    parts = [q.get() for _ in ps]
    for p in ps:
        p.join()
    out = {"t0": min(r["t0"] for r in parts), "t1": max(r["t1"] for r in parts)}
    out["wall"] = out["t1"] - out["t0"]
    for k in ("ok", "tokens"):
        out[k] = sum(r[k] for r in parts)
    for k in ("errors", "ttft", "itl"):
        out[k] = [x for r in parts for x in r[k]]
    return out


def scrape_metrics(port, key=""):
    """/metrics as {series: value}."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
        text = c.getresponse().read().decode()
    finally:
        c.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def report(a, res):
    print(f"clients {a.clients} x {a.requests} requests, {a.input_len or 'a short text of'} prompt tokens, "
          f"{a.max_tokens} tokens each: {res['wall']:.2f} s, "
          f"{res['ok']} ok, {len(res['errors'])} errors {sorted(set(res['errors']))[:3]}")
    print(f"throughput {res['tokens'] / res['wall']:.0f} generated tokens/s, {res['ok'] / res['wall']:.1f} requests/s")
    t, i = res["ttft"], res["itl"]
    print(f"TTFT p50 {pct(t, 50) * 1e3:.1f} ms  p90 {pct(t, 90) * 1e3:.1f} ms  p99 {pct(t, 99) * 1e3:.1f} ms  "
          f"max {max(t, default=float('nan')) * 1e3:.1f} ms")
    print(f"inter-chunk p50 {pct(i, 50) * 1e3:.2f} ms  p99 {pct(i, 99) * 1e3:.2f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--api-key", default="")
    ap.add_argument("--model", default=None, help="the model field (default: the server's default model)")
    ap.add_argument("--greedy", action="store_true", help="temperature 0 (default: 0.8 with a seed per request)")
    ap.add_argument("--chat", action="store_true", help="/v1/chat/completions instead of /v1/completions")
    ap.add_argument("--metrics", action="store_true",
                    help="scrape /metrics before and after: server CPU / process CPU, and no request left")
    ap.add_argument("--procs", type=int, default=1, help="spread the clients over this many processes")
    ap.add_argument("--input-len", type=int, default=0,
                    help="prompts of this many token ids (100..7099, different for every request) instead of a text")
    a = ap.parse_args()
    if a.input_len and a.chat:
        ap.error("--input-len sends token ids: only with /v1/completions (not --chat)")
    global INPUT_LEN
    INPUT_LEN = a.input_len
    before = scrape_metrics(a.port, a.api_key) if a.metrics else None
    res = run_load(a.port, a.clients, a.requests, a.max_tokens, a.api_key, a.model, a.greedy, a.chat, a.procs)
    report(a, res)
    if a.metrics:
        after = scrape_metrics(a.port, a.api_key)
        srv = after["anvil_server_cpu_seconds_total"] - before["anvil_server_cpu_seconds_total"]
        proc = after["process_cpu_seconds_total"] - before["process_cpu_seconds_total"]
        print(f"server CPU {srv:.3f} s of process CPU {proc:.3f} s: {100 * srv / proc:.2f}% "
              f"(process CPU / wall {proc / res['wall']:.2f} cores)")
        left = {k: v for k, v in after.items() if v and (k.startswith("anvil_num_requests_running") or
                                                        'state="used"' in k)}
        print(f"afterwards: {left or 'no request running, no KV block used'}")


if __name__ == "__main__":
    main()
