"""anvil serve's connection handling (docs/server.md, "Connection handling"):
the server never stops accepting (bursts of idle sockets opened and closed at
once, tiny connection limits), slow or idle clients cannot lock others out
(the request-head deadline, the per-client limit, a limit filled with idle
sockets), requests with ambiguous framing are refused with 400 and the
connection closed (no smuggled second request), and an empty API key stops
the start. Real servers on stories260K, on 127.0.0.1 only."""
import json
import os
import random
import resource
import select
import socket
import subprocess
import threading
import time

import pytest

from conftest import ANVIL
from test_server_openai import MODEL, Server

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
CLIENT = "127.0.0.3"  # an address of the loopback other than the fixtures' own
GOOD = {"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}


def connect(port, timeout=10, source=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_response(s, buf=b""):
    """One HTTP response with a Content-Length body (buf: bytes of it read
    already): (status, headers dict, body bytes, the bytes read after it).
    Raises socket.timeout when none comes, ConnectionError when the server
    closes first."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {buf[:200]!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", 0))
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split(" ")[1]), hdrs, rest[:n], rest[n:]


def closed_by_server(s, timeout):
    """True when the server closes s (EOF or reset) within timeout seconds;
    False when it is still open then. Bytes sent meanwhile are an error."""
    end = time.time() + timeout
    while True:
        left = end - time.time()
        if left <= 0:
            return False
        r, _, _ = select.select([s], [], [], left)
        if not r:
            return False
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            return True
        assert not data, data[:200]
        return True


def count_closed(socks, expect, timeout=10):
    """How many of socks the server closes: waits (up to timeout) until
    expect of them are closed, then half a second more for any other."""
    open_ = list(socks)
    n = 0
    end = time.time() + timeout
    while open_:
        left = (end if n < expect else min(end, settle)) - time.time()
        if left <= 0:
            break
        r, _, _ = select.select(open_, [], [], left)
        for s in r:
            assert closed_by_server(s, 0.01)
            open_.remove(s)
            n += 1
            if n == expect:
                settle = time.time() + 0.5
    return n


def get(port, path="/health", timeout=10, source=None):
    s = connect(port, timeout, source)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return read_response(s)
    finally:
        s.close()


def post_raw(port, path, body, timeout=30):
    s = connect(port, timeout)
    try:
        data = json.dumps(body).encode()
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        return read_response(s)
    finally:
        s.close()


def fd_room(want):
    """Raises the soft limit on open files towards want (the server inherits
    it); returns how many this process may open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


# ------------------------------------------------------------ an empty key


def test_empty_api_key_refused():
    """An empty key (flag or variable) stops the start with exit 2 and a
    message, before any model is loaded; a key given by flag wins over an
    empty variable."""
    env = {k: v for k, v in os.environ.items() if k not in ("ANVIL_API_KEY", "ANVIL_ADMIN_KEY")}
    cases = [
        (["--api-key", ""], {}, "--api-key is empty; give a key, or leave the flag out to serve without "
                                "authentication"),
        ([], {"ANVIL_API_KEY": ""}, "ANVIL_API_KEY is empty; give a key, or unset it"),
        (["--api-key", "sk-x", "--admin-key", ""], {}, "--admin-key is empty"),
        ([], {"ANVIL_ADMIN_KEY": ""}, "ANVIL_ADMIN_KEY is empty"),
    ]
    for args, extra, msg in cases:
        r = subprocess.run([ANVIL, "serve", "--model", MODEL, "--port", "0", *args], env={**env, **extra},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (args, extra, r.stderr)
        assert f"anvil serve: {msg}" in r.stderr, (args, extra, r.stderr)
        assert "listening" not in r.stderr
    # the flag replaces the empty variable: the start goes on (and stops at the bad host)
    r = subprocess.run([ANVIL, "serve", "--model", MODEL, "--host", "not-an-address", "--api-key", "sk-x"],
                       env={**env, "ANVIL_API_KEY": "", "ANVIL_ADMIN_KEY": ""}, capture_output=True, text=True,
                       timeout=60)
    assert "is empty" in r.stderr  # the admin variable is still empty
    r = subprocess.run([ANVIL, "serve", "--model", MODEL, "--host", "not-an-address", "--api-key", "sk-x"],
                       env={**env, "ANVIL_API_KEY": ""}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "IPv4 or IPv6 address" in r.stderr and "empty" not in r.stderr, r.stderr


# ------------------------------------------------------------ never deaf


@pytest.mark.parametrize("limit", [1, 4])
def test_tiny_connection_limits(limit):
    """At the limit MHD stops watching its listening socket; each close
    must bring it back: every one of these sequential requests is answered."""
    srv = Server("--max-connections", limit)
    try:
        for i in range(30):
            if i % 3 == 2:
                st, _, body, _ = post_raw(srv.port, "/v1/completions", GOOD)
                assert st == 200 and json.loads(body)["choices"], body
            else:
                st, _, body, _ = get(srv.port)
                assert st == 200, body
    finally:
        assert srv.stop() == 0


def burst_rounds(srv, rounds, rng, most):
    for r in range(rounds):
        n = min(most, int(2 ** rng.uniform(0, 10)))  # 1..1024, as many small bursts as large ones
        socks = []
        try:
            for i in range(n):
                s = connect(srv.port)
                if i % 7 == 3:
                    s.sendall(b"GET /health HTTP/1.1\r\nHo")  # half a head
                socks.append(s)
        finally:
            for s in socks:
                s.close()
        # A burst past the per-client limit can leave the server counting
        # sockets the client has closed but whose ends it has not read yet:
        # a connection made at once may then be refused (reset) as over the
        # limit. What must hold is that /health answers within a second.
        t = time.time()
        st = None
        while st is None:
            left = 1.0 - (time.time() - t)
            if left <= 0:
                pytest.fail(f"round {r}: no answer within 1 s after a burst of {n}")
            h = None
            try:
                h = connect(srv.port, timeout=left)
                h.sendall(HEALTH)
                st, _, _, _ = read_response(h)
            except socket.timeout:
                pytest.fail(f"round {r}: no answer within 1 s after a burst of {n}")
            except (ConnectionError, BrokenPipeError):
                time.sleep(0.01)  # refused as over the limit: the count catches up
            finally:
                if h is not None:
                    h.close()
        assert st == 200 and time.time() - t < 1.0, (r, n, st)


def test_bursts_of_idle_sockets():
    """Idle sockets opened and closed at once, in bursts of 1 to 1024:
    /health answers within a second after each. With the defaults (1024, a
    client 512), and with the limit (64) below most bursts, so that the
    server sits at its limit with the rest in the accept queue."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    most = min(1024, fd_room(4096) - 64)
    assert most >= 64, "too few file descriptors for the test"
    srv = Server()
    try:
        burst_rounds(srv, 300, rng, most)
    finally:
        assert srv.stop() == 0, seed
    srv = Server("--max-connections", 64, "--max-connections-per-client", 64)
    try:
        burst_rounds(srv, 200, rng, most)
    finally:
        assert srv.stop() == 0, seed


# ------------------------------------------------------------ slow and idle clients


def test_header_deadline():
    """--header-timeout 2: a slowloris trickling a byte every 0.3 s, a
    keep-alive connection idle after its response, and one trickling its
    second head are each closed between 2 and 2 + 2 s; a request whose
    body comes late, after a complete head, is not."""
    srv = Server("--header-timeout", 2)
    results = {}

    def slowloris():
        s = connect(srv.port)
        t = time.time()
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        try:
            while time.time() - t < 8:
                s.sendall(b"a")
                if closed_by_server(s, 0.3):
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        results["slowloris"] = time.time() - t
        s.close()

    def idle_keepalive(trickle):
        s = connect(srv.port)
        s.sendall(HEALTH)
        st, _, _, _ = read_response(s)
        assert st == 200
        t = time.time()
        try:
            while time.time() - t < 8:
                if trickle:
                    s.sendall(b"G" if time.time() - t < 0.5 else b"x")
                if closed_by_server(s, 0.3):
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        results["trickle" if trickle else "idle"] = time.time() - t
        s.close()

    def late_body():
        s = connect(srv.port)
        data = json.dumps(GOOD).encode()
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        time.sleep(3.5)  # past the head deadline: the head was complete
        s.sendall(data)
        st, _, body, _ = read_response(s)
        results["late_body"] = st
        s.close()

    threads = [threading.Thread(target=f, args=a) for f, a in
               [(slowloris, ()), (idle_keepalive, (False,)), (idle_keepalive, (True,)), (late_body, ())]]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        for k in ("slowloris", "idle", "trickle"):
            assert k in results, results
            assert 1.5 <= results[k] <= 2 + 2, results
        assert results.get("late_body") == 200, results
        assert get(srv.port)[0] == 200
    finally:
        assert srv.stop() == 0


def test_limit_full_of_idle_sockets():
    """The limit (4) filled with idle and half-sent sockets from a client
    allowed them all: a normal request is answered within the deadline
    (--header-timeout 2) + 2 s, and the idle ones are closed."""
    srv = Server("--max-connections", 4, "--max-connections-per-client", 4, "--header-timeout", 2)
    try:
        idle = [connect(srv.port) for _ in range(4)]
        idle[1].sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        idle[3].sendall(b"GET /hea")
        time.sleep(0.3)
        t = time.time()
        st, _, body, _ = post_raw(srv.port, "/v1/completions", GOOD, timeout=10)
        assert st == 200 and json.loads(body)["choices"], body
        assert time.time() - t < 2 + 2
        assert all(closed_by_server(s, 1) for s in idle)
        for s in idle:
            s.close()
    finally:
        assert srv.stop() == 0


def test_connections_per_client():
    """--max-connections-per-client 2: a third connection from one address
    (127.0.0.3: the fixture's own requests come from 127.0.0.1) is closed
    at once, unanswered; another address is served meanwhile, and the first
    again once it closes its two."""
    srv = Server("--max-connections", 8, "--max-connections-per-client", 2)
    try:
        socks = [connect(srv.port, source=CLIENT) for _ in range(3)]
        assert count_closed(socks, 1) == 1  # the one over the limit
        with pytest.raises((ConnectionError, socket.timeout)):
            get(srv.port, timeout=2, source=CLIENT)  # still at its limit
        assert get(srv.port)[0] == 200
        for s in socks:
            s.close()
        deadline = time.time() + 5
        while True:  # the server sees the closes at its next pass
            try:
                assert get(srv.port, timeout=2, source=CLIENT)[0] == 200
                break
            except (ConnectionError, socket.timeout):
                assert time.time() < deadline
    finally:
        assert srv.stop() == 0


def test_default_per_client_limit_is_half():
    """With --max-connections 8 and no per-client flag, one address gets 4."""
    srv = Server("--max-connections", 8)
    try:
        socks = [connect(srv.port, source=CLIENT) for _ in range(6)]
        assert count_closed(socks, 2) == 2
        assert get(srv.port)[0] == 200
        for s in socks:
            s.close()
    finally:
        assert srv.stop() == 0


def test_waiting_connections_are_not_cut():
    """--header-timeout 1: connections that wait on the server are never
    cut by it: an unload request suspended for seconds (it waits for a
    stream whose client does not read: that one is blocked writing) gets
    its answer once the stream's client hangs up."""
    srv = Server("--header-timeout", 1, "--unload-timeout", 60)
    socks = []
    try:
        stalled = connect(srv.port, timeout=30)
        socks.append(stalled)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        body = json.dumps({**GOOD, "max_tokens": 480, "ignore_eos": True, "stream": True, "n": 16,
                           "logprobs": 20}).encode()
        stalled.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                        .encode() + body)
        time.sleep(1.0)  # it fills its socket
        unload = connect(srv.port, timeout=60)
        socks.append(unload)
        unload.sendall(b"POST /v2/repository/models/stories260K/unload HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 0\r\n\r\n")
        # waiting 3.5 header deadlines: not cut, and no answer yet, so the
        # stream it waits for (blocked writing all that time) was not cut either
        assert not closed_by_server(unload, 3.5)
        stalled.close()  # the stream's write fails: its reference goes, the unload ends
        st, _, text, _ = read_response(unload)
        assert st == 200 and json.loads(text)["state"] == "UNAVAILABLE", text
        st, _, text, _ = post_raw(srv.port, "/v2/repository/models/stories260K/load", {})
        assert st == 200, text
    finally:
        for s in socks:
            s.close()
        assert srv.stop() == 0


# ------------------------------------------------------------ request framing

SMUGGLED = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"


def framed(headers, body, version="HTTP/1.1"):
    return (f"POST /v1/completions {version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{headers}\r\n").encode() + body


def chunked(data):
    return f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    assert s.stop() == 0


def test_ambiguous_framing_refused(server):
    """Each framing two readers could disagree on is a 400 in OpenAI's shape,
    then the connection closes: the bytes after the head (here a whole
    second request) are never served."""
    data = json.dumps(GOOD).encode()
    n = len(data)
    cases = {
        "two different Content-Length": framed(f"Content-Length: {n}\r\nContent-Length: {n + len(SMUGGLED)}\r\n",
                                               data + SMUGGLED),
        "two equal Content-Length": framed(f"Content-Length: {n}\r\nContent-Length: {n}\r\n", data + SMUGGLED),
        "Content-Length and chunked": framed(f"Content-Length: {n + 40}\r\nTransfer-Encoding: chunked\r\n",
                                             chunked(data) + SMUGGLED),
        "chunked and Content-Length": framed(f"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                                             chunked(data) + SMUGGLED),
        "chunked, identity": framed("Transfer-Encoding: chunked, identity\r\n", chunked(data) + SMUGGLED),
        "identity": framed("Transfer-Encoding: identity\r\n", data + SMUGGLED),
        "gzip, chunked": framed("Transfer-Encoding: gzip, chunked\r\n", chunked(data) + SMUGGLED),
        "two chunked": framed("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                              chunked(data) + SMUGGLED),
        "chunked and identity headers": framed("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                                               chunked(data) + SMUGGLED),
        "empty coding": framed("Transfer-Encoding: \r\n", chunked(data) + SMUGGLED),
        "space before the colon": framed(f"Content-Length: {n}\r\nTransfer-Encoding : chunked\r\n",
                                         data + SMUGGLED),
        "chunked in HTTP/1.0": framed("Transfer-Encoding: chunked\r\n", chunked(data) + SMUGGLED, "HTTP/1.0"),
        "no body, two lengths": b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"
                                + SMUGGLED,
    }
    for name, payload in cases.items():
        s = connect(server.port)
        try:
            s.sendall(payload)
            st, hdrs, body, after = read_response(s)
            assert st == 400, (name, st, body)
            err = json.loads(body)["error"]
            assert err["type"] == "invalid_request_error" and err["code"] == "invalid_framing", (name, err)
            assert hdrs.get("connection", "").lower() == "close", (name, hdrs)
            assert after == b"" and closed_by_server(s, 5), name  # closed, nothing more: no second response
        finally:
            s.close()
    assert get(server.port)[0] == 200


def test_plain_framing_accepted(server):
    """What stays valid: one Content-Length; Transfer-Encoding: chunked in
    any case; two requests pipelined on one connection, each answered."""
    data = json.dumps(GOOD).encode()
    for payload in (framed(f"Content-Length: {len(data)}\r\n", data),
                    framed("Transfer-Encoding: CHUNKED\r\n", chunked(data)),
                    framed("Transfer-Encoding: chunked\r\n", chunked(data))):
        s = connect(server.port)
        try:
            s.sendall(payload + HEALTH)
            st, _, body, after = read_response(s)
            assert st == 200 and json.loads(body)["choices"], body
            st, _, body, after = read_response(s, after)
            assert st == 200 and json.loads(body) == {"status": "ok"}, body
            assert after == b"" and not closed_by_server(s, 0.2)  # kept alive
        finally:
            s.close()


def test_host_header(server):
    """An HTTP/1.1 request has exactly one Host (RFC 9112): none or two is
    a 400 in OpenAI's shape, and the connection closes; HTTP/1.0 needs none."""
    for payload in (b"GET /health HTTP/1.1\r\n\r\n" + SMUGGLED,
                    b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n" + SMUGGLED):
        s = connect(server.port)
        try:
            s.sendall(payload)
            st, _, body, after = read_response(s)
            assert st == 400 and json.loads(body)["error"]["code"] == "invalid_framing", (payload, body)
            assert after == b"" and closed_by_server(s, 5), payload
        finally:
            s.close()
    s = connect(server.port)
    try:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert read_response(s)[0] == 200
    finally:
        s.close()
