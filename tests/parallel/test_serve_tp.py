"""anvil serve --tp 2 (and --pp 2) under mpirun (docs/parallel.md): rank 0
serves, rank 1 follows its steps (with --pp 2: runs the second stage). Greedy text of completions (streamed and not, several
at once) equals the one-rank server's; /health names the ranks; the
repository API is refused; and failures: a follower or rank 0 killed
mid-stream ends every rank within 10 s with mpirun's message naming it, and
under --enable-recovery (the job kept alive when a rank dies) rank 0's
collective times out, /health says 503 "failed" with the reason, and rank 0
ends every rank (with --pp: the stage chain's send or receive times out,
and the job's communicator reports it). stories260K, 127.0.0.1 only,
--threads 1."""
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

ANVIL = os.environ["ANVIL_BIN"]
MPIRUN = os.environ.get("ANVIL_MPIRUN", "mpirun")
SHARED = pathlib.Path(os.environ["ANVIL_SHARED_DIR"])
MODEL = SHARED / "models" / "stories260K"
PROMPTS = ["Once upon a time", "The little dog", "Tom and Sue went to the park", "One day"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def complete(port, prompt, max_tokens=24, stream=False):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    status, text = request(port, "POST", "/v1/completions", body)
    assert status == 200, text
    if not stream:
        return json.loads(text)["choices"][0]["text"]
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            out.append(chunk["choices"][0]["text"])
    return "".join(out)


class Server:
    """anvil serve, one rank or mpirun -np ranks: --tp ranks, or --pp pp
    stages of ranks / pp."""

    def __init__(self, ranks=1, mpi_args=(), extra=(), pp=1):
        self.port = free_port()
        self.err = tempfile.TemporaryFile(mode="w+")
        cmd = [ANVIL, "serve", "--model", str(MODEL), "--port", str(self.port), "--threads", "1", *extra]
        if ranks > 1:
            cmd = [MPIRUN, *mpi_args, "-np", str(ranks), *cmd, "--tp", str(ranks // pp)]
            if pp > 1:
                cmd += ["--pp", str(pp)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.err, text=True)
        deadline = time.time() + 60
        while True:
            assert self.proc.poll() is None, self.stderr()
            try:
                if request(self.port, "GET", "/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "the server did not become healthy: " + self.stderr()
            time.sleep(0.1)

    def stderr(self):
        self.err.seek(0)
        return self.err.read()

    def rank_pids(self):
        """{rank: pid} of mpirun's children (one node: mpirun starts them)."""
        kids = []
        for task in pathlib.Path(f"/proc/{self.proc.pid}/task").iterdir():
            kids += (task / "children").read_text().split()
        ranks = {}
        for pid in kids:
            env = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            for kv in env:
                if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                    ranks[int(kv.split(b"=")[1])] = int(pid)
        return ranks

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(30) is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def one_rank_texts():
    s = Server()
    try:
        return {p: complete(s.port, p) for p in PROMPTS}
    finally:
        s.stop()


def test_tp_serves_one_ranks_greedy_text(one_rank_texts):
    s = Server(ranks=2)
    try:
        status, text = request(s.port, "GET", "/health")
        assert status == 200 and json.loads(text) == {"status": "ok", "ranks": 2, "communicator": "mpi"}
        for p in PROMPTS:  # one at a time, plain and streamed
            assert complete(s.port, p) == one_rank_texts[p], p
            assert complete(s.port, p, stream=True) == one_rank_texts[p], p
        got, errs = {}, []

        def run(p, stream):
            try:
                got[(p, stream)] = complete(s.port, p, stream=stream)
            except Exception as e:  # noqa: BLE001 (reported below)
                errs.append(repr(e))

        threads = [threading.Thread(target=run, args=(p, st)) for p in PROMPTS for st in (False, True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errs, errs
        for (p, _), text in got.items():  # in-flight batching across the ranks
            assert text == one_rank_texts[p], p
        # refit, load and unload: the followers hold one runtime
        for verb in ("unload", "load", "refit"):
            status, text = request(s.port, "POST", f"/v2/repository/models/stories260K/{verb}", {})
            assert status == 501 and "tensor parallelism" in text, (verb, status, text)
    finally:
        s.stop()


def test_pp_serves_one_ranks_greedy_text(one_rank_texts):
    """Two stages: rank 0 the embedding and the first layers, rank 1 the
    others and the LM head, whose logits come back to rank 0."""
    s = Server(ranks=2, pp=2)
    try:
        status, text = request(s.port, "GET", "/health")
        assert status == 200 and json.loads(text) == {"status": "ok", "ranks": 2, "communicator": "mpi",
                                                      "pipeline_stages": 2}, text
        for p in PROMPTS:
            assert complete(s.port, p) == one_rank_texts[p], p
        got, errs = {}, []

        def run(p):
            try:
                got[p] = complete(s.port, p, stream=True)
            except Exception as e:  # noqa: BLE001 (reported below)
                errs.append(repr(e))

        threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errs, errs
        assert got == one_rank_texts
    finally:
        s.stop()


def stream_then_kill(s, victim):
    """A long stream; once tokens flow, SIGKILL to rank `victim`. Returns the
    seconds from the kill until mpirun ended, and its exit code."""
    pids = s.rank_pids()
    assert sorted(pids) == [0, 1], pids
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    c.request("POST", "/v1/completions", body=json.dumps(
        {"prompt": "Once upon a time", "max_tokens": 480, "temperature": 0, "stream": True, "ignore_eos": True}),
        headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    assert r.readline().startswith(b"data: ")  # mid-stream
    t0 = time.time()
    os.kill(pids[victim], signal.SIGKILL)
    return c, r, t0


@pytest.mark.parametrize("victim,pp", [(1, 1), (0, 1), (1, 2)])
def test_killed_rank_ends_every_rank(victim, pp):
    s = Server(ranks=2, pp=pp)
    try:
        c, _, t0 = stream_then_kill(s, victim)
        rc = s.wait(10)
        took = time.time() - t0
        c.close()
        assert rc is not None, f"mpirun still running 10 s after rank {victim} was killed"
        assert rc != 0
        assert took < 10
        err = s.stderr()
        assert f"process rank {victim} " in err and "exited on signal 9" in err, err
    finally:
        s.stop()


@pytest.mark.parametrize("pp", [1, 2])
def test_recovery_mode_health_reports_failed_rank(pp):
    """--enable-recovery keeps the job alive when a rank dies: rank 0's next
    collective (with --pp 2: its receive of the logits, or the send of its
    hidden state) gets no answer, /health says why, rank 0 ends every
    rank."""
    s = Server(ranks=2, mpi_args=("--enable-recovery",), extra=("--comm-timeout", "2"), pp=pp)
    try:
        c, r, _ = stream_then_kill(s, 1)
        body = r.read().decode()  # the stream ends with the step's error, in OpenAI's shape
        chunks = [json.loads(line[6:]) for line in body.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert "no answer within 2 s" in chunks[-1]["error"]["message"], body[-500:]
        status, text = request(s.port, "GET", "/health", timeout=5)
        assert status == 503, text
        h = json.loads(text)
        assert h["status"] == "failed" and h["ranks"] == 2
        assert "rank 0 of 2" in h["reason"] and "no answer within 2 s" in h["reason"], h
        c.close()
        # the deadline (2 s) and /health's grace (2 s), then MPI_Abort; the
        # bound is for a hang, with room for a loaded CI machine
        assert s.wait(30) is not None, "rank 0 did not end the job"
        err = s.stderr()
        assert "the ranks failed" in err and "ending every rank" in err, err
    finally:
        s.stop()
