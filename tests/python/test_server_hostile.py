"""anvil serve against hostile requests: bodies over the limit (honest, with
a lying Content-Length, chunked), truncated and deeply nested JSON, invalid
UTF-8, NUL characters, out-of-range and non-finite numbers and wrong types in
every field, thousands of stop strings, path-like model names, huge n and
max_tokens, bad logit_bias keys, malformed chat messages. Each is answered
with a clear 4xx in OpenAI's error shape (naming the parameter where the
body parsed); afterwards the server is healthy, idle, and still answers a
normal request exactly as before. A real server on stories260K."""
import json
import socket
import time

import pytest

from test_server_openai import AUTH, KEY, Server, wait_idle

LIMIT = 1 << 20  # the server's --max-request-bytes (its default)
GOOD = {"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
CHAT = {"model": "stories260K", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def server():
    s = Server("--api-key", KEY, "--max-request-bytes", LIMIT)
    s.reference = s.request("POST", "/v1/completions", GOOD, AUTH)
    assert s.reference[0] == 200
    yield s
    assert s.stop() == 0


def raw(port, payload, timeout=30, pause=None):
    """Sends raw bytes; returns (status, body bytes) of the first response,
    or (None, b"") when the server closed without one."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            if pause is None:
                s.sendall(payload)
            else:
                for part in payload:
                    s.sendall(part)
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before the upload ends
        buf = b""
        while True:
            if b"\r\n\r\n" in buf:
                head, body = buf.split(b"\r\n\r\n", 1)
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    return int(head.split(b" ")[1]), body[:length[0]]
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if b"\r\n\r\n" in buf:
                    head, body = buf.split(b"\r\n\r\n", 1)
                    return int(head.split(b" ")[1]), body
                return None, buf
            buf += chunk
    finally:
        s.close()


def headers(path="/v1/completions", extra=""):
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\n{extra}")


def openai_error(text):
    err = json.loads(text)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    assert err["type"] == "invalid_request_error", err
    return err


def bad(server, body=None, param=None, code=None, path="/v1/completions", raw_body=None, status=400):
    """Asserts the request is refused with status, OpenAI's shape, param and code."""
    t0 = time.time()
    st, text, _ = server.request("POST", path, body, AUTH, raw_body)
    assert time.time() - t0 < 10
    assert st == status, (body if raw_body is None else raw_body[:200], st, text[:300])
    err = openai_error(text)
    if param is not None:
        assert err["param"] == param, (body, err)
    if code is not None:
        assert err["code"] == code, (body, err)
    return err


# ------------------------------------------------------------ the HTTP body


def test_bodies_over_the_limit(server):
    big = json.dumps({**GOOD, "user": "x" * (2 * LIMIT)}).encode()
    # an honest Content-Length: answered from the header at once
    st, body = raw(server.port, (headers() + f"Content-Length: {len(big)}\r\n\r\n").encode())
    assert st == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    # a Content-Length far beyond anything
    st, body = raw(server.port, (headers() + "Content-Length: 1000000000000\r\n\r\n").encode())
    assert st == 413
    # chunked transfer encoding: no length up front, counted as it arrives
    chunks = b"".join(b"%x\r\n" % len(big[i:i + 65536]) + big[i:i + 65536] + b"\r\n"
                      for i in range(0, len(big), 65536)) + b"0\r\n\r\n"
    st, body = raw(server.port, (headers() + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks)
    assert st == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    # a small chunked body is served
    data = json.dumps(GOOD).encode()
    st, body = raw(server.port, (headers() + "Transfer-Encoding: chunked\r\n\r\n").encode() +
                   b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n")
    assert st == 200 and json.loads(body)["choices"][0]["text"] == json.loads(server.reference[1])["choices"][0]["text"]


def test_lying_content_length(server):
    data = json.dumps({**GOOD, "user": "y" * 100000}).encode()
    # shorter than the body: the request is what the header says (truncated
    # JSON, 400); the rest is garbage as a next request, refused by the HTTP layer
    st, body = raw(server.port, (headers() + "Content-Length: 12\r\n\r\n").encode() + data)
    assert st == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    # longer than the body: the server waits for the rest; the client gives up
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall((headers() + "Content-Length: 5000\r\n\r\n").encode() + data[:100])
    time.sleep(0.3)
    s.close()
    # not a number, negative
    for cl in ("abc", "-1", "1e3", "18446744073709551616"):
        st, _ = raw(server.port, (headers() + f"Content-Length: {cl}\r\n\r\n").encode() + data[:50])
        assert st is None or 400 <= st < 500, (cl, st)
    # a chunk size that is not hexadecimal
    st, _ = raw(server.port, (headers() + "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n").encode())
    assert st is None or 400 <= st < 500
    assert server.request("GET", "/health")[0] == 200


def test_truncated_and_malformed_json(server):
    text = json.dumps(GOOD)
    for cut in (1, 10, len(text) // 2, len(text) - 1):
        bad(server, raw_body=text[:cut], code="invalid_json")
    for body in ("", " ", "{", "}", "{,}", '{"prompt": "x",}', '{"prompt" "x"}', "[1, 2]", '"x"', "null", "42",
                 '{"prompt": "x"} trailing', "\x00", "{'prompt': 'x'}"):
        bad(server, raw_body=body)
    # the message says what the parser found and where
    err = bad(server, raw_body='{"prompt": "x",\n "max_tokens": tru}', code="invalid_json")
    assert "invalid token near 'tru'" in err["message"] and "(line 2, column" in err["message"], err
    err = bad(server, raw_body=text[:10], code="invalid_json")
    assert "near end of file (line 1, column 10)" in err["message"], err
    # the client's bytes quoted in it stay a valid JSON string (printable ASCII only)
    err = bad(server, raw_body=b'{"prompt": \xff\xfe}', code="invalid_json")
    assert err["message"].isascii() and "(line 1" in err["message"], err
    bad(server, raw_body="{", path="/v1/chat/completions", code="invalid_json")


def test_deeply_nested_json(server):
    # jansson stops at 2048 levels: refused at once, no stack overflow
    for body in ("[" * 100000, '{"a":' * 100000, '{"prompt": ' + "[" * 100000,
                 '{"messages": [{"role": "user", "content": "x", "extra": ' + "[" * 100000 + "]}]}",
                 '{"stop": ' + "{\"a\": " * 50000 + "}"):
        t0 = time.time()
        bad(server, raw_body=body, code="invalid_json")
        assert time.time() - t0 < 5
    # deep but within the parser's limit: refused where the shape is wrong
    deep = "[" * 2000 + "1" + "]" * 2000
    bad(server, raw_body=f'{{"prompt": {deep}, "max_tokens": 2}}', param="prompt")
    bad(server, raw_body=f'{{"prompt": "x", "stop": {deep}}}', param="stop")
    bad(server, raw_body=f'{{"prompt": "x", "logit_bias": {{"5": {deep}}}}}', param="logit_bias")
    bad(server, raw_body=f'{{"messages": {deep}}}', path="/v1/chat/completions", param="messages[0]")
    # an unknown field nested deep is ignored; in a chat message it reaches the template, which copes
    st, _, _ = server.request("POST", "/v1/completions", None, AUTH, json.dumps(GOOD)[:-1] + f', "x": {deep}}}')
    assert st == 200
    body = json.dumps(CHAT).replace('"content": "Hi"', f'"content": "Hi", "x": {deep}')
    st, text, _ = server.request("POST", "/v1/chat/completions", None, AUTH, body)
    assert st == 200 or (st == 400 and openai_error(text)["param"] == "messages"), text[:300]


def test_not_utf8_and_nul(server):
    base = json.dumps(GOOD).encode()
    for junk in (b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"a\xe2\x82"):
        body = base.replace(b"Once upon", b"Once " + junk + b" upon")
        bad(server, raw_body=body, code="invalid_json")
    # escaped lone surrogates are not text either
    bad(server, raw_body=json.dumps(GOOD).replace("Once", "Once \\ud800"), code="invalid_json")
    bad(server, raw_body=json.dumps(GOOD).replace("Once", "Once \\udc00\\ud800"), code="invalid_json")
    # NUL characters (\u0000 is valid JSON): refused in every string field the server reads, naming it
    # (a C string would be cut at the NUL); jansson itself refuses them in object keys
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\u0000}"}}
    for field, body, path in (
            ("prompt", {**GOOD, "prompt": "Once\u0000upon"}, "/v1/completions"),
            ("prompt", {**GOOD, "prompt": ["ok", "\u0000"]}, "/v1/completions"),
            ("stop", {**GOOD, "stop": ["a\u0000b"]}, "/v1/completions"),
            ("stop", {**GOOD, "stop": "\u0000"}, "/v1/completions"),
            ("model", {**GOOD, "model": "stories260K\u0000../x"}, "/v1/completions"),
            ("user", {**GOOD, "user": "me\u0000"}, "/v1/completions"),
            ("suffix", {**GOOD, "suffix": "\u0000"}, "/v1/completions"),
            ("response_format", {**GOOD, "response_format": {"type": "text\u0000"}}, "/v1/completions"),
            ("model", {**CHAT, "model": "stories260K\u0000"}, "/v1/chat/completions"),
            ("messages[0].content", {**CHAT, "messages": [{"role": "user", "content": "a\u0000"}]},
             "/v1/chat/completions"),
            ("messages[0].content[0]", {**CHAT, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "a\u0000"}]}]}, "/v1/chat/completions"),
            ("messages[0].content[0]", {**CHAT, "messages": [{"role": "user", "content": [
                {"type": "text\u0000", "text": "a"}]}]}, "/v1/chat/completions"),
            ("messages[0].role", {**CHAT, "messages": [{"role": "user\u0000", "content": "a"}]},
             "/v1/chat/completions"),
            ("messages[0].name", {**CHAT, "messages": [{"role": "user", "content": "a", "name": "x\u0000"}]},
             "/v1/chat/completions"),
            ("messages[1].tool_calls[0].function.arguments",
             {**CHAT, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [call]},
                                   {"role": "tool", "tool_call_id": "c1", "content": "1"}]}, "/v1/chat/completions"),
            ("tools[0].function.name", {**CHAT, "tools": [{**tool, "function": {"name": "f\u0000"}}],
                                        "tool_choice": "none"}, "/v1/chat/completions"),
            ("tools[0].type", {**CHAT, "tools": [{**tool, "type": "function\u0000"}], "tool_choice": "none"},
             "/v1/chat/completions"),
            ("tool_choice", {**CHAT, "tools": [tool], "tool_choice": "none\u0000"}, "/v1/chat/completions"),
            ("prompt", {"prompt": "a\u0000b"}, "/v1/tokenize"),
            ("model", {"prompt": "a", "model": "stories260K\u0000"}, "/v1/tokenize"),
            ("model", {"tokens": [1], "model": "stories260K\u0000"}, "/v1/detokenize")):
        err = bad(server, body, path=path)
        assert err["param"] == field, (body, err)
        assert "NUL" in err["message"] or err["code"] == "unsupported", (body, err)  # suffix: none is supported
    err = bad(server, {**GOOD, "logit_bias": {"5\u0000": 1}}, code="invalid_json")
    assert "NUL byte in object key" in err["message"], err
    # a NUL in a field the server does not read is no harm
    st, text, _ = server.request("POST", "/v1/completions", {**GOOD, "unknown": "a\u0000b"}, AUTH)
    assert st == 200, text
    # a valid but unusual text is fine: emoji, CJK, combining marks, escaped supplementary planes
    for p in ("\U0001F600 \u65e5\u672c e\u0301", "\\ud83d\\ude00"):
        st, text, _ = server.request("POST", "/v1/completions", {**GOOD, "prompt": p}, AUTH)
        assert st == 200, text


# ------------------------------------------------------------ numbers and types

NUMERIC_BAD = {  # a field, out-of-range values of it
    "temperature": [-0.5, 2.5, 1e300],
    "top_p": [-0.1, 0, 1.5, 1e-300],  # 1e-300 is 0 as a float
    "presence_penalty": [-2.5, 3],
    "frequency_penalty": [-2.5, 3],
    "min_p": [-0.1, 1.5],
    "repetition_penalty": [-1, 0, 1e7, 1e-300],
    "max_tokens": [-1, 0, 2**31, 2**63 - 1, 1e300],
    "max_completion_tokens": [-1, 0, 2**40],
    "n": [-1, 0, 129, 10**9, 2**63 - 1],
    "best_of": [-1, 0, 129],
    "top_k": [-2, 2**40],
    "min_tokens": [-1, 2**40],
    "seed": [1e300],
    "logprobs": [-1, 21, 10**6],
}


def test_numbers_out_of_range(server):
    for field, values in NUMERIC_BAD.items():
        for v in values:
            bad(server, {**GOOD, field: v}, param=field)
    for v in (-1, 21):
        bad(server, {**CHAT, "logprobs": True, "top_logprobs": v}, path="/v1/chat/completions", param="top_logprobs")
    for v in (-101, 100.5, 1e300):
        bad(server, {**GOOD, "logit_bias": {"5": v}}, param="logit_bias")
    # min_tokens beyond max_tokens; best_of below n
    bad(server, {**GOOD, "max_tokens": 4, "min_tokens": 5}, param="min_tokens")
    bad(server, {**GOOD, "n": 3, "best_of": 2}, param="best_of")
    # valid edges are accepted (negative seeds, top_k -1, integral reals)
    for extra in ({"seed": -1}, {"seed": -(2**63)}, {"top_k": -1}, {"max_tokens": 4.0}, {"n": 2.0},
                  {"presence_penalty": -2}, {"temperature": 2}):
        st, text, _ = server.request("POST", "/v1/completions", {**GOOD, **extra}, AUTH)
        assert st == 200, (extra, text)


def test_non_finite_numbers(server):
    # JSON has no NaN or Infinity and 1e309 overflows a double: the body does not parse
    for field in list(NUMERIC_BAD) + ["logit_bias"]:
        for v in ("NaN", "-NaN", "Infinity", "-Infinity", "inf", "1e309", "-1e309", "99999999999999999999999"):
            value = f'{{"5": {v}}}' if field == "logit_bias" else v
            body = json.dumps(GOOD)[:-1] + f', "{field}": {value}}}'
            bad(server, raw_body=body, code="invalid_json")


WRONG_TYPES = {  # a field, values of the wrong type
    "model": [5, True, ["stories260K"], {"id": "stories260K"}],
    "prompt": [5, True, {}, {"text": "x"}, [1, "a"], ["a", [1]], [[1], "a"], [1.5], [[1.5]], [None], [True]],
    "temperature": ["hot", True, [], {}],
    "top_p": ["1", False, [0.5]],
    "presence_penalty": ["0"], "frequency_penalty": [[0]], "min_p": [{}], "repetition_penalty": ["1.1"],
    "max_tokens": ["8", 1.5, True, [8]],
    "max_completion_tokens": ["8", 2.5],
    "n": ["2", 1.5, False],
    "best_of": ["2", 2.5],
    "top_k": ["5", 0.5],
    "min_tokens": ["1", 1.5],
    "seed": ["1", 1.5, True],
    "logprobs": ["2", True, 1.5],
    "stream": ["yes", 1, [], {}],
    "stream_options": ["yes", 5, []],
    "echo": ["yes", 1],
    "stop": [5, True, {}, ["a", 5], [None], [["a"]]],
    "logit_bias": [[], "x", 5, True],
    "user": [5, {}, []],
    "ignore_eos": ["yes", 1],
    "skip_special_tokens": ["no"],
    "add_special_tokens": ["no", 0],
    "suffix": [5, []],
    "response_format": ["text", 5, [], {"type": 5}, {}, {"type": "xml"}],
}


def test_wrong_types_completions(server):
    for field, values in WRONG_TYPES.items():
        for v in values:
            bad(server, {**GOOD, field: v}, param=field)
    bad(server, {**GOOD, "stream_options": {"include_usage": "yes"}, "stream": True}, param="stream_options")


CHAT_WRONG = {
    "messages": ["hi", 5, {}, None],
    "logprobs": ["yes", 1],
    "top_logprobs": ["2"],
    "add_generation_prompt": ["yes", 1],
    "tools": [{}, "x", 5, [5], [{"type": "function"}], [{"type": "retrieval", "function": {"name": "f"}}]],
    "tool_choice": [5, True, [], "sometimes"],
    "functions": [{}, [{"name": "f"}]],
}


def test_wrong_types_chat(server):
    for field, values in CHAT_WRONG.items():
        for v in values:
            body = {**CHAT, field: v}
            if v is None:
                body.pop(field)
            bad(server, body, path="/v1/chat/completions", param=field)
    for field, v in (("temperature", "x"), ("n", "x"), ("max_tokens", "x"), ("stop", 5), ("model", 5),
                     ("seed", "x"), ("response_format", {"type": "json"})):
        bad(server, {**CHAT, field: v}, path="/v1/chat/completions", param=field)


def test_many_stop_strings(server):
    err = bad(server, {**GOOD, "stop": [f"s{i}" for i in range(10000)]}, param="stop")
    assert "16" in err["message"] and "10000" in err["message"]
    bad(server, {**GOOD, "stop": ["a"] * 17}, param="stop")
    bad(server, {**GOOD, "stop": ["a", ""]}, param="stop")
    st, _, _ = server.request("POST", "/v1/completions", {**GOOD, "stop": ["zzzq"] * 16}, AUTH)
    assert st == 200


def test_model_names_are_names(server):
    for name in ("../stories260K", "../../etc/passwd", "/etc/passwd", "stories260K/../stories260K",
                 "./stories260K", "stories260K/", str(server.__class__), "", " stories260K", "STORIES260K",
                 "/work/shared/models/stories260K", "..", "%2e%2e%2fetc", "x" * 5000):
        err = bad(server, {**GOOD, "model": name}, status=404, param="model", code="model_not_found")
        assert len(err["message"]) < 300  # a long name is not echoed whole
        bad(server, {**CHAT, "model": name}, path="/v1/chat/completions", status=404, param="model")
    for path in ("/v1/models/../../etc/passwd", "/v1/models/..%2F..%2Fetc%2Fpasswd", "/v1/models/%2e%2e",
                 "/v1/models//etc/passwd", "/v1/models/stories260K/../x"):
        st, body = raw(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
        assert st in (400, 404), (path, st, body[:200])
        assert b"root:" not in body


def test_huge_n_and_max_tokens(server):
    bad(server, {**GOOD, "n": 10**6}, param="n")
    bad(server, {**GOOD, "n": 128}, param="n")  # within OpenAI's range, beyond the executor's batch
    bad(server, {**GOOD, "n": 1, "best_of": 128}, param="best_of")
    err = bad(server, {**GOOD, "max_tokens": 10**9}, param="max_tokens")
    assert "512" in err["message"]
    bad(server, {**GOOD, "max_completion_tokens": 10**9}, param="max_completion_tokens")
    err = bad(server, {**GOOD, "max_tokens": 510}, param="prompt", code="context_length_exceeded")
    assert "512" in err["message"]
    bad(server, {**GOOD, "prompt": [1] * 100000}, param="prompt", code="context_length_exceeded")
    bad(server, {**GOOD, "prompt": ["x"] * 129}, param="prompt")
    bad(server, {**CHAT, "max_tokens": 10**9}, path="/v1/chat/completions", param="max_tokens")
    bad(server, {**CHAT, "n": 500}, path="/v1/chat/completions", param="n")


def test_logit_bias_keys(server):
    for key in ("abc", "1.5", "-1", " 5", "5 ", "+5", "0x10", "", "1e3", "99999999999999999999", "512", "100000",
                "５"):
        bad(server, {**GOOD, "logit_bias": {key: 1}}, param="logit_bias")
    bad(server, {**GOOD, "logit_bias": {str(i): 1 for i in range(301)}}, param="logit_bias")
    st, _, _ = server.request("POST", "/v1/completions", {**GOOD, "logit_bias": {"0": 5, "511": -100}}, AUTH)
    assert st == 200


def test_prompts_refused(server):
    for p in ("", [], [[]], [""] * 0, [-1], [512], [2**31], [[1, 2], []], [1, [2]]):
        body = {**GOOD, "prompt": p}
        if p == "":
            body["add_special_tokens"] = False
        bad(server, body, param="prompt")
    bad(server, {k: v for k, v in GOOD.items() if k != "prompt"}, param="prompt", code="missing_required_parameter")
    bad(server, {**GOOD, "suffix": "the end"}, param="suffix")


def test_chat_messages(server):
    def chat_bad(messages, param, code=None):
        body = {**CHAT, "messages": messages}
        if messages is None:
            body.pop("messages")
        return bad(server, body, path="/v1/chat/completions", param=param, code=code)

    chat_bad(None, "messages", "missing_required_parameter")
    chat_bad([], "messages")
    chat_bad([5], "messages[0]")
    chat_bad(["hi"], "messages[0]")
    chat_bad([{"content": "hi"}], "messages[0].role", "missing_required_parameter")
    chat_bad([{"role": None, "content": "hi"}], "messages[0].role", "missing_required_parameter")
    chat_bad([{"role": 5, "content": "hi"}], "messages[0].role")
    for role in ("hacker", "", "USER", "user ", "x" * 10000):
        err = chat_bad([{"role": "user", "content": "a"}, {"role": role, "content": "hi"}], "messages[1].role")
        assert len(err["message"]) < 300
    chat_bad([{"role": "user"}], "messages[0].content", "missing_required_parameter")
    chat_bad([{"role": "system", "content": None}], "messages[0].content", "missing_required_parameter")
    chat_bad([{"role": "user", "content": 5}], "messages[0].content")
    chat_bad([{"role": "user", "content": {"text": "hi"}}], "messages[0].content")
    chat_bad([{"role": "user", "content": [5]}], "messages[0].content[0]")
    chat_bad([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
             "messages[0].content[0]")
    chat_bad([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0]")
    chat_bad([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0]")
    # an assistant turn without content (tool calls) is accepted, as are text parts
    for msgs in ([{"role": "user", "content": "Hi"}, {"role": "assistant"}, {"role": "user", "content": "Again"}],
                 [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": []},
                  {"role": "user", "content": "Again"}],
                 [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}],
                 [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]):
        st, text, _ = server.request("POST", "/v1/chat/completions", {**CHAT, "messages": msgs}, AUTH)
        assert st == 200, (msgs, text)
    bad(server, {**CHAT, "echo": True}, path="/v1/chat/completions", param="echo")


def test_idle_slow_and_stalled_connections(server):
    """One event loop serves every connection, so none may hold it: 300 idle
    sockets, 100 that send half a request head and stall, and a stream of 16
    samples whose client never reads (its socket buffers fill) must not delay
    a normal request; the stalled stream is cancelled when it hangs up."""
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(300)]
    slow = []
    for _ in range(100):
        c = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        c.sendall(headers(extra="Content-Length: 50\r\n").encode()[:40])
        slow.append(c)
    stalled = []
    for _ in range(1):  # 16 sequences: half the KV cache, the request below fits beside them
        c = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # ~6 MB of chunks: more than the socket buffers hold (1.5 MB could fit in them)
        body = json.dumps({**GOOD, "max_tokens": 480, "ignore_eos": True, "stream": True, "n": 16,
                           "logprobs": 20}).encode()
        c.sendall(headers(extra=f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        stalled.append(c)
    try:
        time.sleep(1.0)  # the stalled streams fill their sockets
        t = time.time()
        st, text, _ = server.request("POST", "/v1/completions", GOOD, AUTH)
        elapsed = time.time() - t
        assert st == 200
        got, ref = json.loads(text), json.loads(server.reference[1])
        assert got["choices"] == ref["choices"]
        assert elapsed < 10, elapsed  # not a timing claim: a blocked loop would never answer
        assert server.metrics()["anvil_http_requests_in_flight"] >= 1  # the stalled streams are still there
    finally:
        for c in idle + slow + stalled:
            c.close()
    wait_idle(server)


def test_still_healthy(server):
    """Runs last (pytest keeps the file's order): everything above left no trace."""
    assert server.request("GET", "/health")[0] == 200
    st, text, _ = server.request("POST", "/v1/completions", GOOD, AUTH)
    assert st == 200
    got, ref = json.loads(text), json.loads(server.reference[1])
    assert got["choices"] == ref["choices"] and got["usage"] == ref["usage"]
    st, text, _ = server.request("POST", "/v1/chat/completions", CHAT, AUTH)
    assert st == 200 and json.loads(text)["choices"][0]["message"]["role"] == "assistant"
    m = wait_idle(server)
    assert m['anvil_kv_blocks{model="stories260K",state="free"}'] + \
        m['anvil_kv_blocks{model="stories260K",state="cached"}'] == m['anvil_kv_blocks_total{model="stories260K"}']
    assert m['anvil_http_requests_total{status="400"}'] > 300
    assert m.get('anvil_http_requests_total{status="500"}', 0) == 0
