"""anvil serve driven as Triton (KServe v2 and the generate extension):
tritonclient's HTTP client (live, ready, metadata, config, statistics, the
repository's load and unload, and every error's message readable), and
TensorRT-LLM's generate / generate_stream bodies over raw HTTP (tritonclient
has no generate call) and tritonclient's infer() with TensorRT-LLM's
tensors (binary and JSON): greedy text equal to /v1/completions, the stream's
pieces adding up to the whole, stop words, seeds, and each refused field
named in Triton's {"error": "text"}. A real server on stories260K."""
import http.client
import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from conftest import ANVIL, SHARED

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = SHARED / "models" / "stories260K"
ADMIN = "sk-admin"
PROMPT = "Once upon a time"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *extra):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [ANVIL, "serve", "--model", MODEL, "--port", str(self.port), "--threads", "1",
             "--shutdown-timeout", "2", *map(str, extra)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if self.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "server did not become healthy"
            time.sleep(0.1)

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
            c.request(method, path, body=data, headers=dict(headers or {}))
            r = c.getresponse()
            return r.status, r.read().decode(), r
        finally:
            c.close()

    def post(self, path, body):
        st, text, _ = self.request("POST", path, body)
        return st, json.loads(text) if text else None

    def events(self, path, body):
        st, text, r = self.request("POST", path, body)
        assert st == 200, text
        assert r.getheader("Content-Type") == "text/event-stream"
        assert r.getheader("X-Accel-Buffering") == "no"
        out = []
        for block in text.split("\n\n"):
            if block.strip():
                assert block.startswith("data: "), block
                out.append(json.loads(block[6:]))
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        return rc, self.proc.stderr.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    os.symlink(MODEL, repo / "tiny")
    s = Server("--model-repo", repo, "--no-load-all", "--admin-key", ADMIN)
    yield s
    rc, err = s.stop()
    assert rc == 0, err


def client(server, admin=True):
    headers = {"Authorization": f"Bearer {ADMIN}"} if admin else {}
    return httpclient.InferenceServerClient(f"127.0.0.1:{server.port}"), headers


def test_health_metadata_config(server):
    c, _ = client(server)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("stories260K") and c.is_model_ready("stories260K", "1")
    assert not c.is_model_ready("nope") and not c.is_model_ready("tiny")  # known, not loaded
    meta = c.get_server_metadata()
    assert meta["name"] == "anvil" and "generate" in meta["extensions"] and meta["version"]
    m = c.get_model_metadata("stories260K")
    assert m["name"] == "stories260K" and m["versions"] == ["1"] and m["platform"] == "anvil"
    names = [t["name"] for t in m["inputs"]]
    assert names[0] == "text_input" and {"max_tokens", "stream", "stop_words", "random_seed"} <= set(names)
    assert [t["name"] for t in m["outputs"]] == ["text_output"]
    assert all(t["datatype"] in ("BYTES", "INT32", "FP32", "BOOL", "UINT64") for t in m["inputs"])
    assert c.get_model_metadata("stories260K", "1") == m
    cfg = c.get_model_config("stories260K")
    assert cfg["name"] == "stories260K" and cfg["max_batch_size"] > 0
    assert cfg["model_transaction_policy"]["decoupled"] is True
    assert cfg["parameters"]["max_seq_len"]["string_value"] == "512"
    # the same through paths with a trailing slash
    assert server.request("GET", "/v2/models/stories260K/")[0] == 200
    assert server.request("GET", "/v2/health/ready/")[0] == 200


def test_errors_readable(server):
    c, h = client(server)
    calls = {
        "metadata": lambda: c.get_model_metadata("nope"),
        "version": lambda: c.get_model_metadata("stories260K", "2"),
        "config": lambda: c.get_model_config("nope"),
        "stats": lambda: c.get_inference_statistics("nope"),
        "load": lambda: c.load_model("nope", headers=h),
        "unload": lambda: c.unload_model(".hidden", headers=h),
        "no admin key": lambda: c.load_model("tiny"),
    }
    expect = {"metadata": "nope", "version": "version 1", "config": "nope", "stats": "nope", "load": "nope",
              "unload": "Invalid model name", "no admin key": "admin key"}
    for what, call in calls.items():
        with pytest.raises(InferenceServerException) as e:
            call()
        text = str(e.value)  # a TypeError here was the bug: the message was an object
        assert expect[what] in text and expect[what] in e.value.message(), (what, text)
        assert e.value.status() in ("400", "401", "404"), (what, e.value.status())
    # the raw shape: Triton's {"error": "text"}, anvil's code beside it
    st, body = server.post("/v2/models/ensemble/generate", {"text_input": "x"})
    assert st == 404 and isinstance(body["error"], str) and body["code"] == "model_not_found", body
    assert "'ensemble'" in body["error"] and "stories260K" in body["error"], body  # what there is instead
    st, text, r = server.request("GET", "/v2/models/stories260K/generate")
    assert st == 405 and r.getheader("Allow") == "POST" and isinstance(json.loads(text)["error"], str)
    st, text, _ = server.request("GET", "/v2/models/stories260K/nonsense")
    assert st == 404 and "/v2/models/stories260K/nonsense" in json.loads(text)["error"]


def test_repository_load_unload(server):
    c, h = client(server)
    assert {m["name"]: m["state"] for m in c.get_model_repository_index(headers=h)} == \
        {"stories260K": "READY", "tiny": "UNAVAILABLE"}
    c.load_model("tiny", headers=h)
    assert c.is_model_ready("tiny")
    st, body = server.post("/v2/models/tiny/generate", {"text_input": PROMPT, "max_tokens": 4})
    assert st == 200 and body["model_name"] == "tiny" and body["text_output"], body
    c.unload_model("tiny", headers=h)
    assert not c.is_model_ready("tiny")
    st, body = server.post("/v2/models/tiny/generate", {"text_input": PROMPT, "max_tokens": 4})
    assert st == 404 and "tiny" in body["error"], body


def test_generate_matches_completions(server):
    st, ref = server.post("/v1/completions", {"model": "stories260K", "prompt": PROMPT, "max_tokens": 24,
                                              "temperature": 0})
    assert st == 200
    text = ref["choices"][0]["text"]
    # TensorRT-LLM's defaults: no top_k, no top_p: greedy; the prompt excluded
    st, body = server.post("/v2/models/stories260K/generate", {"text_input": PROMPT, "max_tokens": 24,
                                                               "bad_words": "", "stop_words": ""})
    assert st == 200, body
    assert body["model_name"] == "stories260K" and body["model_version"] == "1"
    assert body["text_output"] == text and body["finish_reason"] == "length"
    # the version path, tensor-shaped values ([[24]], as tritonclient writes them), and an id echoed
    st, body2 = server.post("/v2/models/stories260K/versions/1/generate",
                            {"id": "req-7", "text_input": [PROMPT], "max_tokens": [[24]], "top_k": 0, "top_p": 0})
    assert st == 200 and body2["text_output"] == text and body2["id"] == "req-7", body2
    st, body3 = server.post("/v2/models/stories260K/generate", {"text_input": PROMPT, "max_tokens": 24,
                                                                "exclude_input_in_output": False})
    assert st == 200 and body3["text_output"] == PROMPT + text, body3
    # streamed: the pieces add up to the whole, the last says why it ended
    ev = server.events("/v2/models/stories260K/generate_stream",
                       {"text_input": PROMPT, "max_tokens": 24, "stream": True})
    assert len(ev) > 5 and all(e["model_name"] == "stories260K" for e in ev)
    assert "".join(e["text_output"] for e in ev) == text
    assert ev[-1]["finish_reason"] == "length" and all("finish_reason" not in e for e in ev[:-1])
    # generate_stream with "stream": false: one event with the whole text
    ev = server.events("/v2/models/stories260K/generate_stream",
                       {"text_input": PROMPT, "max_tokens": 24, "stream": False})
    assert len(ev) == 1 and ev[0]["text_output"] == text


def test_stop_words_and_seed(server):
    st, body = server.post("/v2/models/stories260K/generate", {"text_input": PROMPT, "max_tokens": 24})
    full = body["text_output"]
    word = full.split()[2]
    st, body = server.post("/v2/models/stories260K/generate",
                           {"text_input": PROMPT, "max_tokens": 24, "stop_words": [word, "zzzz"]})
    assert st == 200 and body["finish_reason"] == "stop", body
    assert body["text_output"] == full[:full.index(word)], (body, word)
    sampled = {"text_input": PROMPT, "max_tokens": 24, "top_k": 50, "temperature": 1.0, "random_seed": 7}
    a = server.post("/v2/models/stories260K/generate", sampled)[1]["text_output"]
    b = server.post("/v2/models/stories260K/generate", sampled)[1]["text_output"]
    others = {server.post("/v2/models/stories260K/generate", {**sampled, "random_seed": s})[1]["text_output"]
              for s in range(8, 12)}
    assert a == b and len(others | {a}) > 1


def test_generate_refusals(server):
    cases = [
        ({"max_tokens": 4}, 400, "text_input"),
        ({"text_input": 5}, 400, "text_input"),
        ({"text_input": PROMPT, "max_tokens": -1}, 400, "max_tokens"),
        ({"text_input": PROMPT, "max_tokens": 100000}, 400, "max_tokens"),
        ({"text_input": PROMPT, "random_seed": "x"}, 400, "random_seed"),
        ({"text_input": PROMPT, "min_length": 50, "max_tokens": 4}, 400, "min_length"),
        ({"text_input": PROMPT, "stop_words": 5}, 400, "stop_words"),
        ({"text_input": PROMPT, "bad_words": ["the"]}, 400, "bad_words"),
        ({"text_input": PROMPT, "beam_width": 2}, 400, "beam_width"),
        ({"text_input": PROMPT, "return_log_probs": True}, 400, "return_log_probs"),
        ({"text_input": PROMPT, "stream": True}, 400, "generate_stream"),
        ({"text_input": PROMPT, "exclude_input_in_output": "no"}, 400, "exclude_input_in_output"),
        ({"text_input": PROMPT, "temperature": 5}, 400, "temperature"),
    ]
    for body, status, word in cases:
        st, err = server.post("/v2/models/stories260K/generate", body)
        assert st == status and isinstance(err["error"], str) and word in err["error"], (body, st, err)
    st, text, _ = server.request("POST", "/v2/models/stories260K/generate", "{not json")
    assert st == 400 and "JSON" in json.loads(text)["error"]
    # the off values of refused fields are fine
    st, body = server.post("/v2/models/stories260K/generate",
                           {"text_input": PROMPT, "max_tokens": 2, "beam_width": 1, "return_log_probs": False,
                            "bad_words": [""], "end_id": 2, "pad_id": 2, "length_penalty": 1.0})
    assert st == 200, body


def test_statistics_count(server):
    c, _ = client(server)
    before = c.get_inference_statistics("stories260K")["model_stats"][0]
    server.post("/v2/models/stories260K/generate", {"text_input": PROMPT, "max_tokens": 2})
    after = c.get_inference_statistics("stories260K")["model_stats"][0]
    assert after["name"] == "stories260K" and after["version"] == "1"
    assert after["inference_count"] == before["inference_count"] + 1
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    every = c.get_inference_statistics()["model_stats"]
    assert [m["name"] for m in every] == ["stories260K"]


def test_api_key_guards_models_not_health():
    s = Server("--api-key", "sk-k")
    try:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{s.port}")
        assert c.is_server_live() and c.is_server_ready()
        with pytest.raises(InferenceServerException) as e:
            c.get_model_metadata("stories260K")
        assert "API key" in str(e.value)
        # the scheme is case-insensitive
        assert c.get_model_metadata("stories260K", headers={"Authorization": "bearer sk-k"})["name"] == "stories260K"
        st, _, _ = s.request("POST", "/v2/models/stories260K/generate", json.dumps({"text_input": "x"}),
                             {"Authorization": "BEARER  sk-k"})
        assert st == 200
    finally:
        rc, err = s.stop()
    assert rc == 0, err


def tensor(name, value, dtype, binary):
    t = httpclient.InferInput(name, list(value.shape), dtype)
    t.set_data_from_numpy(value, binary_data=binary)
    return t


def test_infer_tensors(server):
    """tritonclient.infer() as TensorRT-LLM's ensemble is called: [1, 1] tensors."""
    c, _ = client(server)
    st, ref = server.post("/v2/models/stories260K/generate", {"text_input": PROMPT, "max_tokens": 12})
    for binary in (True, False):
        inputs = [tensor("text_input", np.array([[PROMPT]], dtype=object), "BYTES", binary),
                  tensor("max_tokens", np.array([[12]], dtype=np.int32), "INT32", binary),
                  tensor("bad_words", np.array([[""]], dtype=object), "BYTES", binary),
                  tensor("stop_words", np.array([[""]], dtype=object), "BYTES", binary),
                  tensor("temperature", np.array([[0.7]], dtype=np.float32), "FP32", binary),
                  tensor("random_seed", np.array([[5]], dtype=np.uint64), "UINT64", binary)]
        out = [httpclient.InferRequestedOutput("text_output", binary_data=binary)]
        r = c.infer("stories260K", inputs, outputs=out, request_id="r-9")
        text = r.as_numpy("text_output")
        assert text.shape == (1, 1) and r.get_response()["id"] == "r-9"
        got = text[0, 0].decode() if binary else text[0, 0]  # binary BYTES come back as bytes
        assert got == ref["text_output"], (binary, got, ref)
    # a stop word list as a [1, 2] tensor, and a bool
    inputs = [tensor("text_input", np.array([[PROMPT]], dtype=object), "BYTES", True),
              tensor("max_tokens", np.array([[24]], dtype=np.int32), "INT32", True),
              tensor("stop_words", np.array([["little", "zzz"]], dtype=object), "BYTES", True),
              tensor("exclude_input_in_output", np.array([[False]], dtype=bool), "BOOL", True)]
    text = c.infer("stories260K", inputs).as_numpy("text_output")[0, 0].decode()
    assert text.startswith(PROMPT) and "little" not in text and ref["text_output"].startswith(text[len(PROMPT):])
    # refusals, readable through tritonclient
    cases = [
        ([tensor("max_tokens", np.array([[4]], dtype=np.int32), "INT32", True)], None, "text_input"),
        ([tensor("text_input", np.array([["x"]], dtype=object), "BYTES", True),
          tensor("max_tokens", np.array([[-4]], dtype=np.int32), "INT32", True)], None, "max_tokens"),
        ([tensor("text_input", np.array([["x"]], dtype=object), "BYTES", True)],
         [httpclient.InferRequestedOutput("cum_log_probs")], "cum_log_probs"),
        ([tensor("text_input", np.array([["x"]], dtype=object), "BYTES", True),
          tensor("stream", np.array([[True]], dtype=bool), "BOOL", True)], None, "generate_stream"),
    ]
    for inputs, outputs, word in cases:
        with pytest.raises(InferenceServerException) as e:
            c.infer("stories260K", inputs, outputs=outputs)
        assert word in str(e.value) and e.value.status() == "400", (word, str(e.value))
    with pytest.raises(InferenceServerException) as e:
        c.infer("ensemble", [tensor("text_input", np.array([["x"]], dtype=object), "BYTES", True)])
    assert "'ensemble'" in str(e.value) and "stories260K" in str(e.value)
    # a binary size beyond the body, and a header length beyond it
    head = json.dumps({"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1, 1],
                                   "parameters": {"binary_data_size": 50}}]})
    for raw, hl in ((head + "\x05\x00\x00\x00abc", len(head)), (head, len(head) + 10),
                    (head + "\xff\x00\x00\x00", len(head))):
        st, text, _ = server.request("POST", "/v2/models/stories260K/infer", raw,
                                     {"Inference-Header-Content-Length": str(hl)})
        assert st == 400 and isinstance(json.loads(text)["error"], str), (raw, text)
