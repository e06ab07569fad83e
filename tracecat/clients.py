"""Who is calling: the client's address, for rate limits and the audit log.

The socket's peer, unless that peer is a proxy we trust (`TRACECAT_TRUSTED_PROXIES`): then
the nearest address in `X-Forwarded-For` that is not itself a trusted proxy. Anyone can send
the header, so it is believed only when a trusted proxy appended to it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.requests import HTTPConnection

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def request_address(connection: HTTPConnection) -> str | None:
    """The caller of a request to the app, by the app's TRACECAT_TRUSTED_PROXIES."""
    settings = connection.app.state.resources.settings
    return client_address(connection, settings.tracecat_trusted_proxies)


def client_address(connection: HTTPConnection, trusted: Sequence[Network]) -> str | None:
    peer = connection.client.host if connection.client else None
    if peer is None or not _trusted(peer, trusted):
        return peer
    hops = [
        hop.strip()
        for header in connection.headers.getlist("x-forwarded-for")
        for hop in header.split(",")
        if hop.strip()
    ]
    for hop in reversed(hops):  # each proxy appends the address it saw
        if not _is_address(hop):
            return peer  # a hop we cannot read: trust nothing before it
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in trusted)
