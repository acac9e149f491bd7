"""Load measurement (not a test): N concurrent streaming clients against a
running `anvil serve`, each sending R completions; prints throughput, TTFT
and inter-chunk latency percentiles, and errors.

    anvil serve --model models/stories260K --port 8000 &
    python tests/server/load_clients.py --port 8000 --clients 256 --requests 4 --max-tokens 64
"""
import argparse
import json
import socket
import threading
import time


def one(port, body, key):
    data = json.dumps(body).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n" + (f"Authorization: Bearer {key}\r\n" if key else "") + "\r\n")
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=600)
    s.sendall(head.encode() + data)
    buf, first, stamps = b"", None, []
    while b"data: [DONE]" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        now = time.perf_counter()
        n = chunk.count(b"data: {")
        if n and first is None:
            first = now - t0
        stamps += [now] * n
        buf += chunk
    s.close()
    ok = buf.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in buf
    return ok, first, stamps, buf.split(b"\r\n")[0]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--api-key", default="")
    a = ap.parse_args()
    ttft, itl, errors, chunks = [], [], [], [0]
    lock = threading.Lock()

    def worker(i):
        for r in range(a.requests):
            body = {"prompt": f"Once upon a time {i} {r}", "max_tokens": a.max_tokens, "ignore_eos": True,
                    "temperature": 0.8, "seed": i * 1000 + r, "stream": True}
            ok, first, stamps, status = one(a.port, body, a.api_key)
            with lock:
                if not ok:
                    errors.append(status)
                    continue
                ttft.append(first)
                itl.extend(b - a_ for a_, b in zip(stamps, stamps[1:]))
                chunks[0] += len(stamps)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n_ok = a.clients * a.requests - len(errors)
    print(f"clients {a.clients} x {a.requests} requests, {a.max_tokens} tokens each: {wall:.2f} s, "
          f"{n_ok} ok, {len(errors)} errors {sorted(set(errors))[:3]}")
    print(f"throughput {n_ok * a.max_tokens / wall:.0f} generated tokens/s, {n_ok / wall:.1f} requests/s")
    print(f"TTFT p50 {pct(ttft, 50) * 1e3:.1f} ms  p90 {pct(ttft, 90) * 1e3:.1f} ms  p99 {pct(ttft, 99) * 1e3:.1f} ms")
    print(f"inter-chunk p50 {pct(itl, 50) * 1e3:.2f} ms  p99 {pct(itl, 99) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
