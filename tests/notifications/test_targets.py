"""SSRF-safe webhook targets: what is refused, what an allowed network permits, and that the
connection goes to the address that was checked (the resolver is injected)."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence

import httpx
import pytest
from standardwebhooks import Webhook

from tests.notifications.conftest import (
    Receiver,
    TlsReceiver,
    chat_message,
    enqueue,
    make_subscription,
)
from tests.utils.time_travel import MovableClock
from tracecat.db import Database
from tracecat.notifications.delivery import DeliveryPolicy, DeliveryWorker, Outcome
from tracecat.notifications.errors import TargetRefusedError
from tracecat.notifications.targets import ResolvedTarget, check_target, pinned_request

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


class FakeDns:
    """Answers from a table and counts the lookups."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        return self.answers[host]


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://[fe80::1]/hook",
        "https://[fc00::1]/hook",
        "https://0.0.0.0/hook",
        "https://[::]/hook",
        "https://224.0.0.1/hook",
        "https://240.0.0.1/hook",
        "https://100.64.0.1/hook",
        "https://localhost/hook",
    ],
)
async def test_private_and_special_addresses_are_refused(url: str) -> None:
    with pytest.raises(TargetRefusedError) as refused:
        await check_target(url, [])
    assert refused.value.status_code == 422


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", "https://"),
        ("file:///etc/passwd", "https://"),
        ("https://user:pass@hooks.example.com/x", "user name or password"),
        ("https://user@hooks.example.com/x", "user name or password"),
        ("https:///x", "no host"),
        ("https://hooks.example.com:99999/x", "not a valid URL"),
        ("http://hooks.example.com/x", "https://"),  # public, but plain http
    ],
)
async def test_malformed_or_unsafe_urls_are_refused(url: str, reason: str) -> None:
    dns = FakeDns({"hooks.example.com": ["93.184.216.34"]})
    with pytest.raises(TargetRefusedError, match=reason):
        await check_target(url, LOOPBACK, dns)


async def test_a_name_is_resolved_once_and_every_address_must_pass() -> None:
    dns = FakeDns(
        {
            "good.test": ["93.184.216.34", "2606:2800:220:1::248"],
            "mixed.test": ["93.184.216.34", "10.0.0.7"],
        }
    )
    target = await check_target("https://good.test:8443/x", [], dns)
    assert target == ResolvedTarget(
        "https://good.test:8443/x",
        "https",
        "good.test",
        8443,
        ipaddress.ip_address("93.184.216.34"),
    )
    assert dns.lookups == ["good.test"]
    with pytest.raises(TargetRefusedError, match="private"):
        await check_target("https://mixed.test/x", [], dns)


async def test_an_allowed_network_permits_private_addresses_and_http() -> None:
    networks = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]
    assert (await check_target("http://10.1.2.3:8080/x", networks)).port == 8080
    assert str((await check_target("http://[::1]/x", networks)).address) == "::1"
    # Judged by the IPv4 address it carries.
    await check_target("http://[::ffff:10.0.0.1]/x", networks)
    with pytest.raises(TargetRefusedError):
        await check_target("http://192.168.1.1/x", networks)


async def test_the_connection_goes_to_the_checked_address(
    database: Database, receiver: Receiver
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    dns = FakeDns({"hooks.example.test": ["127.0.0.1"]})
    subscription = await make_subscription(database, f"http://hooks.example.test:{port}/hook")
    clock = MovableClock()
    await enqueue(database, subscription, chat_message(), clock.now())
    async with httpx.AsyncClient(trust_env=False) as client:
        worker = DeliveryWorker(
            database, client, DeliveryPolicy((5.0,), LOOPBACK), clock=clock, resolve=dns
        )
        [result] = await worker.run_once()

    assert result.outcome == Outcome.DELIVERED
    assert dns.lookups == ["hooks.example.test"]  # once: the connection used its answer
    [request] = receiver.requests
    assert request.headers["Host"] == f"hooks.example.test:{port}"
    Webhook(subscription.secret).verify(request.body, request.headers)


async def test_https_connects_to_the_ip_but_checks_the_certificate_for_the_name(
    tls_receiver: TlsReceiver,
) -> None:
    port = int(tls_receiver.receiver.url.split(":")[2].split("/")[0])
    # The receiver's certificate names localhost and 127.0.0.1, not hooks.example.test.
    dns = FakeDns({"localhost": ["127.0.0.1"], "hooks.example.test": ["127.0.0.1"]})
    trusted = ssl.create_default_context(cafile=str(tls_receiver.ca_file))
    async with httpx.AsyncClient(verify=trusted, trust_env=False) as client:
        good = await check_target(f"https://localhost:{port}/hook", LOOPBACK, dns)
        request = pinned_request(client, good, content=b"{}", headers={})
        assert request.url.host == "127.0.0.1"
        assert request.headers["Host"] == f"localhost:{port}"
        assert request.extensions["sni_hostname"] == "localhost"
        assert (await client.send(request)).status_code == 200

        wrong = await check_target(f"https://hooks.example.test:{port}/hook", LOOPBACK, dns)
        with pytest.raises(httpx.ConnectError, match="certificate|hostname"):
            await client.send(pinned_request(client, wrong, content=b"{}", headers={}))
    assert [r.headers["Host"] for r in tls_receiver.receiver.requests] == [f"localhost:{port}"]


def test_pinned_ipv6_request_keeps_the_name() -> None:
    target = ResolvedTarget(
        "https://hooks.example.test/x?a=1",
        "https",
        "hooks.example.test",
        443,
        ipaddress.ip_address("2606:2800:220:1::248"),
    )
    request = pinned_request(httpx.AsyncClient(), target, content=b"x", headers={"a": "b"})
    assert str(request.url) == "https://[2606:2800:220:1::248]/x?a=1"
    assert (request.headers["Host"], request.headers["Connection"]) == (
        "hooks.example.test",
        "close",
    )


def test_a_non_ascii_name_is_sent_in_its_idna_form() -> None:
    target = ResolvedTarget(
        "https://bücher.example/x",
        "https",
        "bücher.example",
        443,
        ipaddress.ip_address("93.184.216.34"),
    )
    request = pinned_request(httpx.AsyncClient(), target, content=b"x", headers={})
    assert request.headers["Host"] == "xn--bcher-kva.example"
    assert request.extensions["sni_hostname"] == "xn--bcher-kva.example"
