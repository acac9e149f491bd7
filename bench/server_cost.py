"""The server's own cost: the share of anvil serve's CPU time spent outside
the executor (HTTP, JSON, tokenization, SSE formatting) under N concurrent
streaming clients (default 64), for a fixed amount of work.

    python bench/server_cost.py --anvil build/anvil --model ../shared/models/stories260K
    python bench/server_cost.py --anvil build/anvil --model ../shared/models/tinycode --requests 2 --max-tokens 64

Starts its own server (so that it knows its pid), warms it up, then around
the load takes two readings:
- /metrics: anvil_server_cpu_seconds_total (the server's brackets: MHD
  handler callbacks, the stream reader, request mapping, the executor
  callbacks that format chunks) over process_cpu_seconds_total
  (getrusage); their ratio is the number the issue asks for.
- /proc/<pid>/task/*/stat: CPU time per thread. The server's event loop
  (MHD, request mapping, writes) is "anvil-http"; the executor, the thread
  pool and main are "anvil". This is a cross-check that needs no
  cooperation from the server; it cannot see the formatting done in the
  executor's callbacks (on the executor's thread).
With --perf FILE it also records `perf record -g` of the server over the
load.
"""
import argparse
import http.client
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "server"))
from load_clients import pct, run_load, scrape_metrics  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_of(stat_path):
    """user + system seconds from a /proc stat file."""
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def threads(pid):
    """{tid: (name, cpu seconds)} of the live threads."""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                name = f.read().strip()
            out[int(t)] = (name, cpu_of(f"/proc/{pid}/task/{t}/stat"))
        except OSError:
            pass  # a thread that ended meanwhile
    return out


def reading(pid, port):
    m = scrape_metrics(port)
    return {"metrics": m, "proc": cpu_of(f"/proc/{pid}/stat"), "threads": threads(pid), "t": time.perf_counter()}


def perf_profile(path):
    """Where the server's CPU went, from `perf script` of a --call-graph dwarf recording: each sample
    classified by its thread and call chain; returns [(label, share of all samples)]."""
    out = subprocess.run(["perf", "script", "-i", path, "-F", "comm,tid,ip,sym"], capture_output=True,
                         text=True).stdout
    counts, n = {}, 0
    for block in out.split("\n\n"):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        if not lines:
            continue
        comm = lines[0].split()[0]
        syms = [ln.split(None, 1)[1].split(" (")[0].replace("+", " ").split()[0] if " " in ln else "?"
                for ln in lines[1:]]
        leaf = syms[0] if syms else "?"
        chain = " ".join(syms)
        if comm.startswith(("MHD", "anvil-http")):
            if "sendto" in chain or "__send" in chain or "writev" in chain:
                k = "HTTP threads: send() of SSE chunks (incl. loopback delivery to the client)"
            elif "futex" in chain or "lll_lock" in chain or "cond_timedwait" in chain:
                k = "HTTP threads: waits and wake-ups (condition variable, mutex)"
            elif "poll" in chain:
                k = "HTTP threads: poll()/epoll (MHD, hang-up sweep)"
            elif "clock_gettime" in chain:
                k = "HTTP threads: clock_gettime (cost counters, timed waits)"
            elif "srv_openai" in chain or "anvil_tokenize" in chain or "chat_template" in chain:
                k = "HTTP threads: request mapping (JSON, tokenization, template)"
            else:
                k = "HTTP threads: other (MHD parsing, thread start/exit, ...)"
        elif "srv_" in chain:
            if "srv_wake" in chain or "futex" in chain:
                k = "executor thread, server callbacks: waking the HTTP loop"
            elif "json" in chain:
                k = "executor thread, server callbacks: JSON"
            else:
                k = "executor thread, server callbacks: other (SSE buffer, metrics, malloc)"
        elif "anvil_detokenizer" in chain or "tok_decode" in chain:
            k = "executor thread: detokenization"
        elif "anvil_runtime_forward" in chain or "worker_main" in chain:
            k = "executor: forward (runtime, thread pool)"
        elif "anvil_exec" in chain or "loop_main" in chain:
            k = "executor: scheduling, sampling, other"
        else:
            k = f"other ({comm}: {leaf})"
        counts[k] = counts.get(k, 0) + 1
        n += 1
    return sorted(((k, v / n) for k, v in counts.items()), key=lambda kv: -kv[1]), n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--anvil", default="build/anvil")
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=0, help="--threads of the server (0: its default)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=4, help="per client")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--procs", type=int, default=1, help="client processes (one caps near 50k events/s)")
    ap.add_argument("--perf", default=None, help="perf record -g the server into this file during the load")
    ap.add_argument("--extra", default="", help="more server flags, one string")
    a = ap.parse_args()

    port = free_port()
    cmd = [a.anvil, "serve", "--model", a.model, "--port", str(port)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    cmd += a.extra.split()
    srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            assert srv.poll() is None, "the server exited"
            try:  # /health is 200 once every model is loaded
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            finally:
                c.close()
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.1)
        warm = run_load(port, min(a.clients, 8), 1, 8)
        assert not warm["errors"], warm["errors"][:3]
        perf = None
        if a.perf:
            perf = subprocess.Popen(["perf", "record", "-F", "999", "--call-graph", "dwarf,32768", "-o", a.perf,
                                     "-p", str(srv.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        r0 = reading(srv.pid, port)
        res = run_load(port, a.clients, a.requests, a.max_tokens, greedy=a.greedy, procs=a.procs)
        r1 = reading(srv.pid, port)
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=120)
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()

    m0, m1 = r0["metrics"], r1["metrics"]
    server = m1["anvil_server_cpu_seconds_total"] - m0["anvil_server_cpu_seconds_total"]
    process = m1["process_cpu_seconds_total"] - m0["process_cpu_seconds_total"]
    wall = r1["t"] - r0["t"]
    print(f"{a.model}: {a.clients} clients x {a.requests} streamed requests x {a.max_tokens} tokens, "
          f"server threads {a.threads or 'default'}: {res['ok']} ok, {len(res['errors'])} errors, "
          f"{res['tokens']} tokens in {res['wall']:.2f} s ({res['tokens'] / res['wall']:.0f} tokens/s), "
          f"TTFT p99 {pct(res['ttft'], 99) * 1e3:.0f} ms")
    print(f"counters: server CPU {server:.3f} s / process CPU {process:.3f} s = {100 * server / process:.2f}% "
          f"(process used {process / wall:.2f} cores over {wall:.2f} s)")
    steps = {k: m1[k] - m0.get(k, 0) for k in m1 if k.startswith("anvil_executor_steps_total")}
    n_steps = sum(steps.values())
    if n_steps > 0:
        ph = {}
        for k in m1:
            if k.startswith("anvil_executor_busy_seconds_total"):
                p = k.split('phase="')[1].split('"')[0]
                ph[p] = ph.get(p, 0.0) + m1[k] - m0.get(k, 0.0)
        print(f"executor: {n_steps:.0f} steps; per step " +
              ", ".join(f"{p} {1e3 * v / n_steps:.3f} ms" for p, v in ph.items()))
    # per thread, from /proc (clock ticks: 10 ms resolution)
    t0, t1 = r0["threads"], r1["threads"]
    groups = {}
    for tid, (name, cpu) in t1.items():
        d = cpu - t0.get(tid, (name, 0.0))[1]
        key = name if name.startswith(("MHD", "anvil-http")) else "anvil (main, executor, pool)"
        groups[key] = groups.get(key, 0.0) + d
    proc = r1["proc"] - r0["proc"]
    live = sum(groups.values())
    if proc - live > 0.005:
        groups["ended threads"] = proc - live
    http_cpu = proc - groups["anvil (main, executor, pool)"]
    print(f"/proc: process {proc:.2f} s; " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(groups.items())) +
          f"; HTTP threads {http_cpu:.2f} s = {100 * http_cpu / proc:.2f}%")
    top = sorted(((cpu - t0.get(tid, (n, 0.0))[1], tid, n) for tid, (n, cpu) in t1.items()), reverse=True)[:4]
    print("busiest threads: " + ", ".join(f"{n}/{tid} {d:.2f} s" for d, tid, n in top))
    if a.perf:
        prof, n = perf_profile(a.perf)
        outside = sum(v for k, v in prof if k.startswith(("HTTP", "executor thread")))
        print(f"perf ({n} samples): outside the executor {100 * outside:.1f}%")
        for k, v in prof:
            if v >= 0.002:
                print(f"  {100 * v:5.1f}%  {k}")
    if res["errors"] or res["ok"] != a.clients * a.requests:
        sys.exit(1)


if __name__ == "__main__":
    main()
