"""MicrosoftTeamsClient against the Microsoft emulator, a real HTTPS server: paging, errors,
retries, sends that are never lost nor duplicated, message shapes, pacing and connections.

Failures are injected through the emulator's control API (POST /_emulator/faults, see
tracecat/emulator/control.py) and checked against what it stored and logged. Retries wait
through an injected sleep, so nothing here waits for a Retry-After. The pure transport
cases (dropped connections, scripted answers) are in test_transport.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.utils.connections import ConnectionWatch
from tests.utils.graph_sign_in import graph_token
from tests.utils.polling import eventually
from tests.utils.server import CONTROL_HEADERS
from tracecat.auth.integrations.microsoft import MicrosoftTeamsClient
from tracecat.config import Settings, get_settings
from tracecat.emulator.constants import DEMO_USERS
from tracecat.emulator.demo_data import JOINED_TEAMS, PRIVATE_TEAMS, channel_id_for, team_id_for
from tracecat.emulator.server import EmulatorServer
from tracecat.exceptions import BadRequestError, DeliveryUnknownError, GraphError
from tracecat.graph.pacing import InProcessPacer, RedisPacer
from tracecat.graph.resources import ChatMessage, Mention
from tracecat.graph.transport import GraphPool, RetryPolicy

# The emulator's demo tenant: every user who signs in is a member of the joined teams.
SECOPS_NAME, _, SECOPS_CHANNELS = JOINED_TEAMS[0]
SECOPS = team_id_for(SECOPS_NAME)
ALERTS = channel_id_for(SECOPS, "Alerts")
PRIVATE = team_id_for(PRIVATE_TEAMS[0][0])  # a team nobody joins
ME = "/v1.0/me"
JOINED = "/v1.0/me/joinedTeams"
SECOPS_CHANNELS_PATH = f"/v1.0/teams/{SECOPS}/channels"
# As the client must send it: ":" and "@" of the channel id percent-encoded.
ALERTS_MESSAGES = f"{SECOPS_CHANNELS_PATH}/{quote(ALERTS, safe='')}/messages"

# Pacing margin for tests whose sends race other tests for the CPU (see the burst test).
TEST_SAFETY = 0.75


def fast_pacer() -> InProcessPacer:
    return InProcessPacer(channel_per_second=1000, team_per_second=1000, tenant_per_second=1000)


@dataclass
class EmulatedTeams:
    """A signed-in demo user's token, and the emulator's control API to arrange and inspect."""

    emulator: EmulatorServer
    token: str
    settings: Settings
    control: httpx.Client
    # What the retry policies of `client()` would have slept, in order: they do not sleep.
    waits: list[float] = field(default_factory=list)

    def retry(self, **policy: Any) -> RetryPolicy:
        """Production retry rules, with full backoff (no jitter) and waits recorded, not slept."""

        async def sleep(seconds: float) -> None:
            self.waits.append(seconds)
            await asyncio.sleep(0)

        return RetryPolicy(**{"sleep": sleep, "jitter": lambda: 1.0, **policy})

    def client(self, **options: Any) -> MicrosoftTeamsClient:
        options.setdefault("pacer", fast_pacer())
        options.setdefault("retry", self.retry())
        return MicrosoftTeamsClient(self.token, settings=self.settings, **options)

    def tls(self) -> ssl.SSLContext:
        return self.settings.ssl_context()

    def fault(self, **rule: Any) -> None:
        self.control.post("/faults", json=rule).raise_for_status()

    def faults_left(self) -> list[dict[str, Any]]:
        return self.control.get("/faults").json()["faults"]

    def configure(self, **patch: Any) -> None:
        self.control.patch("/config", json=patch).raise_for_status()

    def advance_clock(self, seconds: float) -> None:
        self.control.post("/clock", json={"advance_seconds": seconds}).raise_for_status()

    def stored_messages(self) -> list[dict[str, Any]]:
        return self.control.get("/messages").json()["messages"]

    def stored_contents(self) -> list[str]:
        return [m["chat_message"]["body"]["content"] for m in self.stored_messages()]

    def stats(self) -> dict[str, Any]:
        return self.control.get("/stats").json()

    def statuses(self, method: str, path: str) -> list[int]:
        """The answers to every `method` request for exactly `path` (as sent), in order."""
        log = self.stats()["graph_request_log"]
        return [r["status"] for r in log if r["method"] == method and r["path"] == path]

    def calls(self, method: str, path: str) -> int:
        return len(self.statuses(method, path))


def sign_in(emulator: EmulatorServer, email: str) -> str:
    """The auth code flow through MSAL for the demo app's scopes."""
    return graph_token(emulator, email)


@pytest.fixture
def emulated(emulator: EmulatorServer) -> Iterator[EmulatedTeams]:
    with httpx.Client(
        base_url=f"{emulator.http_url}/_emulator", headers=CONTROL_HEADERS, timeout=10
    ) as control:
        control.post("/reset").raise_for_status()
        settings = Settings(
            microsoft_graph_url=emulator.graph_url, microsoft_ca_bundle=emulator.ca_bundle
        )
        teams = EmulatedTeams(emulator, sign_in(emulator, DEMO_USERS[0]), settings, control)
        # Off unless a test is about pacing: several sends to one channel within a second
        # would otherwise be refused (1 message per second per channel, as on Teams).
        teams.configure(throttling={"enabled": False})
        yield teams


# -- reads and paging ----------------------------------------------------------------------


@pytest.fixture
def settings_from_environment(
    emulated: EmulatedTeams, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("MICROSOFT_GRAPH_URL", emulated.emulator.graph_url)
    monkeypatch.setenv("MICROSOFT_CA_BUNDLE", str(emulated.emulator.ca_bundle))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("settings_from_environment")
async def test_seed_example_lists_every_team_across_pages(emulated: EmulatedTeams) -> None:
    emulated.configure(page_sizes={"joined_teams": 1})
    # The seed's documented example: nothing but a token, settings from the environment.
    teams = await MicrosoftTeamsClient(emulated.token).get_user_teams()
    assert sorted(t.display_name for t in teams) == sorted(name for name, _, _ in JOINED_TEAMS)
    assert emulated.statuses("GET", JOINED) == [200, 200, 200]  # one page per team
    assert teams[0].model_dump()["displayName"] == teams[0].display_name
    assert teams[0].model_dump()["tenantId"] == emulated.emulator.tenant_id


async def test_clients_share_one_keep_alive_pool(emulated: EmulatedTeams) -> None:
    connections = ConnectionWatch(emulated.emulator.https_port)
    async with GraphPool(emulated.settings) as pool:
        for _ in range(3):
            await emulated.client(http_client=pool.http).get_me()
        assert connections.opened() == 1  # one TCP connection served every client
        assert connections.open() == 1
    assert pool.is_closed and connections.open() == 0


async def test_context_manager_closes_only_its_own_pool(emulated: EmulatedTeams) -> None:
    connections = ConnectionWatch(emulated.emulator.https_port)
    async with GraphPool(emulated.settings) as pool:
        async with emulated.client(http_client=pool.http) as given:
            await given.get_me()
        assert not pool.is_closed  # a given pool is its creator's to close
        async with emulated.client() as own:
            assert (await own.get_me()).display_name
            assert (await own.get_me()).display_name
            assert connections.opened() == 2  # its own pool, kept alive for the block
            assert connections.open() == 2
        assert connections.open() == 1  # its own pool closed, the given one still open
        assert not pool.is_closed
    assert connections.open() == 0


async def test_without_pool_each_operation_opens_and_closes_its_connection(
    emulated: EmulatedTeams,
) -> None:
    emulated.configure(page_sizes={"joined_teams": 1})
    connections = ConnectionWatch(emulated.emulator.https_port)
    teams = emulated.client()
    assert len(await teams.get_user_teams()) == len(JOINED_TEAMS)
    assert emulated.calls("GET", JOINED) == 3
    assert connections.opened() == 1  # three pages over one connection
    assert connections.open() == 0  # closed when the operation ended
    await teams.get_me()
    assert connections.opened() == 2 and connections.open() == 0


async def test_channels_follow_next_link(emulated: EmulatedTeams) -> None:
    channels = await emulated.client().list_channels(SECOPS)  # two channels per page
    assert [c.display_name for c in channels] == list(SECOPS_CHANNELS)
    assert all(c.id.startswith("19:") for c in channels)
    assert channels[0].model_dump()["membershipType"] == "standard"
    assert emulated.calls("GET", SECOPS_CHANNELS_PATH) == 3


async def test_ids_are_percent_encoded_as_one_segment(emulated: EmulatedTeams) -> None:
    # Unencoded, "#" and "?" would cut the path short.
    with pytest.raises(GraphError) as caught:
        await emulated.client().list_channels("team#1?")
    assert (caught.value.status_code, caught.value.code) == (404, "NotFound")
    assert "team#1?" in caught.value.message  # the whole id reached Graph
    assert emulated.calls("GET", "/v1.0/teams/team%231%3F/channels") == 1
    await emulated.client().send_message(SECOPS, ALERTS, "hi")
    assert emulated.statuses("POST", ALERTS_MESSAGES) == [201]


async def test_paging_stops_at_the_cap(emulated: EmulatedTeams) -> None:
    emulated.fault(kind="endless_next_link", target=JOINED, count=1000)
    client = emulated.client(retry=emulated.retry(max_pages=5))
    with pytest.raises(GraphError) as caught:
        await client.get_user_teams()
    assert caught.value.code == "TooManyPages"
    assert emulated.calls("GET", JOINED) == 5


async def test_next_link_to_a_loopback_alias_is_followed(emulated: EmulatedTeams) -> None:
    # Reached as 127.0.0.1, the first page links on as localhost: the same host.
    alias = f"https://localhost:{emulated.emulator.https_port}"
    emulated.fault(kind="foreign_next_link", target=SECOPS_CHANNELS_PATH, next_link_base=alias)
    channels = await emulated.client().list_channels(SECOPS)
    assert [c.display_name for c in channels] == list(SECOPS_CHANNELS)
    assert emulated.faults_left() == []  # the first page did link to the alias
    assert emulated.calls("GET", SECOPS_CHANNELS_PATH) == 3


async def test_next_link_to_another_host_is_refused(emulated: EmulatedTeams) -> None:
    emulated.fault(kind="foreign_next_link", target=JOINED, next_link_base="https://evil.example")
    with pytest.raises(GraphError) as caught:
        await emulated.client().get_user_teams()
    assert caught.value.code == "UnexpectedNextLink"
    assert emulated.calls("GET", JOINED) == 1  # the token went nowhere else


async def test_list_messages_stops_at_top(emulated: EmulatedTeams) -> None:
    client = emulated.client()
    for i in range(5):
        await client.send_message(SECOPS, ALERTS, f"m{i}")
    messages = await client.list_channel_messages(SECOPS, ALERTS, top=3)
    assert [m.body.content for m in messages] == ["m4", "m3", "m2"]  # newest first, as Graph
    assert emulated.calls("GET", ALERTS_MESSAGES) == 1  # $top=3 asked for one page of three
    emulated.configure(page_sizes={"messages": 2})
    everything = await client.list_channel_messages(SECOPS, ALERTS)
    assert len(everything) == 5
    assert emulated.calls("GET", ALERTS_MESSAGES) == 1 + 3
    assert all(isinstance(m, ChatMessage) for m in everything)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("team_id", "status", "code"),
    [(PRIVATE, 403, "Forbidden"), (str(uuid.UUID(int=1)), 404, "NotFound")],
    ids=["not-a-member", "no-such-team"],
)
async def test_graph_errors_keep_status_code_and_request_id(
    emulated: EmulatedTeams, team_id: str, status: int, code: str
) -> None:
    with pytest.raises(GraphError) as caught:
        await emulated.client().list_channels(team_id)
    assert (caught.value.status_code, caught.value.code) == (status, code)
    assert caught.value.request_id is not None
    uuid.UUID(caught.value.request_id)  # Graph's request-id, for Microsoft's support
    assert emulated.waits == []  # not worth a retry


async def test_expired_token_is_a_401_graph_error(emulated: EmulatedTeams) -> None:
    emulated.advance_clock(3600)  # past the token's lifetime, by the emulator's clock
    with pytest.raises(GraphError) as caught:
        await emulated.client().get_me()
    assert caught.value.status_code == 401
    assert caught.value.code == "InvalidAuthenticationToken"
    assert emulated.calls("GET", ME) == 1  # the caller refreshes, not the client


async def test_non_json_error_body_still_explains(emulated: EmulatedTeams) -> None:
    emulated.fault(kind="non_json", target=ME, status=502, body="<html>Bad Gateway</html>")
    with pytest.raises(GraphError) as caught:
        await emulated.client().get_me()
    assert caught.value.status_code == 502
    assert "502" in caught.value.message and "Bad Gateway" in caught.value.message


async def test_success_without_a_json_body_is_a_clear_error(emulated: EmulatedTeams) -> None:
    emulated.fault(kind="non_json", target="graph", status=200, body="not json", count=2)
    client = emulated.client()
    with pytest.raises(GraphError) as read:
        await client.get_me()
    assert (read.value.status_code, read.value.code) == (502, "InvalidResponse")
    assert "not a JSON object" in read.value.message
    # After a 2xx the send did happen: said plainly, never resent.
    with pytest.raises(GraphError) as sent:
        await client.send_message(SECOPS, ALERTS, "hello")
    assert (sent.value.status_code, sent.value.code) == (502, "InvalidResponse")
    assert not isinstance(sent.value, DeliveryUnknownError)
    assert emulated.calls("POST", ALERTS_MESSAGES) == 1
    assert emulated.waits == []


async def test_token_never_shown(emulated: EmulatedTeams) -> None:
    client = emulated.client()
    assert emulated.token not in repr(client) and emulated.token not in str(client)
    emulated.fault(target=ME, status=400)
    with pytest.raises(GraphError) as caught:
        await client.get_me()
    assert caught.value.status_code == 400
    assert emulated.token not in str(caught.value)
    assert emulated.token not in repr(caught.value.detail)


# -- retries of reads ------------------------------------------------------------------------


async def test_reads_retry_throttling_and_outages(emulated: EmulatedTeams) -> None:
    emulated.fault(target=ME, status=429, retry_after=2)
    emulated.fault(target=ME, status=503)
    emulated.fault(target=ME, status=504)
    assert (await emulated.client().get_me()).display_name
    assert emulated.statuses("GET", ME) == [429, 503, 504, 200]
    # Graph's Retry-After when it gave one, else the backoff, doubled per failed attempt.
    assert emulated.waits == [2, 1.0, 2.0]


async def test_reads_give_up_with_the_last_status(emulated: EmulatedTeams) -> None:
    emulated.fault(target=ME, status=429, retry_after=0, count=10)
    client = emulated.client()
    with pytest.raises(GraphError) as caught:
        await client.get_me()
    assert caught.value.status_code == 429
    assert emulated.calls("GET", ME) == client.retry.max_attempts
    assert emulated.waits == [0] * (client.retry.max_attempts - 1)


async def test_reads_do_not_wait_past_the_budget(emulated: EmulatedTeams) -> None:
    emulated.fault(target=ME, status=429, retry_after=120, count=10)
    with pytest.raises(GraphError) as caught:
        await emulated.client().get_me()
    assert emulated.waits == []  # 120 s is past the 30 s budget: it gave up at once
    assert emulated.calls("GET", ME) == 1
    assert caught.value.status_code == 429
    assert caught.value.headers == {"Retry-After": "120"}  # passed on to our API's caller


# A client that gives up waiting for an answer after half a second, and the delay of a slow
# answer from the emulator: well past that, yet short, since each such test waits it out.
SHORT_READ = httpx.Timeout(10, read=0.5)
SLOW = 1.5


def answered_late(emulated: EmulatedTeams, method: str, path: str, count: int) -> list[int]:
    """The answers to `method path` once `count` of them were sent, the slow one included.

    The emulator logs a request when it answers, so a slow answer is logged after the
    client gave up on it; waiting for it also keeps it out of the next test's log."""

    def answers() -> list[int] | None:
        statuses = emulated.statuses(method, path)
        return statuses if len(statuses) >= count else None

    return eventually(answers, timeout=SLOW + 10)


async def test_read_timeout_is_retried(emulated: EmulatedTeams) -> None:
    # Graph answers the first GET late, after the client stopped waiting.
    emulated.fault(kind="slow", target=ME, delay_seconds=SLOW)
    async with httpx.AsyncClient(verify=emulated.tls(), timeout=SHORT_READ) as http:
        assert (await emulated.client(http_client=http).get_me()).display_name
    assert emulated.waits == [0.5]  # one retry, after the first backoff
    assert answered_late(emulated, "GET", ME, 2) == [200, 200]  # the retry, then the slow one


# -- sends: never lost, never duplicated ---------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_send_refused_with_retry_after_is_delivered_once(
    emulated: EmulatedTeams, status: int
) -> None:
    emulated.fault(target="/v1.0/teams", method="POST", status=status, retry_after=1)
    message = await emulated.client().send_message(SECOPS, ALERTS, "hello")
    assert message.body.content == "hello"
    assert emulated.statuses("POST", ALERTS_MESSAGES) == [status, 201]
    assert emulated.waits == [1]  # Graph's Retry-After
    assert emulated.stored_contents() == ["hello"]


async def test_send_504_is_delivery_unknown_and_not_resent(emulated: EmulatedTeams) -> None:
    emulated.fault(target="/v1.0/teams", method="POST", status=504, retry_after=0)
    with pytest.raises(DeliveryUnknownError) as caught:
        await emulated.client().send_message(SECOPS, ALERTS, "maybe")
    assert caught.value.status_code == 504
    assert emulated.statuses("POST", ALERTS_MESSAGES) == [504]
    assert emulated.waits == []
    # The fault is used up: a resend would have been stored.
    assert emulated.stored_messages() == []


async def test_send_503_without_retry_after_is_not_resent(emulated: EmulatedTeams) -> None:
    emulated.fault(target="/v1.0/teams", method="POST", status=503)
    with pytest.raises(GraphError) as caught:
        await emulated.client().send_message(SECOPS, ALERTS, "hello")
    assert caught.value.status_code == 503
    assert not isinstance(caught.value, DeliveryUnknownError)
    assert emulated.statuses("POST", ALERTS_MESSAGES) == [503]
    assert emulated.stored_messages() == []


async def test_send_timeout_is_delivery_unknown_and_not_resent(emulated: EmulatedTeams) -> None:
    # Graph is slow but does post the message: a resend would duplicate it.
    emulated.fault(kind="slow", target="/v1.0/teams", method="POST", delay_seconds=SLOW)
    async with httpx.AsyncClient(verify=emulated.tls(), timeout=SHORT_READ) as http:
        with pytest.raises(DeliveryUnknownError):
            await emulated.client(http_client=http).send_message(SECOPS, ALERTS, "hello")
    assert emulated.waits == []  # no second attempt
    assert answered_late(emulated, "POST", ALERTS_MESSAGES, 1) == [201]  # sent once
    assert emulated.stored_contents() == ["hello"]  # and posted once


class FailFirstConnect(httpx.AsyncBaseTransport):
    """A network whose first connection attempt fails before anything is sent.

    The one case here below HTTP: the emulator cannot refuse a connection, and a refused
    connection is what makes a resend of a POST safe."""

    def __init__(self, verify: ssl.SSLContext) -> None:
        self.inner = httpx.AsyncHTTPTransport(verify=verify)
        self.failed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.failed:
            self.failed = True
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_send_after_connect_error_is_retried(emulated: EmulatedTeams) -> None:
    async with httpx.AsyncClient(transport=FailFirstConnect(emulated.tls())) as http:
        await emulated.client(http_client=http).send_message(SECOPS, ALERTS, "hello")
    assert emulated.waits == [0.5]
    assert emulated.stored_contents() == ["hello"]


async def test_send_to_unreachable_graph_names_the_setting() -> None:
    teams = MicrosoftTeamsClient(
        "token",
        graph_url="http://127.0.0.1:9/v1.0",
        pacer=fast_pacer(),
        settings=Settings(),
        retry=RetryPolicy(backoff_base=0),
    )
    with pytest.raises(GraphError) as caught:
        await teams.send_message(SECOPS, ALERTS, "hello")
    assert caught.value.status_code == 503
    assert "MICROSOFT_GRAPH_URL" in caught.value.message


# -- message shapes --------------------------------------------------------------------------


def stored_message(emulated: EmulatedTeams, index: int = 0) -> dict[str, Any]:
    """The chatMessage as the emulator stored it from what the client posted."""
    return emulated.stored_messages()[index]["chat_message"]


async def test_mentions_are_tagged_in_an_html_body(emulated: EmulatedTeams) -> None:
    message = await emulated.client().send_message(
        SECOPS,
        ALERTS,
        "Alert <high> for",
        subject="Incident",
        mentions=[
            {"id": "aad-1", "display_name": "Alice"},
            Mention(id="aad-2", display_name="Bob"),
        ],
    )
    sent = stored_message(emulated)
    assert sent["subject"] == "Incident"
    assert sent["body"] == {
        "contentType": "html",
        "content": 'Alert &lt;high&gt; for <at id="0">Alice</at> <at id="1">Bob</at>',
    }
    bob = sent["mentions"][1]
    assert (bob["id"], bob["mentionText"]) == (1, "Bob")
    # What the client named; the emulator adds the tenant, as Graph does.
    named = {"id": "aad-2", "displayName": "Bob", "userIdentityType": "aadUser"}
    assert bob["mentioned"]["user"] == {**named, "tenantId": emulated.emulator.tenant_id}
    assert [m.mentioned.user.id for m in message.mentions] == ["aad-1", "aad-2"]


async def test_existing_mention_tags_are_kept(emulated: EmulatedTeams) -> None:
    await emulated.client().send_message(
        SECOPS,
        ALERTS,
        '<p>Hi <at id="0">Ali</at>, please look</p>',
        content_type="html",
        mentions=[{"id": "aad-1", "displayName": "Alice Smith"}],
    )
    sent = stored_message(emulated)
    assert sent["body"]["content"] == '<p>Hi <at id="0">Ali</at>, please look</p>'
    assert sent["mentions"][0]["mentionText"] == "Ali"


async def test_adaptive_card_is_an_attachment_referenced_by_the_body(
    emulated: EmulatedTeams,
) -> None:
    client = emulated.client()
    card = {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "x"}]}
    root = await client.send_message(SECOPS, ALERTS, "See card", adaptive_card=card)
    reply = await client.reply_to_message(SECOPS, ALERTS, root.id, "ack")
    sent = stored_message(emulated)
    (attachment,) = sent["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert json.loads(attachment["content"]) == card
    assert sent["body"]["contentType"] == "html"
    assert re.fullmatch(
        rf'See card<attachment id="{attachment["id"]}"></attachment>', sent["body"]["content"]
    )
    assert reply.reply_to_id == root.id
    stored_reply = emulated.stored_messages()[1]
    assert stored_reply["reply_to_id"] == root.id
    assert stored_reply["chat_message"]["body"] == {"contentType": "text", "content": "ack"}


async def test_bad_mention_is_rejected_before_sending(emulated: EmulatedTeams) -> None:
    with pytest.raises(BadRequestError) as caught:
        await emulated.client().send_message(SECOPS, ALERTS, "hi", mentions=[{"id": "aad-1"}])
    assert "display_name" in str(caught.value)
    assert emulated.calls("POST", ALERTS_MESSAGES) == 0


async def test_send_with_mention_and_card_round_trip(emulated: EmulatedTeams) -> None:
    teams = emulated.client()
    team = (await teams.get_user_teams())[0]
    channel = (await teams.list_channels(team.id))[0]
    card = {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "!"}]}
    sent = await teams.send_message(
        team.id,
        channel.id,
        "Escalating to",
        mentions=[{"id": "bob-object-id", "display_name": "Bob"}],
        adaptive_card=card,
    )
    assert sent.id and sent.body.content_type == "html"
    graph_message = stored_message(emulated)
    assert graph_message["mentions"][0]["mentioned"]["user"]["userIdentityType"] == "aadUser"
    (attachment,) = graph_message["attachments"]
    assert f'<attachment id="{attachment["id"]}"></attachment>' in graph_message["body"]["content"]
    assert '<at id="0">Bob</at>' in graph_message["body"]["content"]
    listed = await teams.list_channel_messages(team.id, channel.id, top=5)
    assert [m.id for m in listed] == [sent.id]
    assert listed[0].mentions[0].mention_text == "Bob"


# -- pacing, against the emulator's Teams limits -----------------------------------------------


async def test_burst_is_paced_under_teams_limits(emulated: EmulatedTeams) -> None:
    emulated.configure(throttling={"enabled": True})  # 1 message per second per channel
    # One attempt: a 429 would surface instead of being retried. One pool, as the service has:
    # a TLS handshake per send would add its jitter to the gaps. A wider margin than the
    # default 10%: on a loaded 2-core machine a request can spend over 0.1 s in transit, which
    # would move its arrival (the emulator's clock) into the previous second's window; the
    # default margin is measured under load by bench/send_burst.
    teams = emulated.client(
        pacer=InProcessPacer(safety_factor=TEST_SAFETY), retry=emulated.retry(max_attempts=1)
    )
    async with teams:
        await asyncio.gather(*(teams.send_message(SECOPS, ALERTS, f"m{i}") for i in range(3)))
    assert emulated.stats()["throttled"] == 0
    assert sorted(emulated.stored_contents()) == ["m0", "m1", "m2"]


async def test_unpaced_burst_would_be_throttled(emulated: EmulatedTeams) -> None:
    # The emulator really enforces the limit: without pacing the same burst hits 429s.
    emulated.configure(throttling={"enabled": True})
    teams = emulated.client(retry=emulated.retry(max_attempts=1))
    results = await asyncio.gather(
        *(teams.send_message(SECOPS, ALERTS, f"m{i}") for i in range(3)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, GraphError)]
    assert refused and all(r.status_code == 429 for r in refused)
    assert emulated.stats()["throttled"] == len(refused)
    assert len(emulated.stored_messages()) + len(refused) == 3


async def test_redis_pacer_is_shared_by_two_processes(emulated: EmulatedTeams) -> None:
    # One send each: unless their pacers share one budget, both go at once and one is refused.
    emulated.configure(throttling={"enabled": True})
    prefix = f"test:teams:{uuid.uuid4().hex}"
    clients = [
        emulated.client(
            pacer=RedisPacer("redis://127.0.0.1:6379/0", prefix=prefix, safety_factor=TEST_SAFETY),
            retry=emulated.retry(max_attempts=1),
        )
        for _ in range(2)
    ]
    async with clients[0], clients[1]:
        sends = (t.send_message(SECOPS, ALERTS, f"m{i}") for i, t in enumerate(clients))
        await asyncio.gather(*sends)
    assert emulated.stats()["throttled"] == 0
    assert len(emulated.stored_messages()) == 2
    for teams in clients:
        await teams.pacer.aclose()


# -- reading messages, replies and the delta -----------------------------------------------------


async def test_read_a_message_a_reply_and_its_replies(emulated: EmulatedTeams) -> None:
    emulated.configure(page_sizes={"replies": 2})
    client = emulated.client()
    root = await client.send_message(SECOPS, ALERTS, "root")
    replies = [await client.reply_to_message(SECOPS, ALERTS, root.id, f"r{i}") for i in range(3)]
    message = await client.get_message(SECOPS, ALERTS, root.id)
    assert (message.id, message.body.content, message.reply_to_id) == (root.id, "root", None)
    reply = await client.get_reply(SECOPS, ALERTS, root.id, replies[1].id)
    assert (reply.id, reply.body.content, reply.reply_to_id) == (replies[1].id, "r1", root.id)
    replies_path = f"{ALERTS_MESSAGES}/{root.id}/replies"
    listed = await client.list_replies(SECOPS, ALERTS, root.id)
    assert [r.body.content for r in listed] == ["r2", "r1", "r0"]  # newest first, as Graph
    assert emulated.calls("GET", replies_path) == 2  # two to a page
    newest = await client.list_replies(SECOPS, ALERTS, root.id, top=1)
    assert [r.id for r in newest] == [replies[2].id]
    assert emulated.calls("GET", replies_path) == 3
    with pytest.raises(GraphError) as missing:
        await client.get_reply(SECOPS, ALERTS, root.id, "1")
    assert missing.value.status_code == 404


async def test_message_reads_refuse_path_like_ids(emulated: EmulatedTeams) -> None:
    client = emulated.client()
    with pytest.raises(BadRequestError):
        await client.get_message(SECOPS, ALERTS, "..")
    with pytest.raises(BadRequestError):
        await client.get_reply(SECOPS, ALERTS, "1", "a/b")
    with pytest.raises(BadRequestError):
        await client.list_replies(SECOPS, ALERTS, "1", top=0)
    assert emulated.stats()["graph_request_log"] == []


async def test_delta_pages_then_its_link_gives_only_newer_root_messages(
    emulated: EmulatedTeams,
) -> None:
    emulated.configure(page_sizes={"messages": 2})
    client = emulated.client()
    first = [await client.send_message(SECOPS, ALERTS, f"m{i}") for i in range(5)]
    await client.reply_to_message(SECOPS, ALERTS, first[0].id, "a reply")
    delta_path = f"{ALERTS_MESSAGES}/delta"
    messages, link = await client.message_delta(SECOPS, ALERTS)
    assert [m.body.content for m in messages] == ["m0", "m1", "m2", "m3", "m4"]  # oldest first
    assert emulated.calls("GET", delta_path) == 3  # every page followed
    assert link.startswith(emulated.emulator.graph_url) and "$deltatoken=" in link

    unchanged, _ = await client.message_delta(SECOPS, ALERTS, link)
    assert unchanged == []
    await client.reply_to_message(SECOPS, ALERTS, first[1].id, "another reply")
    later = [await client.send_message(SECOPS, ALERTS, f"n{i}") for i in range(3)]
    newer, next_link = await client.message_delta(SECOPS, ALERTS, link)
    assert [m.id for m in newer] == [m.id for m in later]  # no replies, nothing seen before
    assert next_link != link
    assert (await client.message_delta(SECOPS, ALERTS, next_link))[0] == []


async def test_delta_link_outside_graph_is_refused_before_sending(
    emulated: EmulatedTeams,
) -> None:
    client = emulated.client()
    _, link = await client.message_delta(SECOPS, ALERTS)
    foreign = link.replace(emulated.emulator.graph_url, "https://evil.example/v1.0")
    for bad in (foreign, "/teams/x/channels/y/messages/delta?$deltatoken=1"):
        with pytest.raises(BadRequestError):
            await client.message_delta(SECOPS, ALERTS, bad)
    assert emulated.calls("GET", f"{ALERTS_MESSAGES}/delta") == 1


async def test_delta_next_link_to_another_host_is_refused(emulated: EmulatedTeams) -> None:
    delta_path = f"{ALERTS_MESSAGES}/delta"
    emulated.fault(
        kind="foreign_next_link", target=delta_path, next_link_base="https://evil.example"
    )
    with pytest.raises(GraphError) as caught:
        await emulated.client().message_delta(SECOPS, ALERTS)
    assert caught.value.code == "UnexpectedNextLink"
    assert emulated.calls("GET", delta_path) == 1
