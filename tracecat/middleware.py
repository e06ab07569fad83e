"""What every HTTP response of the app gets, in one pure ASGI middleware.

- Headers for browsers: every response `X-Content-Type-Options: nosniff`; HTML pages also a
  Content-Security-Policy (no inline script, no framing), `X-Frame-Options: DENY` and
  `Referrer-Policy: no-referrer` (the callback's URL holds an authorization code); the API's
  answers, which show account data, `Cache-Control: no-store` unless they say otherwise.
- One access-log line per request (`tracecat.access`): client, method, path without the
  query string (the callback's carries the authorization code), status, milliseconds. The same
  line whether or not the emulator runs in the process, since uvicorn's own access log is
  shared with, and switched off by, the in-process emulator server.
- Bodies over `TRACECAT_MAX_BODY_BYTES` are refused with 413 before more than that is read,
  whether announced by Content-Length or sent chunked (the app then sees a disconnect).
- The last word on anything unhandled: a JSON 500 naming no secret, logged without traceback
  (tracebacks can quote values).

Pure ASGI rather than Starlette's BaseHTTPMiddleware: it runs on every request, hot routes
included, and costs a few microseconds this way.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("tracecat.access")
logger = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_HTML_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    _NOSNIFF,
    (b"referrer-policy", b"no-referrer"),
]
_NO_STORE = (b"cache-control", b"no-store")
# Account data lives under these routes; the page, its assets and health checks may be cached.
_PRIVATE_PREFIX = "/auth/"


_TOO_LARGE_HEADERS = [(b"content-type", b"application/json"), (b"connection", b"close")]


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = 1024 * 1024) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._too_large = json.dumps(
            {"detail": f"request body over {max_body_bytes} bytes (TRACECAT_MAX_BODY_BYTES)"}
        ).encode()
        self._too_large_headers = [
            *_TOO_LARGE_HEADERS,
            (b"content-length", str(len(self._too_large)).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        private = scope["path"].startswith(_PRIVATE_PREFIX)
        received = 0
        refused = False  # we answered 413 ourselves; what the app sends after is dropped

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if refused and status:
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                content_type = next((v for k, v in headers if k == b"content-type"), b"")
                if content_type.startswith(b"text/html"):
                    headers.extend(_HTML_HEADERS)
                else:
                    headers.append(_NOSNIFF)
                if private and not any(k == b"cache-control" for k, _ in headers):
                    headers.append(_NO_STORE)
                message["headers"] = headers
            await send(message)

        async def refuse_body() -> None:
            nonlocal refused
            await send_with_headers(
                {"type": "http.response.start", "status": 413, "headers": self._too_large_headers}
            )
            await send_with_headers({"type": "http.response.body", "body": self._too_large})
            refused = True

        async def counted_receive() -> Message:
            nonlocal received
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes and not status:
                    await refuse_body()
                    return {"type": "http.disconnect"}
            return message

        try:
            length, chunked = _body_framing(scope)
            if length is not None and length > self.max_body_bytes:
                await refuse_body()
                return
            app_receive: Receive = counted_receive
            if length is None and chunked:
                # No length announced: read it all first (at most the limit), so a body
                # over it is refused even where the route would not have read it.
                buffered = await _read_all(counted_receive)
                if refused:
                    return
                app_receive = _replay(buffered, receive)
            await self.app(scope, app_receive, send_with_headers)
        except Exception as exc:
            if refused:  # the app tripped over the disconnect we gave it
                return
            logger.error("Unhandled %s", type(exc).__name__, exc_info=(type(exc), exc, None))
            if status:  # the answer has begun: only dropping the connection is left
                raise
            body = json.dumps({"detail": "internal error: see the server log"}).encode()
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(
                    '%s "%s %s" %d %.1fms',
                    client[0] if client else "-",
                    scope["method"],
                    scope["path"],
                    status or 500,
                    (time.perf_counter() - started) * 1000,
                )


def _body_framing(scope: Scope) -> tuple[int | None, bool]:
    """The announced Content-Length (None without one) and whether a Transfer-Encoding is
    sent, in one pass over the headers (this runs on every request)."""
    length, chunked = None, False
    for name, value in scope["headers"]:
        if name == b"content-length" and length is None:
            try:
                length = int(value)
            except ValueError:
                length = 0  # the server refuses a malformed length itself
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


async def _read_all(receive: Receive) -> list[Message]:
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """The body already read, then the connection's own events (a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
