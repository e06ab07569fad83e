"""Which URLs a webhook may be sent to, and sending to the address that was checked.

A webhook target is a URL a user typed, so without checks it is a way into our own network
(SSRF): `http://169.254.169.254/` (cloud metadata), `http://127.0.0.1:6379/`, a name that
resolves to 10.x. `check_target` refuses those unless the operator allowed the network
(`TRACECAT_WEBHOOK_ALLOWED_NETWORKS`), and resolves the host ONCE: the request then goes to
that checked address (`pinned_request`), so a name that resolves to a public address for the
check and to a private one for the connection (DNS rebinding) gains nothing.

Usage::

    target = await check_target(url, settings.tracecat_webhook_allowed_networks)
    request = pinned_request(client, target, content=body, headers=headers)
    response = await client.send(request)
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from tracecat.notifications.errors import TargetRefusedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses the host resolves to (as text); injectable for tests.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """The system resolver, off the event loop (getaddrinfo blocks)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise TargetRefusedError(f"webhook target: cannot resolve host {host!r}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class ResolvedTarget:
    """A URL that passed the checks and the one address to connect to for it."""

    url: str
    scheme: str
    host: str  # as written in the URL (no brackets), for Host and TLS
    port: int
    address: IPAddress


def _normalized(address: IPAddress) -> IPAddress:
    # ::ffff:127.0.0.1 reaches 127.0.0.1: judge the IPv4 address it carries.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public(address: IPAddress) -> bool:
    """Reachable on the internet: not private, loopback, link-local, multicast, reserved or
    unspecified (0.0.0.0, ::), IPv4-mapped IPv6 judged by its IPv4 address."""
    address = _normalized(address)
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def _allowed(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    candidates = {address, _normalized(address)}
    return any(
        a in network for a in candidates for network in networks if a.version == network.version
    )


def check_url(url: str) -> tuple[str, str, int]:
    """The shape checks that need no DNS: (scheme, host, port), or TargetRefusedError."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise TargetRefusedError("webhook target: not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise TargetRefusedError("webhook target: use an https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        # Credentials in the URL would be logged and shown; and `user@host` misleads readers.
        raise TargetRefusedError("webhook target: a user name or password in the URL is refused")
    host = parts.hostname
    if not host:
        raise TargetRefusedError("webhook target: the URL has no host")
    return scheme, host, port or (443 if scheme == "https" else 80)


async def check_target(
    url: str,
    allowed_networks: Sequence[IPNetwork] = (),
    resolve: Resolver = resolve_host,
) -> ResolvedTarget:
    """Check `url` and resolve its host once; raise TargetRefusedError (422) if refused.

    Every address the host resolves to must be public or inside `allowed_networks` (one bad
    address refuses the lot: which one a connection would use is not ours to pick). Plain
    http is accepted only when the address is inside an allowed network.
    """
    scheme, host, port = check_url(url)
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        resolved = await resolve(host, port)
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolved]
        except ValueError:
            raise TargetRefusedError(f"webhook target: {host!r} resolved to no address") from None
    if not addresses:
        raise TargetRefusedError(f"webhook target: {host!r} resolved to no address")
    for address in addresses:
        if not is_public(address) and not _allowed(address, allowed_networks):
            raise TargetRefusedError(
                f"webhook target: {host!r} is a private, loopback or reserved address "
                "(allow its network in TRACECAT_WEBHOOK_ALLOWED_NETWORKS if intended)"
            )
    if scheme == "http" and not all(_allowed(a, allowed_networks) for a in addresses):
        raise TargetRefusedError("webhook target: use an https:// URL")
    return ResolvedTarget(url.strip(), scheme, host, port, addresses[0])


def pinned_request(
    client: httpx.AsyncClient,
    target: ResolvedTarget,
    *,
    content: bytes,
    headers: dict[str, str],
    timeout: httpx.Timeout | float | None = None,
) -> httpx.Request:
    """A POST to `target.url` that connects to `target.address`, not to a fresh lookup.

    The URL carries the IP; the Host header keeps the name (virtual hosts, signatures), and
    for https the TLS server name and certificate check use the name too (`sni_hostname`).
    A pooled TLS connection is keyed by IP, so it could be reused for another name on that IP
    without its certificate being checked: https requests therefore close their connection.
    """
    original = httpx.URL(target.url)
    url = original.copy_with(host=str(target.address))
    default_port = 443 if target.scheme == "https" else 80
    # The ASCII (IDNA) form: what DNS, TLS and the Host header use for a non-ASCII name.
    name = original.raw_host.decode("ascii")
    host_header = name if ":" not in name else f"[{name}]"
    if target.port != default_port:
        host_header += f":{target.port}"
    request_headers = {**headers, "Host": host_header}
    extensions: dict[str, Any] = {}
    if target.scheme == "https":
        extensions["sni_hostname"] = name
        request_headers["Connection"] = "close"
    request = client.build_request(
        "POST",
        url,
        content=content,
        headers=request_headers,
        timeout=timeout if timeout is not None else client.timeout,
    )
    request.extensions.update(extensions)
    return request
