"""HTTP limits, over raw sockets to a real uvicorn running the app as `serve` does: request
headers late (408) or too large (431), bodies too large (413, announced or chunked), each a
JSON error after which the connection is closed; and requests inside the limits untouched."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import Api
from tests.utils.server import LiveServer
from tracecat.app import create_app
from tracecat.http_limits import MAX_HEADER_BYTES, server_options

HEADER_TIMEOUT = 0.5  # the real one is 10 s; the mechanism is the same


@contextmanager
def limited_server(api: Api, **settings: object) -> Iterator[tuple[str, int]]:
    changed = api.settings.model_copy(update=settings)
    options = server_options(header_timeout=HEADER_TIMEOUT)
    server = LiveServer(create_app(changed, clock=api.clock), options=options).start()
    try:
        yield "127.0.0.1", server.port
    finally:
        server.stop()


def exchange(address: tuple[str, int], *parts: bytes, read_timeout: float = 15) -> bytes:
    """Send `parts`, then read until the server closes the connection."""
    with socket.create_connection(address, timeout=read_timeout) as sock:
        for part in parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server refused and closed: read what it said
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            # The server closed with some of our bytes unread (it refused them): the
            # kernel resets, after what it had already sent arrived, or before.
            if not answer:
                raise
        return answer


def status_and_detail(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)["detail"]


def request(path: str = "/healthz", *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_headers_not_finished_in_time_get_408_and_the_connection_closes(api: Api) -> None:
    with limited_server(api) as address:
        assert status_and_detail(exchange(address))[0] == 408  # connected, said nothing
        partial = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        status, detail = status_and_detail(exchange(address, partial))
        assert status == 408 and "headers" in detail


def test_a_kept_alive_connection_gets_the_deadline_again_after_each_response(api: Api) -> None:
    with limited_server(api) as address:
        answer = exchange(address, request(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        first, _, rest = answer.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200")
        assert b"HTTP/1.1 408" in rest


def test_headers_over_32_kib_get_431(api: Api) -> None:
    with limited_server(api) as address:
        half = "x" * (MAX_HEADER_BYTES // 2)
        status, detail = status_and_detail(
            exchange(address, request("/", f"A: {half}", f"B: {half}"))
        )
        assert status == 431 and "header" in detail
        # Just inside the limit: served.
        inside = "x" * (MAX_HEADER_BYTES - 200)
        answer = exchange(address, request("/healthz", f"A: {inside}", "Connection: close"))
        assert answer.startswith(b"HTTP/1.1 200")


def test_bodies_over_the_limit_get_413_before_they_are_read(api: Api) -> None:
    with limited_server(api, tracecat_max_body_bytes=1000) as address:
        announced = request("/sign-in", "Content-Length: 50000000", method="POST")
        status, detail = status_and_detail(exchange(address, announced))  # no body sent
        assert status == 413 and "TRACECAT_MAX_BODY_BYTES" in detail

        chunked = request("/sign-in", "Transfer-Encoding: chunked", method="POST")
        # In one write, so the server has it all when it refuses (nothing left to reset on).
        chunks = b"".join([b"200\r\n" + b"a" * 0x200 + b"\r\n"] * 3 + [b"0\r\n\r\n"])
        assert status_and_detail(exchange(address, chunked + chunks))[0] == 413

        body = b"api_key=tci_nope"
        small = request(
            "/sign-in",
            "Content-Type: application/x-www-form-urlencoded",
            f"Content-Length: {len(body)}",
            "Connection: close",
            method="POST",
        )
        assert exchange(address, small + body).startswith(b"HTTP/1.1 401")


@pytest.mark.parametrize(
    "path", ["/auth/integrations/microsoft/status", "/webhooks/microsoft/notifications"]
)
def test_the_body_limit_holds_on_every_route(api: Api, path: str) -> None:
    with limited_server(api, tracecat_max_body_bytes=100) as address:
        big = request(path, "Content-Length: 101", "Content-Type: application/json", method="POST")
        assert status_and_detail(exchange(address, big + b"{" * 101))[0] == 413
