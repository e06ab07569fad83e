"""Limits uvicorn does not have: a deadline for request headers and a cap on their size.

A client that has not finished its request headers within `HEADER_TIMEOUT` seconds of
connecting, or of the previous response on a kept-alive connection, gets 408 and is
disconnected (a slow-loris client otherwise holds a connection for minutes); header fields
over `MAX_HEADER_BYTES` in total, the request line aside, get 431. Both answers are JSON, like
every other error. Bodies are capped in `middleware.py`, where the app's settings are known.

Also the options every server of the app runs with (`serve` and the tests alike), so no
server trusts `X-Forwarded-For` on its own: `clients.py` decides that, from
TRACECAT_TRUSTED_PROXIES.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT = 10.0
MAX_HEADER_BYTES = 32 * 1024
# SIGTERM: stop accepting, let what is in flight finish for this long, then exit.
GRACEFUL_SHUTDOWN_SECONDS = 20


class _Refused(Exception):
    """Stops the parser after a refusal: nothing more of this connection is read."""


def _answer(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-content-type-options: nosniff\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


TIMEOUT_ANSWER = _answer(408, "Request Timeout", "request headers not received in time")
TOO_LARGE_ANSWER = _answer(
    431, "Request Header Fields Too Large", f"request headers over {MAX_HEADER_BYTES} bytes"
)


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the two limits above."""

    header_timeout = HEADER_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._header_deadline: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # our refusal stopped the parser; it has answered already
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(TOO_LARGE_ANSWER)
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._headers_arrived()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # a next request already has its headers
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._await_headers()

    def _await_headers(self) -> None:
        self._headers_arrived()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _headers_arrived(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.cycle is None or self.cycle.response_complete:  # no request is running
            self._refuse(TIMEOUT_ANSWER)

    def _refuse(self, answer: bytes) -> None:
        self._refused = True
        self._headers_arrived()
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()


def server_options(header_timeout: float = HEADER_TIMEOUT) -> dict[str, Any]:
    """uvicorn settings of every server of the app (a test may shorten the header deadline
    rather than wait ten seconds)."""
    protocol: type[LimitedHttpProtocol] = LimitedHttpProtocol
    if header_timeout != HEADER_TIMEOUT:
        protocol = type(
            "LimitedHttpProtocol", (LimitedHttpProtocol,), {"header_timeout": header_timeout}
        )  # a subclass with the shorter deadline, made at run time
    return {
        "http": protocol,
        "proxy_headers": False,  # only clients.py reads X-Forwarded-For, behind trusted proxies
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
    }
