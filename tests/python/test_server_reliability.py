"""anvil serve against a faulty environment (issue 11): a checkpoint
truncated under a served model (weights are read into memory: the model keeps
serving, the next load is a clear error, never SIGBUS); a shard that is a FIFO
(refused at once, never LOADING forever); a load past --load-timeout; NaN in
a weight (refused at load, naming the tensor); finite weights that still give
non-finite logits (the request ends with an error naming the step, the server
carries on); SIGTERM during the start's loads and a second SIGTERM during a
shutdown that waits (both end the process within a bound)."""
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time

from conftest import ANVIL, SHARED

STORIES = SHARED / "models" / "stories260K"
ADMIN = "sk-admin"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_model(dst):
    os.makedirs(dst)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        shutil.copy(STORIES / name, dst / name)
    return dst


def patch_tensor(path, tensor, element, value):
    """Sets element `element` (None: every element) of an f32 tensor of a
    safetensors file to value, in place."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        entry = header[tensor]
        assert entry["dtype"] == "F32"
        begin, end = entry["data_offsets"]
        count = (end - begin) // 4
        elems = range(count) if element is None else [element]
        for k in elems:
            f.seek(8 + n + begin + 4 * k)
            f.write(struct.pack("<f", value))


class Server:
    def __init__(self, *args, wait=True):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [ANVIL, "serve", "--port", str(self.port), "--threads", "1", "--admin-key", ADMIN, *map(str, args)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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

    def request(self, method, path, body=None, key=None, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            h = {"Authorization": f"Bearer {key}"} if key else {}
            c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
            r = c.getresponse()
            text = r.read().decode()
            return r.status, (json.loads(text) if text.startswith(("{", "[")) else text)
        finally:
            c.close()

    def repo(self, verb, name):
        return self.request("POST", f"/v2/repository/models/{name}/{verb}", key=ADMIN)

    def state(self, name):
        st, rows = self.request("GET", "/v2/repository/index", key=ADMIN)
        assert st == 200
        return {r["name"]: r for r in rows}[name]

    def complete(self, model, **kw):
        body = {"model": model, "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, **kw}
        return self.request("POST", "/v1/completions", body)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            err = self.proc.stderr.read()
            self.proc.stderr.close()
        return rc, err


def test_truncated_checkpoint_keeps_serving(tmp_path):
    repo = tmp_path / "repo"
    copy_model(repo / "m")
    srv = Server("--model-repo", repo)
    try:
        st, first = srv.complete("m")
        assert st == 200, first
        # the checkpoint replaced under the server (a disk filling up, a copy in progress)
        os.truncate(repo / "m" / "model.safetensors", 100)
        st, again = srv.complete("m")
        assert st == 200, again
        assert again["choices"][0]["text"] == first["choices"][0]["text"]
        assert srv.repo("unload", "m")[0] == 200
        st, body = srv.repo("load", "m")
        assert st == 500, body
        assert "model.safetensors" in body["error"], body
        row = srv.state("m")
        assert row["state"] == "UNAVAILABLE" and "model.safetensors" in row["reason"], row
        assert srv.request("GET", "/health")[0] == 200
    finally:
        rc, err = srv.stop()
    assert rc == 0, err


def test_fifo_shard_and_load_timeout(tmp_path):
    repo = tmp_path / "repo"
    fifo = copy_model(repo / "fifo")
    os.replace(fifo / "model.safetensors", fifo / "model-00001-of-00002.safetensors")
    os.mkfifo(fifo / "model-00002-of-00002.safetensors")
    with open(STORIES / "model.safetensors", "rb") as f:
        names = list(json.loads(f.read(struct.unpack("<Q", f.read(8))[0])))
    wmap = {n: "model-00001-of-00002.safetensors" for n in names if n != "__metadata__"}
    wmap["extra.weight"] = "model-00002-of-00002.safetensors"
    (fifo / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    missing = copy_model(repo / "missing")  # a tensor renamed in the header: missing, same file size
    data = (missing / "model.safetensors").read_bytes()
    (missing / "model.safetensors").write_bytes(data.replace(b'"model.norm.weight"', b'"model.norX.weight"', 1))
    copy_model(repo / "ok")
    srv = Server("--model-repo", repo, "--no-load-all")
    slow = Server("--model-repo", repo, "--no-load-all", "--load-timeout", "0.000001")
    try:
        t0 = time.time()
        st, body = srv.repo("load", "fifo")
        assert time.time() - t0 < 30
        assert st == 500 and "not a regular file" in body["error"], body
        assert srv.state("fifo")["state"] == "UNAVAILABLE"
        assert srv.repo("unload", "fifo")[0] == 200  # not stuck behind a load
        # a model that exists but lacks a tensor is the server's failure, not a 404
        st, body = srv.repo("load", "missing")
        assert st == 500 and body["code"] == "model_load_failed", body
        assert "missing tensor 'model.norm.weight'" in body["error"], body
        assert srv.repo("load", "ok")[0] == 200
        assert srv.complete("ok")[0] == 200
        # a load past its deadline fails and says why
        st, body = slow.repo("load", "ok")
        assert st == 503 and body["code"] == "model_load_cancelled", body
        assert "load timeout" in body["error"], body
        row = slow.state("ok")
        assert row["state"] == "UNAVAILABLE" and "load timeout" in row["reason"], row
    finally:
        stopped = [s.stop() for s in (srv, slow)]  # both, before any assertion
    for rc, err in stopped:
        assert rc == 0, err


def test_poisoned_models(tmp_path):
    repo = tmp_path / "repo"
    nan = copy_model(repo / "nan")
    patch_tensor(nan / "model.safetensors", "model.layers.1.self_attn.q_proj.weight", 5, float("nan"))
    huge = copy_model(repo / "huge")  # finite weights, infinite activations
    patch_tensor(huge / "model.safetensors", "model.norm.weight", None, 1e38)
    copy_model(repo / "ok")
    srv = Server("--model-repo", repo, "--load-model", "ok")
    try:
        st, body = srv.repo("load", "nan")
        assert st == 500, body
        msg = body["error"]
        assert "model.layers.1.self_attn.q_proj.weight" in msg and "NaN" in msg, msg
        assert srv.state("nan")["state"] == "UNAVAILABLE"
        assert srv.repo("load", "huge")[0] == 200
        for t in (0, 0.8):
            st, body = srv.complete("huge", temperature=t)
            assert st == 500, body
            assert "non-finite logits" in body["error"]["message"] and "step" in body["error"]["message"], body
        # streamed: an error event, then the end
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        c.request("POST", "/v1/completions", json.dumps({"model": "huge", "prompt": "Tom", "max_tokens": 8,
                                                         "stream": True}))
        text = c.getresponse().read().decode()
        c.close()
        assert "non-finite logits" in text and "data: [DONE]" in text, text
        # and the server carries on
        st, body = srv.complete("ok")
        assert st == 200 and body["choices"][0]["text"], body
    finally:
        rc, err = srv.stop()
    assert rc == 0, err


def test_sigterm_during_start_and_twice(tmp_path):
    # SIGTERM as soon as the server listens (its loads may be running): it ends, 0
    for delay in (0.0, 0.05):
        srv = Server("--model", STORIES, wait=False)
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
                break
            except OSError:
                assert srv.proc.poll() is None and time.time() < deadline
                time.sleep(0.01)
        time.sleep(delay)
        t0 = time.time()
        rc, err = srv.stop(timeout=30)
        assert rc == 0, err
        assert time.time() - t0 < 20
    # a shutdown that waits (a stream in flight whose client does not read,
    # a long --shutdown-timeout) ends at once on a second signal. The stream
    # fits the context (stories260K holds 512 tokens: a max_tokens past it
    # is a 400, and the shutdown then waited for nothing, so the check below
    # passed or failed by how fast the idle server ended, which failed once
    # on a loaded machine): its 16 x 500 tokens take seconds to generate
    # (6.6 s in a Debug build on the loaded 2-core VM), the 1 s below
    # falls inside them
    srv = Server("--model", STORIES, "--shutdown-timeout", "120")
    s = socket.create_connection(("127.0.0.1", srv.port))
    body = json.dumps({"prompt": "Once", "max_tokens": 500, "ignore_eos": True, "stream": True, "n": 16}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 1000:
        head += s.recv(100)
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head, head  # the stream began
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert srv.proc.poll() is None  # waiting for the stream
    t0 = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.proc.wait(timeout=20)
    assert time.time() - t0 < 10
    assert rc == 130
    err = srv.proc.stderr.read()
    assert "(1 requests in flight)" in err and "second signal" in err, err
    srv.proc.stderr.close()
    s.close()
