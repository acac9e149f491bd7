"""anvil serve driven by the official openai client and by raw HTTP: the
OpenAI shapes of completions and chat (streamed and not), greedy output equal
to `anvil run`, every error status, a client that hangs up, and a graceful
shutdown. A real server on stories260K, on 127.0.0.1 only."""
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import ANVIL, SHARED

openai = pytest.importorskip("openai")

MODEL = SHARED / "models" / "stories260K"
TEMPLATE = SHARED / "chat_templates" / "microsoft-Phi-3.5-mini-instruct.jinja"
KEY = "sk-test-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *extra):
        self.port = free_port()
        self.log = open(os.devnull, "w")
        self.proc = subprocess.Popen(
            [ANVIL, "serve", "--model", MODEL, "--port", str(self.port), "--threads", "1",
             "--chat-template", TEMPLATE, "--shutdown-timeout", "2", *map(str, extra)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                status, _, _ = self.request("GET", "/health")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "server did not become healthy"
            time.sleep(0.1)

    def request(self, method, path, body=None, headers=None, raw=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            h = dict(headers or {})
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            text = r.read().decode()
            return r.status, text, r
        finally:
            c.close()

    def metrics(self):
        status, text, _ = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.proc.stderr.close()
        self.log.close()
        return rc


@pytest.fixture(scope="module")
def server():
    s = Server("--api-key", KEY, "--max-request-bytes", 65536)
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=KEY, timeout=30, max_retries=0)


AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def test_models_and_health(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["stories260K"]
    assert server.request("GET", "/health")[0] == 200


def test_greedy_completion_equals_anvil_run(client):
    r = subprocess.run([ANVIL, "run", "--model", MODEL, "--prompt", "Once upon a time", "--temperature", "0",
                        "--max-tokens", "24", "--json", "--threads", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ref = json.loads(r.stdout)
    c = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=24, temperature=0)
    assert c.object == "text_completion" and c.id.startswith("cmpl-")
    assert c.choices[0].text == ref["text"]
    assert c.choices[0].finish_reason == "length"
    assert c.usage.prompt_tokens == len(ref["prompt_ids"])
    assert c.usage.completion_tokens == 24
    assert c.usage.total_tokens == c.usage.prompt_tokens + 24
    # token ids as the prompt give the same
    c2 = client.completions.create(model="stories260K", prompt=ref["prompt_ids"], max_tokens=24, temperature=0)
    assert c2.choices[0].text == ref["text"]
    # streamed: the chunks add up to the same text, usage at the end
    chunks = list(client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=24,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == ref["text"]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 24 and chunks[-1].choices == []


def test_stop_n_and_seed(client):
    full = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=24, temperature=0).choices[0].text
    word = full.split()[4]
    c = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=24, temperature=0, stop=[word])
    assert c.choices[0].finish_reason == "stop"
    assert c.choices[0].text == full[:full.index(word)]
    args = dict(model="stories260K", prompt="Once upon a time", max_tokens=30, temperature=1.0, top_p=0.95)
    a = client.completions.create(seed=7, n=2, **args)
    b = client.completions.create(seed=7, n=2, **args)
    assert [ch.index for ch in a.choices] == [0, 1]
    assert [ch.text for ch in a.choices] == [ch.text for ch in b.choices]
    others = {client.completions.create(seed=s, **args).choices[0].text for s in (1, 2, 3)}
    assert len(others) > 1


def test_logprobs(client):
    c = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert "".join(lp.tokens) == c.choices[0].text  # token strings add up to the text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0 and 1 <= len(top) <= 2
        assert max(top.values()) == pytest.approx(chosen, abs=1e-5)  # greedy: the chosen is the best
    ch = client.chat.completions.create(model="stories260K", messages=[{"role": "user", "content": "Hi"}],
                                        max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = ch.choices[0].logprobs.content
    assert len(content) == ch.usage.completion_tokens
    assert all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in content)


def test_chat_streamed_and_not(client):
    msgs = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Tell me a story"}]
    c = client.chat.completions.create(model="stories260K", messages=msgs, max_tokens=20, temperature=0)
    assert c.object == "chat.completion" and c.id.startswith("chatcmpl-")
    assert c.choices[0].message.role == "assistant"
    text = c.choices[0].message.content
    assert text and c.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model="stories260K", messages=msgs, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_tokenize_detokenize(server):
    st, text, _ = server.request("POST", "/v1/tokenize", {"prompt": "Once upon a time"}, AUTH)
    assert st == 200
    toks = json.loads(text)["tokens"]
    assert toks[0] == 1 and len(toks) == json.loads(text)["count"]
    st, text, _ = server.request("POST", "/v1/detokenize", {"tokens": toks[1:]}, AUTH)
    assert st == 200 and json.loads(text)["prompt"] == "Once upon a time"


def error_of(server, method, path, body=None, headers=AUTH, raw=None):
    st, text, r = server.request(method, path, body, headers, raw)
    err = json.loads(text)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return st, err, r


def test_errors(server, client):
    good = {"model": "stories260K", "prompt": "Once", "max_tokens": 4}
    assert error_of(server, "POST", "/v1/completions", raw="{not json")[0] == 400
    assert error_of(server, "POST", "/v1/completions", raw="[1, 2]")[0] == 400
    st, err, _ = error_of(server, "POST", "/v1/completions", {**good, "temperature": "hot"})
    assert st == 400 and err["param"] == "temperature"
    st, err, _ = error_of(server, "POST", "/v1/completions", {**good, "temperature": 5})
    assert st == 400 and err["param"] == "temperature"
    assert error_of(server, "POST", "/v1/completions", {**good, "n": 0})[0] == 400
    assert error_of(server, "POST", "/v1/completions", {**good, "max_tokens": -1})[0] == 400
    assert error_of(server, "POST", "/v1/completions", {**good, "logit_bias": {"x": 1}})[0] == 400
    assert error_of(server, "POST", "/v1/completions", {**good, "prompt": [999999]})[0] == 400
    assert error_of(server, "POST", "/v1/chat/completions", {"model": "stories260K", "messages": "hi"})[0] == 400
    st, err, _ = error_of(server, "POST", "/v1/completions", {**good, "prompt": [1] * 600})
    assert st == 400 and err["code"] == "context_length_exceeded"
    # authentication
    assert error_of(server, "POST", "/v1/completions", good, {"Authorization": "Bearer wrong"})[0] == 401
    assert error_of(server, "POST", "/v1/completions", good, {})[0] == 401
    assert error_of(server, "GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}x"})[0] == 401
    # unknown model and path, wrong method
    st, err, _ = error_of(server, "POST", "/v1/completions", {**good, "model": "nope"})
    assert st == 404 and err["code"] == "model_not_found"
    assert error_of(server, "GET", "/v1/nothing")[0] == 404
    st, _, r = error_of(server, "GET", "/v1/completions")
    assert st == 405 and r.getheader("Allow") == "POST"
    # a body over --max-request-bytes
    st, _, _ = error_of(server, "POST", "/v1/completions", {**good, "user": "x" * 70000})
    assert st == 413
    # the openai client sees them as its exceptions
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="stories260K", prompt="x", max_tokens=1, top_p=3)
    # and the server still serves
    assert client.completions.create(model="stories260K", prompt="Once", max_tokens=2).choices[0].text is not None
    m = server.metrics()
    assert m['anvil_http_requests_total{status="400"}'] >= 10
    assert m['anvil_http_requests_total{status="401"}'] == 3


def open_stream(port, body):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
              f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def first_data(s):
    buf = b""
    while b"data: " not in buf:
        chunk = s.recv(4096)
        assert chunk, buf
        buf += chunk
    return buf


def wait_idle(server, timeout=10):
    deadline = time.time() + timeout
    while True:
        m = server.metrics()
        if (m['anvil_num_requests_running{model="stories260K"}'] == 0 and
                m['anvil_kv_blocks{model="stories260K",state="used"}'] == 0 and
                m["anvil_http_requests_in_flight"] == 0):
            return m
        assert time.time() < deadline, m
        time.sleep(0.05)


def test_disconnect_cancels(server):
    s = open_stream(server.port, {"prompt": "Once upon a time", "max_tokens": 480, "ignore_eos": True,
                                  "stream": True})
    first_data(s)
    s.close()
    m = wait_idle(server)
    assert m['anvil_kv_blocks{model="stories260K",state="free"}'] + \
        m['anvil_kv_blocks{model="stories260K",state="cached"}'] == m['anvil_kv_blocks_total{model="stories260K"}']
    # a non-streamed request whose client leaves is cancelled too
    s = open_stream(server.port, {"prompt": "Once upon a time", "max_tokens": 480, "ignore_eos": True})
    s.close()
    wait_idle(server)


def read_all(s, out, i):
    buf = out[i]
    try:
        while chunk := s.recv(65536):
            buf += chunk
    except OSError:
        pass
    out[i] = buf


def test_queue_full_429_and_graceful_shutdown():
    # one request's KV fills the cache, the next waits: the ones after are refused
    srv = Server("--api-key", KEY, "--kv-cache-tokens", 512, "--max-queue-size", 1)
    try:
        body = {"prompt": "Once upon a time", "max_tokens": 500, "ignore_eos": True, "stream": True}
        streams, out, refused = [], [], None
        for _ in range(100):
            x = open_stream(srv.port, body)
            first = x.recv(65536)
            if b" 429 " in first.split(b"\r\n")[0]:
                refused = first
                x.close()
                break
            streams.append(x)
            out.append(first)
        assert refused is not None and b'"queue_full"' in refused, out
        readers = [threading.Thread(target=read_all, args=(x, out, i)) for i, x in enumerate(streams)]
        for t in readers:
            t.start()
        # SIGTERM with requests in flight: they finish or are cancelled, exit 0
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0
        for t in readers:
            t.join(timeout=30)
        # each stream ends whole, with [DONE] (finished, or aborted by the
        # shutdown), unless it was still queued when the shutdown began (503)
        for buf in out:
            status = buf.split(b"\r\n")[0]
            assert b" 503 " in status or b"data: [DONE]" in buf, buf[-300:]
        for x in streams:
            x.close()
    finally:
        srv.stop()
