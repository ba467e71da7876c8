"""An HTTP proxy on 127.0.0.1 in front of moto that injects S3 faults: 503 SlowDown replies and
connections reset without a reply, at a given rate or for chosen requests; and KMS's answer for a
disabled key (moto 5.2 still decrypts with one), for the requests a rule picks."""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections.abc import Callable
from typing import NamedTuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class Request(NamedTuple):
    method: str
    path: str
    outcome: str  # ok | 503 | reset | 403 | kms-disabled
    range: str


class FaultProxy:
    def __init__(self, upstream: str, fault_rate: float = 0.0, seed: int = 1,
                 rule: Callable[[str, str, dict], str | None] | None = None,
                 body_rule: Callable[[str, str, bytes], str | None] | None = None):
        self.upstream = urlsplit(upstream)
        self.fault_rate = fault_rate
        self.rule = rule  # (method, path, headers) -> "503" | "reset" | "403" | None
        self.body_rule = body_rule  # (method, path, request body) -> the same; it may also hold the request
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding") == "chunked":
                    body = self._read_chunked()
                outcome = proxy.decide(self.command, self.path, dict(self.headers), body)
                with proxy.lock:
                    proxy.requests.append(Request(self.command, self.path, outcome or "ok",
                                                  self.headers.get("Range", "")))
                if outcome == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if outcome == "kms-disabled":  # AWS KMS's documented error for a disabled key
                    payload = (b'{"__type":"DisabledException","message":"The key used to protect this data key '
                               b'is disabled."}')
                    self.send_response(400)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if outcome in ("503", "403"):
                    code = 503 if outcome == "503" else 403
                    payload = SLOW_DOWN if code == 503 else SLOW_DOWN.replace(b"SlowDown", b"AccessDenied")
                    self.send_response(code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding",)}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD reply carries the object's length, not the (empty) body's.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _read_chunked(self) -> bytes:
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def decide(self, method: str, path: str, headers: dict, body: bytes = b"") -> str | None:
        if self.body_rule is not None:
            outcome = self.body_rule(method, path, body)
            if outcome:
                return outcome
        if self.rule is not None:
            outcome = self.rule(method, path, headers)
            if outcome:
                return outcome
        with self.lock:
            roll = self.rng.random()
        if roll < self.fault_rate / 2:
            return "503"
        if roll < self.fault_rate:
            return "reset"
        return None

    def faults(self) -> int:
        return sum(1 for r in self.requests if r.outcome != "ok")

    def fetched_bytes(self, s3, bucket: str) -> int:
        """The bytes of every object asked for through the proxy (each part of a ranged download counted)."""
        total = 0
        for r in self.requests:
            if r.method != "GET" or "?" in r.path or r.outcome != "ok":
                continue
            if r.range:
                start, end = r.range.removeprefix("bytes=").split("-")
                total += int(end) - int(start) + 1
            else:
                total += s3.head_object(Bucket=bucket, Key=r.path.split("/", 2)[2])["ContentLength"]
        return total

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
