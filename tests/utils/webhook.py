"""A subscriber's webhook for Graph client tests: answers (or fails) the validation handshake.

A plain http.server on a loopback port in a daemon thread. `validation` says how to answer
Graph's handshake ("echo" is correct; "wrong" sends another token; "500" fails), and while
`answering` is cleared every answer is held until it is set again. Notifications are only
recorded (202).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Webhook:
    url: str = ""
    validation: str = "echo"
    # (path, validationToken) of each handshake, and the paths of other POSTs, in order.
    validations: list[tuple[str, str]] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)
    answering: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.answering.set()

    def validated_paths(self) -> list[str]:
        with self.lock:
            return [path for path, _ in self.validations]


def _handler(hook: Webhook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.answering.wait(timeout=30)
            token = query.get("validationToken")
            if token is None:
                with hook.lock:
                    hook.notifications.append(parts.path)
                return self._answer(202, b"")
            with hook.lock:
                hook.validations.append((parts.path, token))
            if hook.validation == "500":
                return self._answer(500, b"oops")
            answer = token if hook.validation == "echo" else "not-the-token"
            self._answer(200, answer.encode())

    return Handler


@contextmanager
def running_webhook() -> Iterator[Webhook]:
    hook = Webhook()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hook))
    server.daemon_threads = True
    hook.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.answering.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
