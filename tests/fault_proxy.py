"""A fault-injecting HTTP proxy on 127.0.0.1, in front of a real ``mlflow server``.

It forwards every request; for the requests it is told to, it lets the server act and
then drops the reply (closes the connection), as a reply lost on the network or one
slower than the client's timeout does. Bounded: it serves at most ``limit`` requests and
stops by itself after ``seconds``.

Example::

    with FaultProxy("http://127.0.0.1:5000", drops={"/runs/create": 1}) as proxy:
        tuning.minimize(recipe, tracking_uri=proxy.url)
    assert proxy.dropped == [("POST", "/api/2.0/mlflow/runs/create")]
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class FaultProxy:
    def __init__(self, upstream: str, drops: dict[str, int], limit: int = 20_000, seconds: float = 900):
        parsed = urllib.parse.urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.drops = dict(drops)  # path ending -> how many replies of such requests to drop
        self.dropped: list[tuple[str, str]] = []
        self.served = 0
        self.limit = limit
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._timer = threading.Timer(seconds, self.stop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True).start()
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def admit(self) -> bool:
        with self._lock:
            self.served += 1
            return self.served <= self.limit

    def drop(self, method: str, path: str) -> bool:
        """Whether to drop the reply to this request (counting it down)."""
        with self._lock:
            for fragment, left in self.drops.items():
                if left > 0 and path.split("?")[0].endswith(fragment) and method != "GET":
                    self.drops[fragment] = left - 1
                    self.dropped.append((method, path))
                    return True
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _forward(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        if not proxy.admit():
            self.close_connection = True
            return
        body = self._body()
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        if proxy.drop(self.command, self.path):
            self.close_connection = True  # the server acted; its reply never arrives
            return
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward
