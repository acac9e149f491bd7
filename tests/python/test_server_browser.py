"""anvil serve for browsers and proxies: a headless Chromium (Debian's
chromium-headless-shell) loads a page from another origin that streams a
chat completion from the server (a CORS preflight for its Authorization
header, then fetch and a stream reader) and shows the text; the test reads
the page's DOM and compares it with the same request made directly. Then
the headers by hand: CORS on and off, the preflight, X-Request-Id echoed,
X-Accel-Buffering on streams; `--host ::` serving IPv4 and IPv6; the Bearer
scheme in any case; a trailing slash; an unknown path's 404 naming it."""
import html
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import ANVIL, SHARED

MODEL = SHARED / "models" / "stories260K"
TEMPLATE = SHARED / "chat_templates" / "microsoft-Phi-3.5-mini-instruct.jinja"
KEY = "sk-browser"
CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")

# The page's <img src="/wait"> holds its load event, and so Chromium's
# --dump-dom, until the script has posted /done to the page's own server:
# the DOM is read once the stream is over.
PAGE = """<!doctype html><html><body><div id="out"></div><div id="status">running</div><div id="rid"></div>
<img src="/wait" alt="">
<script>
(async () => {
  const status = document.getElementById("status");
  try {
    const r = await fetch("http://127.0.0.1:API_PORT/v1/chat/completions", {
      method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer KEY", "X-Request-Id": "page-42"},
      body: JSON.stringify({model: "stories260K", messages: [{role: "user", content: "Tell me a story."}],
                            max_tokens: 24, temperature: 0, stream: true})});
    document.getElementById("rid").textContent = r.headers.get("X-Request-Id");
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "", chunks = 0;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf("\\n\\n")) >= 0) {
        const ev = buf.slice(0, i); buf = buf.slice(i + 2);
        if (!ev.startsWith("data: ") || ev === "data: [DONE]") continue;
        const d = JSON.parse(ev.slice(6)).choices[0].delta.content;
        if (d) { document.getElementById("out").textContent += d; chunks++; }
      }
    }
    status.textContent = "done " + chunks;
  } catch (e) {
    status.textContent = "error " + e;
  }
  await fetch("/done", {method: "POST"});
})();
</script></body></html>"""


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *extra, host="127.0.0.1"):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [ANVIL, "serve", "--model", MODEL, "--port", str(self.port), "--threads", "1", "--chat-template",
             TEMPLATE, "--shutdown-timeout", "2", "--host", host, *map(str, extra)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if self.request("GET", "/health", host="::1" if host == "::1" else "127.0.0.1")[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline
            time.sleep(0.1)

    def request(self, method, path, body=None, headers=None, host="127.0.0.1"):
        c = http.client.HTTPConnection(host, self.port, timeout=30)
        try:
            c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read().decode(), r
        finally:
            c.close()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.proc.stderr.read()


class PageServer:
    """The page's own origin: a static server on another port."""

    def __init__(self, html, port):
        page = html.encode()
        done = threading.Event()

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                done.set()
                self.send_response(204)
                self.end_headers()

            def do_GET(self):
                if self.path == "/wait":
                    done.wait(90)
                    done.clear()  # (the next load of the page waits again)
                    self.send_response(204)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def dump_dom(url):
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return {k: html.unescape(re.search(f'<div id="{k}">(.*?)</div>', r.stdout, re.S).group(1))
            for k in ("out", "status", "rid")}


def direct_text(server):
    st, text, _ = server.request("POST", "/v1/chat/completions",
                                 {"model": "stories260K", "messages": [{"role": "user", "content": "Tell me a story."}],
                                  "max_tokens": 24, "temperature": 0}, {"Authorization": f"Bearer {KEY}"})
    assert st == 200, text
    return json.loads(text)["choices"][0]["message"]["content"]


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium-headless-shell is not installed (scripts/setup.sh --browser; CI installs it)")
def test_browser_streams_from_another_origin():
    assert CHROMIUM, "CI must have chromium-headless-shell (.ci/run: scripts/setup.sh --browser)"
    page_port = free_port()
    server = Server("--api-key", KEY, "--allowed-origins", f"http://other.example, http://127.0.0.1:{page_port}")
    page = PageServer(PAGE.replace("KEY", KEY).replace("API_PORT", str(server.port)), page_port)
    try:
        want = direct_text(server)
        got = dump_dom(f"http://127.0.0.1:{page_port}/")
        assert got["status"].startswith("done"), got
        assert int(got["status"].split()[1]) > 3, got  # streamed: many pieces
        assert got["out"] == want and want, (got, want)
        assert got["rid"] == "page-42", got  # echoed and exposed to the page
        # the same page from an origin the server does not allow: the browser refuses the answer
        got = dump_dom(f"http://localhost:{page_port}/")
        assert got["status"].startswith("error") and got["out"] == "", got
    finally:
        page.close()
        server.stop()


def test_cors_headers():
    server = Server("--api-key", KEY, "--allowed-origins", "https://app.example, http://localhost:3000")
    try:
        pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type, x-request-id"}
        st, _, r = server.request("OPTIONS", "/v1/chat/completions", headers=pre)  # no key: preflights carry none
        assert st == 204
        assert r.getheader("Access-Control-Allow-Origin") == "https://app.example"
        assert "POST" in r.getheader("Access-Control-Allow-Methods")
        assert "authorization" in r.getheader("Access-Control-Allow-Headers").lower()
        assert int(r.getheader("Access-Control-Max-Age")) > 0 and r.getheader("Vary") == "Origin"
        st, text, r = server.request("OPTIONS", "/v1/chat/completions", headers={**pre, "Origin": "https://evil.example"})
        assert st == 403 and "--allowed-origins" in json.loads(text)["error"]["message"]
        assert r.getheader("Access-Control-Allow-Origin") is None
        st, _, r = server.request("OPTIONS", "/v1/models")  # a plain OPTIONS
        assert st == 204 and "GET" in r.getheader("Allow")
        auth = {"Authorization": f"Bearer {KEY}"}
        for origin, allowed in (("http://localhost:3000", True), ("http://localhost:3001", False), (None, False)):
            h = {**auth, **({"Origin": origin} if origin else {})}
            st, _, r = server.request("GET", "/v1/models", headers=h)
            assert st == 200 and r.getheader("Access-Control-Allow-Origin") == (origin if allowed else None)
            # errors carry them too, or the page could not read why
            st, _, r = server.request("GET", "/v1/models", headers={"Origin": origin} if origin else {})
            assert st == 401 and r.getheader("Access-Control-Allow-Origin") == (origin if allowed else None)
        # X-Request-Id echoed (also on a stream, which proxies must not buffer)
        st, _, r = server.request("GET", "/v1/models", headers={**auth, "X-Request-Id": "abc-123"})
        assert r.getheader("X-Request-Id") == "abc-123"
        assert server.request("GET", "/v1/models", headers=auth)[2].getheader("X-Request-Id") is None
        st, text, r = server.request("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2, "stream": True},
                                     {**auth, "X-Request-Id": "s-1"})
        assert st == 200 and text.endswith("data: [DONE]\n\n")
        assert r.getheader("X-Accel-Buffering") == "no" and r.getheader("Cache-Control") == "no-cache"
        assert r.getheader("X-Request-Id") == "s-1"
    finally:
        server.stop()
    # off by default; "*" allows any origin
    server = Server()
    try:
        st, _, r = server.request("GET", "/v1/models", headers={"Origin": "https://app.example"})
        assert st == 200 and r.getheader("Access-Control-Allow-Origin") is None
        st, _, _ = server.request("OPTIONS", "/v1/models", headers={"Origin": "https://app.example",
                                                                    "Access-Control-Request-Method": "GET"})
        assert st == 403
    finally:
        server.stop()
    server = Server("--allowed-origins", "*")
    try:
        st, _, r = server.request("GET", "/v1/models", headers={"Origin": "https://any.example"})
        assert st == 200 and r.getheader("Access-Control-Allow-Origin") == "https://any.example"
    finally:
        server.stop()


def test_paths_and_auth():
    server = Server("--api-key", KEY)
    try:
        body = {"prompt": "Once", "max_tokens": 2}
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            st, text, _ = server.request("POST", "/v1/completions", body, {"Authorization": f"{scheme} {KEY}"})
            assert st == 200, (scheme, text)
        for bad in (f"Bearer {KEY}x", f"Basic {KEY}", KEY, "Bearer"):
            assert server.request("POST", "/v1/completions", body, {"Authorization": bad})[0] == 401, bad
        auth = {"Authorization": f"Bearer {KEY}"}
        assert server.request("POST", "/v1/completions/", body, auth)[0] == 200
        assert server.request("GET", "/v1/models/", headers=auth)[0] == 200
        assert server.request("GET", "/health/")[0] == 200
        st, text, _ = server.request("POST", "/v1/complete", body, auth)
        err = json.loads(text)["error"]
        assert st == 404 and "POST /v1/complete" in err["message"] and "/v1/completions" in err["message"], err
        st, text, _ = server.request("GET", "/nowhere/" + "x" * 500)
        assert st == 404 and "GET /nowhere/xxx" in json.loads(text)["error"]["message"]
    finally:
        server.stop()


def test_ipv6_dual_stack():
    server = Server(host="::")
    try:
        for host in ("127.0.0.1", "::1"):
            st, text, _ = server.request("GET", "/health", host=host)
            assert st == 200, (host, text)
    finally:
        server.stop()
    server = Server(host="::1")
    try:
        assert server.request("GET", "/health", host="::1")[0] == 200
    finally:
        server.stop()
    r = subprocess.run([ANVIL, "serve", "--model", MODEL, "--host", "::zz", "--port", "0"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "IPv4 or IPv6 address" in r.stderr, r.stderr
