"""A subscriber's webhook for the tests: answers Graph's validation handshake, records the rest.

A plain http.server on a loopback port in a daemon thread, used by the emulator's and the
Graph client's tests alike. Each test tunes it through attributes: how to answer the handshake
(`validation`), which statuses to answer notifications with (`statuses`, consumed one per
POST, then `default_status`), how long to wait before answering (`delay_seconds`), and
`answering`: while cleared, every answer is held until it is set again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    path: str
    query: dict[str, str]
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str = ""
    # "echo" (correct), "wrong" (another token), "json" (right token, wrong type), "500"
    validation: str = "echo"
    statuses: list[int] = field(default_factory=list)
    default_status: int = 202
    delay_seconds: float = 0.0
    validations: list[Received] = field(default_factory=list)
    notifications: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Cleared by a test to hold every answer (handshakes included) until it is set again.
    answering: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.answering.set()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 5.0) -> None:
        """Poll until `predicate(notifications)` holds; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                seen = list(self.notifications)
            if predicate(seen):
                return
            assert time.monotonic() < deadline, f"timed out; received {[r.path for r in seen]}"
            time.sleep(0.02)

    def validated_paths(self) -> list[str]:
        """The paths of the handshakes, in order."""
        with self.lock:
            return [r.path for r in self.validations]

    def received(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.notifications if path is None or r.path == path]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the sender gave up waiting (or was killed): nobody to answer

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            length = int(self.headers.get("Content-Length") or 0)
            item = Received(
                parts.path,
                query,
                self.headers.get("Content-Type", ""),
                self.rfile.read(length),
                {k.lower(): v for k, v in self.headers.items()},
            )
            # Recorded on arrival, so a test sees a request whose answer it is holding.
            token = query.get("validationToken")
            with receiver.lock:
                (receiver.notifications if token is None else receiver.validations).append(item)
                status = receiver.default_status
                if token is None and receiver.statuses:
                    status = receiver.statuses.pop(0)
            receiver.answering.wait(timeout=30)
            if receiver.delay_seconds:
                time.sleep(receiver.delay_seconds)
            if token is not None:
                mode = receiver.validation
                if mode == "500":
                    return self._answer(500, b"oops", "text/plain")
                answer = token if mode != "wrong" else "not-the-token"
                kind = "application/json" if mode == "json" else "text/plain; charset=utf-8"
                return self._answer(200, answer.encode(), kind)
            self._answer(status, b"", "text/plain")

    return Handler


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll so shutdown() at the end of each test returns at once, not after 0.5 s.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.answering.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
