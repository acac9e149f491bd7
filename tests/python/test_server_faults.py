"""anvil serve under 200 misbehaving clients at once: clients that hang up
mid-stream or before the answer, malformed and oversized bodies, raw garbage,
half-sent requests, alongside well-behaved ones. Afterwards the server is
healthy, answers correctly, runs nothing and holds no KV block, and exits 0."""
import json
import random
import socket
import threading
import time

from test_server_openai import AUTH, KEY, Server, wait_idle

N_CLIENTS = 200


def send(port, payload, read=True, timeout=60):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(payload)
        if not read:
            return b""
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return buf
            buf += chunk
            if b"data: [DONE]" in buf or (b"\r\n\r\n" in buf and b"text/event-stream" not in buf and
                                          b"Content-Length" in buf and buf.endswith(b"}")):
                return buf
    finally:
        s.close()


def post(path, body, extra=b""):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n").encode() + extra + b"\r\n" + data


def client(port, i, results):
    rnd = random.Random(i)
    kind = i % 8
    prompt = {"prompt": "Once upon a time", "max_tokens": rnd.randint(8, 64), "temperature": 0.8, "seed": i}
    try:
        if kind == 0:  # well-behaved, streamed (some with several prompts)
            several = {"prompt": ["Once upon a time", "The cat"]} if i % 16 == 0 else {}
            buf = send(port, post("/v1/completions", {**prompt, "stream": True, **several}))
            results[i] = b" 200 " in buf.split(b"\r\n")[0] and b"data: [DONE]" in buf
        elif kind == 1:  # well-behaved, not streamed
            buf = send(port, post("/v1/completions", prompt))
            results[i] = b" 200 " in buf.split(b"\r\n")[0] or b" 429 " in buf.split(b"\r\n")[0]
        elif kind == 2:  # hangs up mid-stream (every other one with several prompts, each to be cancelled)
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            several = {"prompt": ["Once upon a time", "The cat", "Tom"]} if i % 16 == 2 else {}
            s.sendall(post("/v1/completions", {**prompt, "max_tokens": 400, "ignore_eos": True, "stream": True,
                                               **several}))
            s.recv(200)
            s.close()
            results[i] = True
        elif kind == 3:  # hangs up before the answer (some with several prompts, n and best_of)
            several = {"prompt": ["Once upon a time"] * 3, "n": 2, "best_of": 3} if i % 16 == 3 else {}
            send(port, post("/v1/completions", {**prompt, "max_tokens": 400, "ignore_eos": True, **several}),
                 read=False)
            results[i] = True
        elif kind == 4:  # malformed JSON
            buf = send(port, post("/v1/chat/completions", b'{"messages": [{"role": "user", "content": '))
            results[i] = b" 400 " in buf.split(b"\r\n")[0]
        elif kind == 5:  # a body over the limit
            buf = send(port, post("/v1/completions", {**prompt, "user": "x" * 100000}))
            results[i] = b" 413 " in buf.split(b"\r\n")[0] or buf == b""
        elif kind == 6:  # garbage bytes, not HTTP
            send(port, bytes(rnd.getrandbits(8) for _ in range(300)) + b"\r\n\r\n", read=False)
            results[i] = True
        else:  # a request whose body never completes
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(post("/v1/completions", {**prompt})[:-10])
            time.sleep(rnd.random() * 0.5)
            s.close()
            results[i] = True
    except OSError as e:  # a connection the server refused or reset is fine for the faulty kinds
        results[i] = kind not in (0, 1, 4) or repr(e)


def test_200_faulty_clients():
    srv = Server("--api-key", KEY, "--max-request-bytes", 65536)
    try:
        results = [None] * N_CLIENTS
        threads = [threading.Thread(target=client, args=(srv.port, i, results)) for i in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert all(r is True for r in results), [(i, r) for i, r in enumerate(results) if r is not True]
        m = wait_idle(srv, timeout=30)
        assert m['anvil_kv_blocks{model="stories260K",state="free"}'] + \
            m['anvil_kv_blocks{model="stories260K",state="cached"}'] == m['anvil_kv_blocks_total{model="stories260K"}']
        assert srv.request("GET", "/health")[0] == 200
        st, text, _ = srv.request("POST", "/v1/completions",
                                  {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}, AUTH)
        assert st == 200 and json.loads(text)["choices"][0]["finish_reason"] == "length"
    finally:
        assert srv.stop() == 0
