"""anvil serve under the overlap scheduler (docs/executor.md): with --overlap
the executor plans and launches step n + 1 before it takes step n's tokens
(on the CPU a launch computes the step first, but the bookkeeping is the
GPU's: placeholders for the ids in flight, the slots of streams that just
ended dropped, steps with logprobs falling back to the plain path). Many
concurrent streaming clients (completions and chat, greedy and seeded,
some with logprobs, some ignoring the end token; test_server_load's mix)
must each equal, token for token, the same request sent alone and not
streamed to the same server; afterwards nothing runs and no KV block is
held. The server's log says the overlap scheduler is on."""
import os
import signal
import threading

from test_server_load import HEADERS, include_usage, parse_stream, reference, spec, stream_client
from test_server_openai import KEY, Server, wait_idle

N_CLIENTS = 16 if os.environ.get("ANVIL_TEST_SANITIZED") == "1" else 64


def stop_with_log(srv):
    """Stops the server; returns (exit code, what it wrote on stderr)."""
    srv.proc.send_signal(signal.SIGTERM)
    err = srv.proc.stderr.read()
    rc = srv.proc.wait(timeout=30)
    srv.proc.stderr.close()
    srv.log.close()
    return rc, err


def server_with_log(*extra):
    """A server whose log includes the executor's start line (ANVIL_LOG=info)."""
    old = os.environ.get("ANVIL_LOG")
    os.environ["ANVIL_LOG"] = "info"
    try:
        return Server("--api-key", KEY, *extra)
    finally:
        if old is None:
            del os.environ["ANVIL_LOG"]
        else:
            os.environ["ANVIL_LOG"] = old


def test_overlap_streams_equal_single_requests():
    srv = server_with_log("--overlap", "--max-batch-size", "16")
    stopped = False
    try:
        refs = {i: reference(srv, i) for i in range(N_CLIENTS)}
        results = [None] * N_CLIENTS
        start = threading.Barrier(N_CLIENTS)
        threads = [threading.Thread(target=stream_client, args=(srv.port, i, start, results))
                   for i in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not any(t.is_alive() for t in threads), "clients still running"
        errors = [(i, r) for i, r in enumerate(results) if not isinstance(r, tuple) or r[0] != 200]
        assert errors == [], errors[:5]
        for i, r in enumerate(results):
            got, _ = parse_stream(i, r[2])
            want = dict(refs[i])
            if not include_usage(i):
                want["usage"] = None
            assert got == want, (i, spec(i), got, want)
        m = wait_idle(srv, timeout=30)
        assert m['anvil_kv_blocks{model="stories260K",state="used"}'] == 0
        done = {k: v for k, v in m.items() if k.startswith("anvil_requests_total{")}
        assert sum(done.values()) == 2 * N_CLIENTS, done
        assert done['anvil_requests_total{model="stories260K",finish_reason="error"}'] == 0
        rc, err = stop_with_log(srv)
        stopped = True
        assert rc == 0, err[-2000:]
        assert "overlap scheduler" in err, err[-2000:]
    finally:
        if not stopped:
            srv.stop()


def test_no_overlap_flag_is_accepted():
    srv = server_with_log("--no-overlap")
    stopped = False
    try:
        path, body = spec(0)
        st, text, _ = srv.request("POST", path, body, HEADERS)
        assert st == 200, text
        rc, err = stop_with_log(srv)
        stopped = True
        assert rc == 0, err[-2000:]
        assert "overlap scheduler" not in err
    finally:
        if not stopped:
            srv.stop()
