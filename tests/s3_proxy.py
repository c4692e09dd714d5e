"""An HTTP proxy in front of the test S3 endpoint that fails requests on purpose.

Every request goes to the real endpoint (moto's server) unless the proxy decides to fail
it: a 500 with S3's error body, or a connection closed without an answer. Failures are
drawn from a seeded generator at `failure_rate`, or are total while `outage` is set, so
the client's real retry and error paths (botocore's and ours) run as against a flaky
network. With `cut_bodies=n`, the first n ranged GETs that get an answer announce their
whole length but send only half of it before the connection closes (a drop mid-transfer).
"""

from __future__ import annotations

import http.client
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERROR_BODY = b"<Error><Code>InternalError</Code><Message>proxy fault</Message></Error>"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FlakyProxy:
    def __init__(self, upstream: str, failure_rate: float = 0.0, seed: int = 0, cut_bodies: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.failure_rate = failure_rate
        self.cut_bodies = cut_bodies
        self.outage = False
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"forwarded": 0, "500": 0, "dropped": 0, "cut": 0}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._fault()
                if fault == "dropped":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault == "500":
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(ERROR_BODY)))
                    self.end_headers()
                    self.wfile.write(ERROR_BODY)
                    return
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "GET" and "Range" in self.headers and len(data) > 1 and proxy._cut():
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _fault(self) -> str | None:
        with self.lock:
            if self.outage:
                fault = "500"
            elif self.rng.random() < self.failure_rate:  # 500s and dropped connections in turn
                fault = ("500", "dropped")[(self.counts["500"] + self.counts["dropped"]) % 2]
            else:
                fault = None
            self.counts[fault or "forwarded"] += 1
            return fault

    def _cut(self) -> bool:
        with self.lock:
            if self.counts["cut"] < self.cut_bodies:
                self.counts["cut"] += 1
                return True
            return False

    def _forward(self, method: str, path: str, headers, body: bytes):
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            forwarded = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(method, path, body=body or None, headers=forwarded)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
