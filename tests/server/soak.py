"""Soak (not a test: minutes long): `anvil serve` under connection bursts,
hang-ups, streams, loads and unloads at once, for --minutes. Afterwards the
server must answer, be idle (nothing running or waiting, every KV block free
or cached, no request in flight), give the same greedy text as at the start,
and its RSS must be flat (the last third of the run no higher than the
first third's peak plus --rss-slack-mb). Prints a summary and exits non-zero
on any failure.

    python tests/server/soak.py --anvil build/anvil --shared ../shared --minutes 10

Load, in threads:
  - streamers: streaming completions (greedy and sampled, n 1..3), a third
    hanging up after a few chunks;
  - bursts: 1..1024 idle sockets opened and all closed at once, then
    /health must answer within 1 s;
  - half-sent heads left for the header deadline to cut;
  - repo: tinycode loaded and unloaded in a loop while requests go to it
    (404 while unloaded is expected), stories260K always loaded.
"""
import argparse
import http.client
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ADMIN = "sk-admin"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Soak:
    def __init__(self, args):
        self.args = args
        self.port = free_port()
        self.repo = tempfile.mkdtemp(prefix="anvil-soak-")
        for m in ("stories260K", "tinycode"):
            os.symlink(os.path.join(os.path.abspath(args.shared), "models", m), os.path.join(self.repo, m))
        self.proc = subprocess.Popen(
            [args.anvil, "serve", "--model-repo", self.repo, "--load-model", "stories260K", "--port", str(self.port),
             "--threads", str(args.threads), "--admin-key", ADMIN, "--max-connections", "2048",
             "--max-connections-per-client", "2048", "--header-timeout", "5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {}
        self.failures = []
        self.rss = []  # (t, kB)
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                sys.exit("server died at start: " + self.proc.stderr.read())
            try:
                if self.request("GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("server did not become healthy")
            time.sleep(0.1)

    def count(self, what, n=1):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def fail(self, what):
        with self.lock:
            self.failures.append(f"{time.strftime('%H:%M:%S')} {what}")
        self.count("FAIL")

    def request(self, method, path, body=None, key=None, timeout=120):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            h = {"Authorization": f"Bearer {key}"} if key else {}
            c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
            r = c.getresponse()
            text = r.read().decode()
            return r.status, text
        finally:
            c.close()

    def greedy(self):
        st, text = self.request("POST", "/v1/completions", {"model": "stories260K", "prompt": "Once upon a time",
                                                           "max_tokens": 48, "temperature": 0})
        assert st == 200, text
        return json.loads(text)["choices"][0]["text"]

    # ------------------------------------------------------------ load

    def streamer(self, i):
        rnd = random.Random(i)
        while not self.stop.is_set():
            model = "tinycode" if rnd.random() < 0.3 else "stories260K"
            body = {"model": model, "prompt": rnd.choice(["Once upon a time", "The cat", "def f(x):"]),
                    "max_tokens": rnd.randint(8, 96), "temperature": rnd.choice([0, 0.8]), "seed": rnd.randint(0, 99),
                    "n": rnd.choice([1, 1, 2, 3]), "stream": True}
            hang = rnd.random() < 0.33
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
                r = c.getresponse()
                if r.status == 404 and model == "tinycode":
                    self.count("404 (unloaded)")
                    r.read()
                elif r.status != 200:
                    self.fail(f"stream {model}: HTTP {r.status} {r.read()[:200]!r}")
                elif hang:
                    r.read1(200)
                    self.count("hang-ups")
                else:
                    text = r.read()
                    if not text.rstrip().endswith(b"data: [DONE]"):
                        self.fail(f"stream {model}: no [DONE]: {text[-200:]!r}")
                    elif b'"finish_reason":"abort"' in text:
                        self.count("aborted by unload")
                    else:
                        self.count("streams ok")
                c.close()
            except OSError as e:
                self.fail(f"stream {model}: {e}")

    def health_within(self, seconds):
        t0 = time.time()
        try:
            st, _ = self.request("GET", "/health", timeout=seconds)
            return st == 200 and time.time() - t0 <= seconds
        except OSError:
            return False

    def bursts(self):
        rnd = random.Random(7)
        while not self.stop.is_set():
            n = rnd.choice([1, 2, 3, 4, 16, 64, 256, 1024])
            socks = []
            try:
                for _ in range(n):
                    socks.append(socket.create_connection(("127.0.0.1", self.port), timeout=5))
            except OSError as e:
                self.fail(f"burst of {n}: connect: {e}")
            for s in socks:
                s.close()
            if not self.health_within(1.0):
                self.fail(f"no /health within 1 s after a burst of {n}")
            self.count("bursts")
            time.sleep(rnd.random() * 0.5)

    def half_sent(self):
        rnd = random.Random(11)
        while not self.stop.is_set():
            socks = []
            for _ in range(rnd.randint(1, 32)):
                try:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
                    socks.append(s)
                except OSError as e:
                    self.fail(f"half-sent: {e}")
            self.stop.wait(7)  # past the 5 s header deadline: the server has closed them
            for s in socks:
                try:
                    s.settimeout(1)
                    if s.recv(1) == b"":
                        self.count("heads cut")
                    else:
                        self.count("heads answered")
                except OSError:
                    self.count("heads cut")
                s.close()

    def repo_loop(self):
        rnd = random.Random(5)
        while not self.stop.is_set():
            for verb in ("load", "unload"):
                try:
                    st, text = self.request("POST", f"/v2/repository/models/tinycode/{verb}", key=ADMIN)
                    if st != 200:
                        self.fail(f"{verb}: HTTP {st} {text[:200]}")
                    else:
                        self.count(f"{verb}s")
                except OSError as e:
                    self.fail(f"{verb}: {e}")
                self.stop.wait(rnd.random() * 3)

    def rss_sampler(self):
        t0 = time.time()
        while not self.stop.is_set():
            try:
                with open(f"/proc/{self.proc.pid}/status") as f:
                    kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
                self.rss.append((time.time() - t0, kb))
            except (OSError, StopIteration):
                pass
            self.stop.wait(2)

    # ------------------------------------------------------------ the run

    def metrics(self):
        st, text = self.request("GET", "/metrics")
        assert st == 200
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def run(self):
        before = self.greedy()
        threads = [threading.Thread(target=self.streamer, args=(i,)) for i in range(self.args.streams)]
        threads += [threading.Thread(target=f) for f in (self.bursts, self.half_sent, self.repo_loop, self.rss_sampler)]
        for t in threads:
            t.start()
        end = time.time() + self.args.minutes * 60
        while time.time() < end and self.proc.poll() is None:
            time.sleep(5)
            if not self.health_within(1.0):
                self.fail("no /health within 1 s (periodic)")
        self.stop.set()
        for t in threads:
            t.join()
        if self.proc.poll() is not None:
            self.fail(f"server died: exit {self.proc.returncode}")
            return self.report(before, None)
        # idle: the cancels and frees of the last hang-ups
        deadline = time.time() + 30
        while True:
            m = self.metrics()
            busy = sum(v for k, v in m.items() if k.startswith(("anvil_num_requests_running", "anvil_num_requests_waiting")))
            used = sum(v for k, v in m.items() if k.startswith("anvil_kv_blocks{") and 'state="used"' in k)
            if busy == 0 and used == 0 or time.time() > deadline:
                break
            time.sleep(0.5)
        after = self.greedy()
        return self.report(before, (after, m, busy, used))

    def report(self, before, end):
        ok = not self.failures
        print("counts:", json.dumps(self.counts, sort_keys=True))
        if end:
            after, m, busy, used = end
            if after != before:
                ok = False
                print(f"greedy text changed: {before!r} -> {after!r}")
            if busy or used:
                ok = False
                print(f"not idle: running+waiting {busy}, KV blocks used {used}")
            kv = {k: v for k, v in m.items() if k.startswith("anvil_kv_blocks")}
            print("kv blocks at the end:", json.dumps(kv, sort_keys=True))
        if self.rss:
            t_end = self.rss[-1][0]
            first = [kb for t, kb in self.rss if t <= t_end / 3]
            last = [kb for t, kb in self.rss if t >= 2 * t_end / 3]
            peak_first, max_last = max(first or [0]), max(last or [0])
            print(f"RSS MB: start {self.rss[0][1] / 1024:.1f}, first third peak {peak_first / 1024:.1f}, "
                  f"last third max {max_last / 1024:.1f}, end {self.rss[-1][1] / 1024:.1f} "
                  f"({len(self.rss)} samples)")
            if max_last > peak_first + self.args.rss_slack_mb * 1024:
                ok = False
                print("RSS grew")
        for f in self.failures[:30]:
            print("FAIL", f)
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=60)
        if rc != 0:
            ok = False
            print("server exit", rc, self.proc.stderr.read()[-2000:])
        shutil.rmtree(self.repo, ignore_errors=True)
        print("soak:", "PASS" if ok else "FAIL")
        return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anvil", default="build/anvil")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--streams", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rss-slack-mb", type=float, default=16)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    sys.exit(Soak(args).run())


if __name__ == "__main__":
    main()
