"""anvil serve --model-repo: the model repository API (Triton's
/v2/repository/index and /v2/repository/models/{name}/load|unload) on a real
server. Loading and unloading a model while another one streams leaves those
streams alone (each equal to the same request sent alone) and the unload gives
back the memory the load took (its resident set); unloading a model with streams in
flight ends them (finished, or "abort" + [DONE]); names that are not plain
folder names are refused before anything looks at the disk; the admin key
guards it all."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import ANVIL, SHARED

STORIES = SHARED / "models" / "stories260K"
TINYCODE = SHARED / "models" / "tinycode"  # 12.6 M parameters: tens of MB once loaded and used
TEMPLATE = SHARED / "chat_templates" / "microsoft-Phi-3.5-mini-instruct.jinja"
KEY, ADMIN = "sk-user", "sk-admin"
MB = 1024 * 1024
# An AddressSanitizer build keeps freed memory in quarantine: it cannot show
# an unload's memory coming back (its run checks for memory errors and leaks).
with open(ANVIL, "rb") as f:
    ASAN = b"__asan_init" in f.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args, env=None, wait=True):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [ANVIL, "serve", "--port", str(self.port), "--threads", "1", *map(str, args)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.time() + 60
        while wait:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if self.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "server did not become healthy"
            time.sleep(0.05)

    def request(self, method, path, body=None, key=None, raw=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            h = {"Authorization": f"Bearer {key}"} if key else {}
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            text = r.read().decode()
            return r.status, (json.loads(text) if text.startswith(("{", "[")) else text)
        finally:
            c.close()

    def repo(self, verb, name, key=ADMIN):
        return self.request("POST", f"/v2/repository/models/{name}/{verb}", key=key)

    def index(self, **kw):
        st, body = self.request("GET", "/v2/repository/index", key=ADMIN, **kw)
        assert st == 200, body
        return {row["name"]: row for row in body}

    def metrics(self):
        st, text = self.request("GET", "/metrics")
        assert st == 200
        return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                         if line and not line.startswith("#"))}

    def rss(self):
        # smaps_rollup's Rss walks the page tables: exact. VmRSS of status is
        # not (proc(5): "inaccurate because of a kernel-internal scalability
        # optimization"): its counters keep unflushed deltas per thread
        # (before Linux 6.2) or per CPU (since), megabytes on a CI host of
        # many CPUs, where an unload once seemed to keep 9 MB of 27.
        with open(f"/proc/{self.proc.pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Rss:"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        return rc, err


def complete(server, model, **kw):
    body = {"model": model, "prompt": "Once upon a time", "temperature": 0, **kw}
    return server.request("POST", "/v1/completions", body, key=KEY)


def stream(server, model, out, started=None, **kw):
    """One streamed completion; appends {status, text, finish, done} to out."""
    body = {"model": model, "prompt": "Once upon a time", "temperature": 0, "stream": True, **kw}
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    rec = {"status": None, "text": "", "finish": [], "done": False}
    try:
        c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Authorization": f"Bearer {KEY}"})
        r = c.getresponse()
        rec["status"] = r.status
        if r.status != 200:
            rec["text"] = r.read().decode()
            return
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: "):
                continue
            if started is not None:
                started.set()
            if line == "data: [DONE]":
                rec["done"] = True
                break
            for ch in json.loads(line[6:]).get("choices", []):
                rec["text"] += ch.get("text") or ""
                if ch.get("finish_reason"):
                    rec["finish"].append(ch["finish_reason"])
    finally:
        c.close()
        out.append(rec)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("repo")
    (d / "stories260K").symlink_to(STORIES)
    (d / "tinycode").symlink_to(TINYCODE)
    broken = d / "broken"  # a config and a safetensors file that is not one
    broken.mkdir()
    shutil.copy(STORIES / "config.json", broken / "config.json")
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    (d / "notamodel").mkdir()  # no config.json: not listed
    (d / ".hidden").symlink_to(STORIES)  # not a usable name: not listed
    return d


@pytest.fixture(scope="module")
def server(repo):
    s = Server("--model-repo", repo, "--load-model", "stories260K", "--api-key", KEY, "--admin-key", ADMIN,
               "--unload-timeout", 1, "--chat-template", TEMPLATE)
    yield s
    rc, err = s.stop()
    assert rc == 0, err


def test_index_names_and_errors(server):
    idx = server.index()
    assert set(idx) == {"broken", "stories260K", "tinycode"}
    assert idx["stories260K"] == {"name": "stories260K", "version": "1", "state": "READY", "reason": ""}
    assert idx["tinycode"]["state"] == "UNAVAILABLE" and idx["tinycode"]["reason"] == "not loaded"
    # Triton's POST form, with and without {"ready": true}
    st, rows = server.request("POST", "/v2/repository/index", {"ready": True}, key=ADMIN)
    assert st == 200 and [r["name"] for r in rows] == ["stories260K"]
    st, rows = server.request("POST", "/v2/repository/index", key=ADMIN)
    assert st == 200 and len(rows) == 3
    assert server.request("POST", "/v2/repository/index", {"ready": 1}, key=ADMIN)[0] == 400
    # only loaded models are served
    st, models = server.request("GET", "/v1/models", key=KEY)
    assert [m["id"] for m in models["data"]] == ["stories260K"]
    st, err = complete(server, "tinycode", max_tokens=4)
    assert st == 404 and err["error"]["code"] == "model_not_found"
    # unknown names are 404, names that are not plain folder names 400
    st, err = server.repo("load", "nope")
    assert st == 404 and err["code"] == "model_not_found" and "nope" in err["error"]
    assert server.repo("load", "notamodel")[0] == 404
    for bad in ["..", ".hidden", "..%2F..%2Fetc", "%2e%2e", "a%2Fb", "a%20b", "x" * 129, ""]:
        st, err = server.repo("load", bad)
        assert st == 400 and err["code"] == "invalid_model_name", (bad, st, err)
        assert server.repo("unload", bad)[0] == 400
    st, err = server.request("POST", "/v2/repository/models/../../../etc/passwd/load", key=ADMIN)
    assert st == 400, err
    # a NUL ends the path where it is decoded: not a model path at all
    assert server.repo("load", "%00x")[0] == 404
    assert server.repo("unload", "nope")[0] == 404
    assert server.repo("unload", "tinycode")[0] == 200  # not loaded: nothing to do
    # wrong method, unknown repository path
    assert server.request("GET", "/v2/repository/models/tinycode/load", key=ADMIN)[0] == 405
    assert server.request("POST", "/v2/repository/models/tinycode", key=ADMIN)[0] == 404
    # the admin key, not the API key, opens the repository API
    for key in (None, KEY, ADMIN + "x"):
        st, err = server.request("GET", "/v2/repository/index", key=key)
        assert st == 401 and err["code"] == "invalid_api_key"
        assert server.repo("load", "tinycode", key=key)[0] == 401
    assert server.index()["tinycode"]["state"] == "UNAVAILABLE"
    # a folder that does not load: 500, the reason in the index, the server fine
    st, err = server.repo("load", "broken")
    assert st == 500 and err["code"] == "model_load_failed"
    assert "model.safetensors" in err["error"] and ".c:" not in err["error"]
    row = server.index()["broken"]
    assert row["state"] == "UNAVAILABLE" and "model.safetensors" in row["reason"]
    assert server.request("GET", "/health")[0] == 200
    assert complete(server, "stories260K", max_tokens=4)[0] == 200


def test_load_unload_while_another_model_streams(server):
    args = dict(max_tokens=120, ignore_eos=True)
    st, ref = complete(server, "stories260K", **args)
    assert st == 200
    ref = ref["choices"][0]["text"]
    results, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            stream(server, "stories260K", results, **args)

    # requests without "model" go to the first loaded model: stories260K
    assert server.request("POST", "/v1/completions", {"prompt": "Once upon a time", "temperature": 0,
                                                      **args}, key=KEY)[1]["choices"][0]["text"] == ref
    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.3)
        rss_before = server.rss()
        loads = server.metrics()['anvil_model_loads_total{model="tinycode"}']
        # four loads at once: one load, four 200s
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(server.repo("load", "tinycode")))
                   for _ in range(4)]
        for x in threads:
            x.start()
        for x in threads:
            x.join()
        assert [a[0] for a in answers] == [200] * 4, answers
        assert all(a[1]["state"] == "READY" for a in answers)
        assert server.metrics()['anvil_model_loads_total{model="tinycode"}'] == loads + 1
        st, c1 = complete(server, "tinycode", prompt="def is_prime(n):\n", max_tokens=24)
        assert st == 200 and c1["usage"]["completion_tokens"] == 24
        rss_loaded = server.rss()
        assert server.repo("load", "tinycode")[0] == 200  # loaded: nothing to do
        assert server.metrics()['anvil_model_loads_total{model="tinycode"}'] == loads + 1
        assert server.index()["tinycode"]["state"] == "READY"
        st, row = server.repo("unload", "tinycode")
        assert st == 200 and row == {"name": "tinycode", "version": "1", "state": "UNAVAILABLE",
                                     "reason": "unloaded"}
        rss_unloaded = server.rss()
        st, err = complete(server, "tinycode", max_tokens=4)
        assert st == 404 and err["error"]["code"] == "model_not_found"
        assert 'anvil_kv_blocks_total{model="tinycode"}' not in server.metrics()
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    print(f"Rss before load {rss_before / MB:.1f} MB, loaded and used {rss_loaded / MB:.1f} MB, "
          f"after unload {rss_unloaded / MB:.1f} MB")
    # the other model's streams went on, each equal to the request alone
    assert len(results) >= 5
    for r in results:
        assert r["status"] == 200 and r["done"] and r["finish"] == ["length"] and r["text"] == ref, r
    # the unload gives back most of what the load took (weights, KV cache, tokenizer)
    took = rss_loaded - rss_before
    assert took > 15 * MB, (rss_before, rss_loaded)
    if not ASAN:
        assert rss_loaded - rss_unloaded > 0.8 * took, (rss_before, rss_loaded, rss_unloaded)
    # and it loads again, with the same output
    assert server.repo("load", "tinycode")[0] == 200
    st, c2 = complete(server, "tinycode", prompt="def is_prime(n):\n", max_tokens=24)
    assert st == 200 and c2["choices"][0]["text"] == c1["choices"][0]["text"]
    assert server.repo("unload", "tinycode")[0] == 200


def test_unload_while_its_requests_stream(server):
    unloads = server.metrics()['anvil_model_unloads_total{model="tinycode"}']
    assert server.repo("load", "tinycode")[0] == 200
    results, started, threads = [], [], []
    for _ in range(3):  # long streams: the unload timeout (1 s) ends them
        ev = threading.Event()
        started.append(ev)
        threads.append(threading.Thread(target=stream, args=(server, "tinycode", results, ev),
                                        kwargs=dict(max_tokens=900, ignore_eos=True)))
    plain = []
    threads.append(threading.Thread(
        target=lambda: plain.append(complete(server, "tinycode", max_tokens=900, ignore_eos=True))))
    short = threading.Event()
    started.append(short)
    threads.append(threading.Thread(target=stream, args=(server, "tinycode", results, short),
                                    kwargs=dict(max_tokens=3)))
    for x in threads:
        x.start()
    for ev in started:
        assert ev.wait(30)
    t0 = time.time()
    st, row = server.repo("unload", "tinycode")
    took = time.time() - t0
    assert st == 200 and row["state"] == "UNAVAILABLE"
    for x in threads:
        x.join(timeout=60)
    assert took < 15, took
    assert len(results) == 4 and all(r["status"] == 200 and r["done"] for r in results), results
    finishes = sorted(r["finish"][0] for r in results)
    assert finishes == ["abort", "abort", "abort", "length"], results
    assert plain[0][0] in (200, 503), plain
    # the server goes on: the other model serves, nothing runs, the unloaded one is gone
    assert server.request("GET", "/health")[0] == 200
    assert complete(server, "stories260K", max_tokens=4)[0] == 200
    assert complete(server, "tinycode", max_tokens=4)[0] == 404
    m = server.metrics()
    assert m["anvil_http_requests_in_flight"] == 0
    assert m['anvil_model_unloads_total{model="tinycode"}'] == unloads + 1


def test_admin_key_defaults_to_api_key_and_load_all(repo, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    (good / "a").symlink_to(STORIES)
    (good / "b").symlink_to(STORIES)
    # without --load-model every model of the repository is loaded at start;
    # --model ones come first (the default model), a repository folder of the same name is theirs
    s = Server("--model-repo", good, "--model", f"b={STORIES}", "--api-key", KEY)
    try:
        st, rows = s.request("GET", "/v2/repository/index", key=KEY)
        assert st == 200 and [(r["name"], r["state"]) for r in rows] == [("b", "READY"), ("a", "READY")]
        assert s.request("GET", "/v2/repository/index")[0] == 401
        assert s.request("POST", "/v1/completions", {"prompt": "Once", "max_tokens": 2}, key=KEY)[1]["model"] == "b"
    finally:
        assert s.stop()[0] == 0
    # a model of the repository that does not load stops the start (as Triton's --exit-on-error)
    s = Server("--model-repo", repo, wait=False)
    rc = s.proc.wait(timeout=60)
    err = s.proc.stderr.read()
    s.proc.stderr.close()
    assert rc == 1 and "cannot load model 'broken'" in err, err
