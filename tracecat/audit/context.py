"""Where a request came from, as the audit log records it."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from tracecat.clients import client_address


def request_address(request: HTTPConnection) -> str | None:
    """The client's address: the socket's peer, or behind a trusted proxy the address it
    forwarded (`clients.py`)."""
    return client_address(request, request.app.state.resources.settings.tracecat_trusted_proxies)
