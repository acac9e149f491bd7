"""anvil serve driven by the official openai client and by raw HTTP: the
OpenAI shapes of completions and chat (streamed and not), greedy output equal
to `anvil run` and to what Hugging Face decodes after the prompt, every error
status, a client that hangs up (every prompt of its request cancelled), and a
graceful shutdown. A real server on stories260K, on 127.0.0.1 only."""
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from tokenizers import Tokenizer

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


def test_port_in_use(server):
    """A second server on a port in use fails at once, saying why (it must not share the port)."""
    r = subprocess.run([ANVIL, "serve", "--model", MODEL, "--port", str(server.port), "--threads", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.port}: Address already in use" in r.stderr, r.stderr
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


def test_completion_text_is_what_it_adds_to_the_prompt(client, tmp_path):
    """The completion of "The cat" is " and a boy ...": HF's
    decode(prompt + gen)[len(decode(prompt)):], as OpenAI and vLLM return it
    (a SentencePiece decoder alone strips the first word's space). The ids
    come from `anvil run --input` with the same requests (the same executor,
    the same seeded draws)."""
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    reqs = [{"prompt": p, "max_tokens": 12, "ignore_eos": True, **kw}
            for p in ("The cat", "Once upon a time", "Lily and Tom went to the park. They saw a", "Tom had a")
            for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 5, "n": 2})]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in reqs))
    r = subprocess.run([ANVIL, "run", "--model", MODEL, "--input", path, "--threads", "1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    refs = [json.loads(line) for line in r.stdout.splitlines()]
    for req, ref in zip(reqs, refs):
        kw = {k: v for k, v in req.items() if k not in ("prompt", "ignore_eos")}
        c = client.completions.create(model="stories260K", prompt=req["prompt"], extra_body={"ignore_eos": True},
                                      **kw)
        ids = tok.encode(req["prompt"]).ids
        assert len(c.choices) == len(ref["choices"])
        for ch, want in zip(c.choices, ref["choices"]):
            hf = tok.decode(ids + want["token_ids"])[len(tok.decode(ids)):]
            assert ch.text == want["text"] == hf, (req, ch.text, hf)
    cat = client.completions.create(model="stories260K", prompt="The cat", max_tokens=4, temperature=0)
    assert cat.choices[0].text.startswith(" ")


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
    # also where the first token starts a word ("The cat" + " and")
    cat = client.completions.create(model="stories260K", prompt="The cat", max_tokens=4, temperature=0, logprobs=0)
    assert "".join(cat.choices[0].logprobs.tokens) == cat.choices[0].text and cat.choices[0].text[0] == " "
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


# ------------------------------------------------------------ several prompts, echo, best_of, formats, tools


def greedy(client, prompt, **kw):
    return client.completions.create(model="stories260K", prompt=prompt, max_tokens=10, temperature=0, **kw)


def test_several_prompts(client):
    prompts = ["Once upon a time", "The cat", "Lily and Tom went"]
    singles = [greedy(client, p) for p in prompts]
    c = greedy(client, prompts, n=2)
    # one choice per prompt x n, index = prompt_i * n + j (OpenAI's and vLLM's order)
    assert [ch.index for ch in c.choices] == list(range(6))
    assert [ch.text for ch in c.choices] == [s.choices[0].text for s in singles for _ in range(2)]
    assert c.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert c.usage.completion_tokens == 2 * sum(s.usage.completion_tokens for s in singles)
    # as token-id lists: the same
    ids = [[1] + client.post("/tokenize", body={"prompt": p, "add_special_tokens": False}, cast_to=object)["tokens"]
           for p in prompts]
    t = greedy(client, ids)
    assert [ch.text for ch in t.choices] == [s.choices[0].text for s in singles]
    # streamed: the chunks of each index add up to its text; usage summed at the end
    chunks = list(client.completions.create(model="stories260K", prompt=prompts, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    texts, finish = {}, {}
    for ch in chunks:
        for x in ch.choices:
            texts[x.index] = texts.get(x.index, "") + x.text
            finish[x.index] = x.finish_reason or finish.get(x.index)
    assert texts == {i: s.choices[0].text for i, s in enumerate(singles)}
    assert set(finish.values()) == {"length"}
    assert chunks[-1].usage.prompt_tokens == c.usage.prompt_tokens
    # at most 128 prompts
    with pytest.raises(openai.BadRequestError):
        greedy(client, ["x"] * 129)


def test_echo(client):
    plain = greedy(client, "Once upon a time")
    e = greedy(client, "Once upon a time", echo=True)
    assert e.choices[0].text == "Once upon a time" + plain.choices[0].text
    assert e.usage == plain.usage
    # a word-start token after the prompt keeps its space ("The cat" + " and", not "The catand"): the
    # completion's own text has it, echo adds nothing
    cat = greedy(client, "The cat", echo=True).choices[0].text
    assert cat == "The cat" + greedy(client, "The cat").choices[0].text and cat.startswith("The cat ")
    # token ids are echoed as their text (decoded as HF does: stories260K's <s> stays)
    ids = client.post("/tokenize", body={"prompt": "Once upon a time", "add_special_tokens": False},
                      cast_to=object)["tokens"]
    assert greedy(client, ids, echo=True).choices[0].text == "Once upon a time" + greedy(client, ids).choices[0].text
    assert greedy(client, [1] + ids, echo=True).choices[0].text == "<s> " + e.choices[0].text
    # several prompts, n > 1
    two = greedy(client, ["Once upon a time", "The cat"], echo=True, n=2)
    assert [ch.text for ch in two.choices][:2] == [e.choices[0].text] * 2 and two.choices[2].text == cat
    # streamed: the prompt comes first, then the completion
    chunks = list(client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=10,
                                            temperature=0, stream=True, echo=True))
    assert chunks[0].choices[0].text == "Once upon a time"
    assert "".join(ch.choices[0].text for ch in chunks) == e.choices[0].text
    chunks = list(client.completions.create(model="stories260K", prompt="The cat", max_tokens=10,
                                            temperature=0, stream=True, echo=True))
    assert "".join(ch.choices[0].text for ch in chunks) == cat
    # the prompt's logprobs are not computed: echo with logprobs is refused
    with pytest.raises(openai.BadRequestError) as ex:
        greedy(client, "Once upon a time", echo=True, logprobs=1)
    assert ex.value.body["param"] == "echo" and "logprobs" in ex.value.body["message"]


def test_best_of(client):
    args = dict(model="stories260K", prompt="Once upon a time", seed=7, temperature=1.0, max_tokens=12, logprobs=0,
                extra_body={"ignore_eos": True})
    every = client.completions.create(n=5, **args)
    best = client.completions.create(n=2, best_of=5, **args)

    def score(ch):
        return sum(ch.logprobs.token_logprobs)

    assert len({ch.text for ch in every.choices}) > 2  # the samples differ
    ranked = sorted(every.choices, key=score, reverse=True)
    assert [ch.text for ch in best.choices] == [ch.text for ch in ranked[:2]]
    assert [ch.index for ch in best.choices] == [0, 1]
    assert score(best.choices[0]) >= score(best.choices[1])
    # usage counts every sample generated, as OpenAI bills best_of
    assert best.usage.completion_tokens == every.usage.completion_tokens == 60
    # without logprobs asked, none are returned (they were computed for the ranking)
    plain = client.completions.create(n=1, best_of=5, **{**args, "logprobs": None})
    assert plain.choices[0].logprobs is None and plain.choices[0].text == ranked[0].text
    # several prompts: the best of each
    two = client.completions.create(n=1, best_of=5, **{**args, "prompt": ["Once upon a time"] * 2})
    assert [ch.text for ch in two.choices] == [ranked[0].text] * 2
    # best_of == n streams; more cannot (the best are known only at the end); best_of < n is wrong
    assert list(client.completions.create(n=2, best_of=2, stream=True, **args))
    for bad in (dict(n=1, best_of=3, stream=True), dict(n=3, best_of=2)):
        with pytest.raises(openai.BadRequestError) as ex:
            client.completions.create(**{**args, **bad})
        assert ex.value.body["param"] == "best_of"


def test_response_format_and_tools(client):
    msgs = [{"role": "user", "content": "Tell me a story"}]
    plain = client.chat.completions.create(model="stories260K", messages=msgs, max_tokens=8, temperature=0)
    c = client.chat.completions.create(model="stories260K", messages=msgs, max_tokens=8, temperature=0,
                                       response_format={"type": "text"})
    assert c.choices[0].message.content == plain.choices[0].message.content
    for rf in ({"type": "json_object"},
               {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}):
        # structured output (test_server_structured.py): the reply is a JSON object, or its beginning
        c = client.chat.completions.create(model="stories260K", messages=msgs, max_tokens=8, response_format=rf)
        assert c.choices[0].message.content.startswith("{")
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather",
                                               "parameters": {"type": "object", "properties": {}}}}]
    # tools the model must not call are accepted (the template sees them)
    c = client.chat.completions.create(model="stories260K", messages=msgs, max_tokens=8, temperature=0,
                                       tools=tools, tool_choice="none")
    assert c.choices[0].message.tool_calls is None and c.choices[0].finish_reason == "length"
    # tool calls (test_server_tools.py): Phi-3.5's template has no call
    # syntax, so the default choice returns text; a forced call is a JSON
    # array of {name, parameters}, whole or cut at max_tokens
    for choice in (None, "auto"):
        kw = {} if choice is None else {"tool_choice": choice}
        c = client.chat.completions.create(model="stories260K", messages=msgs, max_tokens=8, tools=tools, **kw)
        assert c.choices[0].message.tool_calls is None and c.choices[0].message.content
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        c = client.chat.completions.create(model="stories260K", messages=msgs, max_tokens=64, tools=tools,
                                           tool_choice=choice).choices[0]
        if c.finish_reason == "tool_calls":
            assert c.message.tool_calls[0].function.name == "get_weather"
        else:
            assert c.finish_reason == "length" and c.message.content.startswith('[{"name": "get_weather"')
    # tool_choice "none" / "auto" without tools is harmless; "required" has nothing to call
    assert client.chat.completions.create(model="stories260K", messages=msgs, max_tokens=2, tool_choice="none")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="stories260K", messages=msgs, max_tokens=2, tool_choice="required")


def finished(server):
    """anvil_requests_total by finish reason (one per executor request: one per prompt)."""
    m = server.metrics()
    return {f: m[f'anvil_requests_total{{model="stories260K",finish_reason="{f}"}}']
            for f in ("stop", "length", "cancelled")}


def delta(after, before):
    return {k: after[k] - before[k] for k in after}


def sse_until(port, body, done):
    """Streams body; reads events until done(event) is true. Returns the
    connection, its response and the events read (the caller hangs up or
    reads on)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=AUTH)
    r = conn.getresponse()
    assert r.status == 200
    events = []
    while True:
        line = r.readline()
        assert line, events
        if line.startswith(b"data: {"):
            events.append(json.loads(line[6:]))
            if done(events[-1]):
                return conn, r, events


def first_prompt_stopped(ev):
    return any(ch["index"] == 0 and ch["finish_reason"] == "stop" for ch in ev["choices"])


# "Once upon a time" reaches "Lily" within 10 tokens; "Tom and Max" does not within 480 (greedy, ignore_eos)
FIRST_STOPS = {"prompt": ["Once upon a time"] + ["Tom and Max"] * 5, "stop": ["Lily"], "n": 4, "temperature": 0,
               "max_tokens": 480, "ignore_eos": True, "stream": True}


def test_first_stops_precondition(client):
    c = client.completions.create(model="stories260K", prompt=FIRST_STOPS["prompt"][:2], max_tokens=480,
                                  temperature=0, stop=["Lily"], extra_body={"ignore_eos": True})
    assert [ch.finish_reason for ch in c.choices] == ["stop", "length"]
    assert c.usage.completion_tokens - 480 <= 12


def test_several_prompts_disconnect(server):
    """A client that leaves cancels every prompt of its request at once (every
    executor request of the job, not only the first prompt's): each ends
    cancelled, none runs on to its length, also when the first prompt has
    already finished."""
    long = {"max_tokens": 480, "ignore_eos": True, "n": 4}
    for stream in (True, False):
        before = finished(server)
        s = open_stream(server.port, {"prompt": ["Once upon a time", "The cat", "Tom"] * 2, "stream": stream, **long})
        if stream:
            first_data(s)
        else:  # the executor has the six prompts (else "idle" below could be seen before they came; HTTP's
            # in-flight count alone came first under TSan on a loaded machine, and the client left before
            # any prompt reached the executor: nothing to cancel)
            deadline = time.time() + 10
            while True:
                m = server.metrics()
                if (m['anvil_num_requests_running{model="stories260K"}'] +
                        m['anvil_num_requests_waiting{model="stories260K"}'] >= 6):
                    break
                assert time.time() < deadline, m
                time.sleep(0.01)
        s.close()
        m = wait_idle(server)
        assert m['anvil_num_requests_waiting{model="stories260K"}'] == 0
        assert delta(finished(server), before) == {"stop": 0, "length": 0, "cancelled": 6}
    # the first prompt ends (its stop string) before the client leaves; the five others are cancelled
    before = finished(server)
    conn, r, _ = sse_until(server.port, FIRST_STOPS, first_prompt_stopped)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    m = wait_idle(server)
    assert m['anvil_kv_blocks{model="stories260K",state="free"}'] + \
        m['anvil_kv_blocks{model="stories260K",state="cached"}'] == m['anvil_kv_blocks_total{model="stories260K"}']
    assert delta(finished(server), before) == {"stop": 1, "length": 0, "cancelled": 5}


def test_several_prompts_shutdown():
    """SIGTERM when the first prompt of a request has finished: the shutdown
    cancels every prompt still running (each sample ends with "abort" and the
    stream with [DONE]), it does not wait for them to reach their length."""
    srv = Server("--api-key", KEY, "--shutdown-timeout", 0)
    try:
        conn, r, events = sse_until(srv.port, FIRST_STOPS, first_prompt_stopped)
        srv.proc.send_signal(signal.SIGTERM)
        rest = r.read()
        assert rest.endswith(b"data: [DONE]\n\n"), rest[-300:]
        events += [json.loads(line[6:]) for line in rest.split(b"\n") if line.startswith(b"data: {")]
        finish = {}
        for ev in events:
            for ch in ev["choices"]:
                finish[ch["index"]] = ch["finish_reason"] or finish.get(ch["index"])
        assert [finish[i] for i in range(4)] == ["stop"] * 4
        assert [finish[i] for i in range(4, 24)] == ["abort"] * 20, finish
        conn.close()
        assert srv.proc.wait(timeout=30) == 0
    finally:
        srv.stop()


def test_several_prompts_queue_full():
    """A request whose prompts overflow the queue is 429, and its prompts
    already queued are cancelled."""
    srv = Server("--api-key", KEY, "--kv-cache-tokens", 512, "--max-queue-size", 2)
    try:
        long = {"max_tokens": 480, "ignore_eos": True}
        # one request fills the KV cache; then 4 prompts: 2 wait, the 3rd overflows the queue
        hog = open_stream(srv.port, {"prompt": "Once upon a time", "stream": True, **long})
        first_data(hog)
        st, text, _ = srv.request("POST", "/v1/completions", {"prompt": ["a", "b", "c", "d"], "max_tokens": 4}, AUTH)
        assert st == 429 and json.loads(text)["error"]["code"] == "queue_full"
        hog.close()
        m = wait_idle(srv)
        assert m['anvil_num_requests_waiting{model="stories260K"}'] == 0
        assert m['anvil_kv_blocks{model="stories260K",state="free"}'] + \
            m['anvil_kv_blocks{model="stories260K",state="cached"}'] == m['anvil_kv_blocks_total{model="stories260K"}']
        st, text, _ = srv.request("POST", "/v1/completions", {"prompt": ["a", "b"], "max_tokens": 4}, AUTH)
        assert st == 200 and len(json.loads(text)["choices"]) == 2
        # a request that can never fit the KV cache is the client's to change: 400, not 500
        st, text, _ = srv.request("POST", "/v1/completions", {"prompt": "a", "n": 4, "max_tokens": 400}, AUTH)
        assert st == 400 and json.loads(text)["error"]["code"] == "kv_cache_exceeded", text
    finally:
        assert srv.stop() == 0


def read_sse_raw(s):
    """Reads a whole chunked SSE response from a raw socket: (events, the
    number of HTTP chunks: one per write of the server's stream reader)."""
    buf = b""
    while not buf.endswith(b"0\r\n\r\n"):
        chunk = s.recv(65536)
        assert chunk, buf[-200:]
        buf += chunk
    text, rest, writes = b"", buf.split(b"\r\n\r\n", 1)[1], 0
    while True:  # undo the chunked transfer encoding
        size, rest = rest.split(b"\r\n", 1)
        n = int(size, 16)
        if n == 0:
            break
        text, rest, writes = text + rest[:n], rest[n + 2:], writes + 1
    events = [json.loads(line[6:]) for line in text.split(b"\n") if line.startswith(b"data: {")]
    assert text.endswith(b"data: [DONE]\n\n")
    return events, writes


def test_stream_interval():
    """--stream-interval 4: the same stream, its chunks written four steps
    at a time (about a quarter of the writes), the first token at once."""
    steps = 40
    body = {"prompt": "Once upon a time", "max_tokens": steps, "ignore_eos": True, "temperature": 0,
            "n": 2, "logprobs": 2, "stream": True}
    got = {}
    for interval in (1, 4):
        srv = Server("--api-key", KEY, "--stream-interval", interval)
        try:
            s = open_stream(srv.port, body)
            events, writes = read_sse_raw(s)
            s.close()
            got[interval] = events
            if interval == 4:  # the first token, then every 4 steps, and the end
                assert writes <= steps // 4 + 4, writes  # whole groups: 11 here
        finally:
            assert srv.stop() == 0
    assert [ev["choices"] for ev in got[1]] == [ev["choices"] for ev in got[4]]
    texts = ["".join(c["text"] for ev in got[4] for c in ev["choices"] if c["index"] == i) for i in (0, 1)]
    assert texts[0] == texts[1] and len(texts[0]) > 20  # greedy: both samples the same
