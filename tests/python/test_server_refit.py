"""anvil serve: live refit through the repository API
(POST /v2/repository/models/{name}/refit {"weights": PATH}), issue 12's
must-show on a real server.

64 greedy streams of stories260K run; once every long stream is decoding and
the 8 short ones have finished, the model's weights are replaced by a
perturbed copy's (a folder of the model repository, named by a relative
path). Then:
- no request fails (every stream ends at its length, [DONE]);
- no step mixes old and new weights: every chunk says which weights computed
  it (system_fingerprint: null as loaded, "fp_anvil_w1" after the refit),
  and each stream's text is exactly what `anvil run --refit-weights PERTURBED
  --refit-after m` generates alone, m being the stream's tokens from the old
  weights (the first m tokens and their keys and values from the old
  weights, everything after from the new ones);
- streams that finished before the refit (the short ones, and a long one
  that ran ahead) are the original model's; at least 3 in 4 long streams
  switch mid-stream, and most of those part from both the original's and the
  perturbed model's own continuations;
- afterwards the model answers as the perturbed model does (no prefix of the
  old weights reused), /metrics counts the refit;
- errors: unknown model 404, model not loaded 409, a bad body 400
  invalid_json, weights that do not fit 400 refit_mismatch (naming what
  differs), no weights at the path 400 weights_not_found, a relative path
  without a repository 400, the admin key;
- the server exits 0 at SIGTERM (under the ASan build: without a leak report).

The streams run stories260K, not tinycode: what is tested (which weights
computed each step, across a commit between steps) does not depend on the
model's size, and its steps and loads (the references are 56 `anvil run`s)
cost a fiftieth of tinycode's (the test took 51 s in CI's plain build, 67 s
under ASan, with tinycode). The errors are tinycode's.
"""
import concurrent.futures
import http.client
import json
import os
import subprocess
import threading

from conftest import ANVIL, SHARED
from test_server_repo import ADMIN, KEY, Server

TINYCODE = SHARED / "models" / "tinycode"
STORIES = SHARED / "models" / "stories260K"
N_STREAMS, N_SHORT, LONG, SHORT, TRIGGER = 64, 8, 128, 12, 16
if os.environ.get("ANVIL_TEST_SANITIZED") == "1":
    # the same run, smaller, against a server built with a sanitizer (5-15x slower)
    N_STREAMS, N_SHORT, LONG, SHORT, TRIGGER = 16, 4, 40, 6, 8


def perturbed_copy(src, dst, mask=0x24):
    """src's files linked into dst, its model.safetensors rewritten with the
    two mantissa bits of `mask` flipped in every bf16 or f32 weight (up to
    about a quarter of a weight's value: greedy outputs part within a few
    tokens)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (dst / f.name).symlink_to(f)
    raw = (src / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes in ({"BF16"}, {"F32"}), dtypes
    data = raw[8 + n:]
    # the low byte of each little-endian bf16, the same bits of an f32 (its
    # third byte): mantissa bits
    word = bytes([mask, 0]) if dtypes == {"BF16"} else bytes([0, 0, mask, 0])
    flip = word * (len(data) // len(word))
    data = (int.from_bytes(data, "little") ^ int.from_bytes(flip, "little")).to_bytes(len(data), "little")
    (dst / "model.safetensors").write_bytes(raw[:8 + n] + data)


def prompts():
    cases = json.loads((SHARED / "golden" / "models" / "stories260K" / "cases.json").read_text())["cases"]
    out = []
    for j in range(N_STREAMS):
        ids = cases[j % len(cases)]["ids"][:28] + [200 + j, 300 + (j * 7) % 50]
        out.append((ids, SHORT if j % (N_STREAMS // N_SHORT) == 0 else LONG))
    return out


def complete(server, model, ids, n):
    st, body = server.request("POST", "/v1/completions", {
        "model": model, "prompt": ids, "max_tokens": n, "temperature": 0, "ignore_eos": True}, key=KEY)
    assert st == 200, body
    return body["choices"][0]["text"]


class Stream(threading.Thread):
    """One streamed completion with logprobs (a chunk for every token, even
    one whose text is not whole yet), its chunks' fingerprints noted."""

    def __init__(self, server, ids, n, progress):
        super().__init__()
        self.server, self.ids, self.n, self.progress = server, ids, n, progress
        self.status, self.text, self.fps, self.finish, self.done, self.error = None, "", [], None, False, None

    def run(self):
        c = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=120)
        try:
            body = {"model": "tc", "prompt": self.ids, "max_tokens": self.n, "temperature": 0, "ignore_eos": True,
                    "stream": True, "logprobs": 0}
            c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Authorization": f"Bearer {KEY}"})
            r = c.getresponse()
            self.status = r.status
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    self.done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    self.error = chunk["error"]
                    continue
                choice = chunk["choices"][0]
                self.text += choice["text"]
                k = len((choice.get("logprobs") or {}).get("tokens") or [])
                self.fps += [chunk["system_fingerprint"]] * k
                if choice["finish_reason"]:
                    self.finish = choice["finish_reason"]
                with self.progress:
                    self.progress.notify_all()
        except Exception as e:  # noqa: BLE001 (reported by the test)
            self.error = repr(e)
        finally:
            c.close()
            self.done = self.done or self.error is not None
            with self.progress:
                self.progress.notify_all()


def refit(server, name, body, key=ADMIN):
    return server.request("POST", f"/v2/repository/models/{name}/refit", body, key=key)


def run_alone(model, ids, n, new_weights=None, after=None):
    args = [ANVIL, "run", "--model", model, "--prompt-ids", ",".join(map(str, ids)), "-n", str(n), "-t", "0",
            "--ignore-eos", "--json", "--threads", "1"]
    if new_weights:
        args += ["--refit-weights", str(new_weights), "--refit-after", str(after)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["text"]


def test_refit_under_load(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "tc").symlink_to(STORIES)
    perturbed_copy(STORIES, repo / "tcpert")
    server = Server("--model-repo", repo, "--api-key", KEY, "--admin-key", ADMIN, "--max-batch-size", N_STREAMS,
                    "--threads", 2)
    try:
        ps = prompts()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            orig = list(pool.map(lambda p: complete(server, "tc", p[0], p[1]), ps))
            pert = list(pool.map(lambda p: complete(server, "tcpert", p[0], p[1]), ps))

        progress = threading.Condition()
        streams = [Stream(server, ids, n, progress) for ids, n in ps]
        for s in streams:
            s.start()
        with progress:
            ok = progress.wait_for(lambda: all(s.done if s.n == SHORT else len(s.fps) >= TRIGGER or s.done
                                               for s in streams), timeout=300)
        assert ok, "the streams did not get going"
        st, row = refit(server, "tc", {"weights": "tcpert"})  # relative: in the repository
        assert st == 200, row
        assert row["name"] == "tc" and row["state"] == "READY"
        for s in streams:
            s.join(300)
        # no request failed
        for j, s in enumerate(streams):
            assert s.status == 200 and s.error is None and s.done, (j, s.status, s.error)
            assert s.finish == "length" and len(s.fps) == s.n, (j, s.finish, len(s.fps))
        # which weights computed each token: the old ones, then the new ones
        teeth, n_long, switch, early = 0, 0, {}, 0
        for j, s in enumerate(streams):
            m = s.fps.count(None)
            assert s.fps == [None] * m + ["fp_anvil_w1"] * (s.n - m), (j, s.fps)
            if s.n == SHORT:
                assert m == SHORT and s.text == orig[j], j  # finished before the refit
                continue
            assert m >= TRIGGER, (j, m)
            if m == LONG:
                # it ran to its end before the refit committed (a stream whose
                # client started early, on a loaded machine, runs that far
                # ahead of the last one to reach TRIGGER): the original's
                assert s.text == orig[j], j
                early += 1
                continue
            switch[j] = m
        # each long stream: exactly the prompt run alone, switching weights after its own m tokens
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            hybrid = dict(zip(switch, pool.map(
                lambda j: run_alone(repo / "tc", ps[j][0], LONG, repo / "tcpert", switch[j]), switch)))
        for j, m in switch.items():
            assert streams[j].text == hybrid[j], f"stream {j} (switched after {m} tokens) is not the clean switch"
            n_long += 1
            teeth += streams[j].text != orig[j] and streams[j].text != pert[j]
        print(f"{teeth} of {n_long} long streams part from both models' own continuations; switch points "
              f"{sorted(set(switch.values()))}; {early} long streams ended before the refit")
        # the refit lands mid-stream for most long streams (it is asked for
        # once the slowest has TRIGGER tokens, far from LONG)
        assert 4 * n_long >= 3 * (N_STREAMS - N_SHORT), (n_long, early)
        assert 2 * teeth >= n_long

        # afterwards: the perturbed model's answers, prefixes of the old weights not reused
        for j in (1, 2, 3):
            assert complete(server, "tc", ps[j][0], LONG) == pert[j]
        m = server.metrics()
        assert m['anvil_model_refits_total{model="tc"}'] == 1
        assert m['anvil_model_refits_total{model="tcpert"}'] == 0
    finally:
        rc, err = server.stop()
    assert rc == 0, err
    assert "LeakSanitizer" not in err and "AddressSanitizer" not in err, err


def test_refit_errors(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "tc").symlink_to(TINYCODE)
    theta = repo / "tctheta"
    theta.mkdir()
    for f in TINYCODE.iterdir():
        if f.name != "config.json":
            (theta / f.name).symlink_to(f)
    cfg = json.loads((TINYCODE / "config.json").read_text())
    cfg["rope_parameters"]["rope_theta"] = 500000.0
    (theta / "config.json").write_text(json.dumps(cfg))
    server = Server("--model-repo", repo, "--api-key", KEY, "--admin-key", ADMIN, "--load-model", "tc")
    try:
        before = complete(server, "tc", [1, 403, 407], 16)
        st, body = refit(server, "nosuch", {"weights": "tc"})
        assert st == 404 and body["code"] == "model_not_found", body
        st, body = refit(server, "tctheta", {"weights": "tc"})  # known, not loaded
        assert st == 409 and body["code"] == "model_not_ready", body
        for raw in ("", "{", "[]", '{"weights": 3}', '{"weights": ""}', '{"other": "tc"}'):
            st, body = server.request("POST", "/v2/repository/models/tc/refit", key=ADMIN, raw=raw)
            assert st == 400 and body["code"] == "invalid_json", (raw, body)
        st, body = refit(server, "tc", {"weights": "tctheta"})
        assert st == 400 and body["code"] == "refit_mismatch", body
        assert "refit changes rope_theta 10000 -> 500000: build a new engine" in body["error"]
        st, body = refit(server, "tc", {"weights": "gone"})
        assert st == 400 and body["code"] == "weights_not_found", body
        st, body = refit(server, "tc", {"weights": str(SHARED / "models" / "tiny-qwen2")})  # absolute
        assert st == 400 and "the architecture LlamaForCausalLM -> Qwen2ForCausalLM" in body["error"]
        st, body = refit(server, "tc", {"weights": "tc"}, key=KEY)  # the API key is not the admin key
        assert st == 401, body
        st, body = server.request("GET", "/v2/repository/models/tc/refit", key=ADMIN)
        assert st == 405, body
        assert complete(server, "tc", [1, 403, 407], 16) == before  # nothing changed
        assert server.metrics()['anvil_model_refits_total{model="tc"}'] == 0
        st, body = refit(server, "tc", {"weights": str(TINYCODE)})  # the same weights again: fine
        assert st == 200, body
        assert complete(server, "tc", [1, 403, 407], 16) == before
    finally:
        rc, err = server.stop()
    assert rc == 0, err
    # without a repository, a relative path means nothing
    server = Server("--model", f"tc={TINYCODE}", "--admin-key", ADMIN)
    try:
        st, body = refit(server, "tc", {"weights": "tinycode"})
        assert st == 400 and "relative" in body["error"], body
        st, body = refit(server, "tc", {"weights": str(TINYCODE)})
        assert st == 200, body
    finally:
        rc, err = server.stop()
    assert rc == 0, err

