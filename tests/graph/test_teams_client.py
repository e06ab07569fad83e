"""MicrosoftTeamsClient against the Microsoft emulator, a real HTTPS server: paging, errors,
retries, sends that are never lost nor duplicated, message shapes, pacing and connections.

Failures are injected through the emulator's control API (POST /_emulator/faults, see
tracecat/emulator/control.py) and checked against what it stored and logged. Retries wait
through an injected sleep, so nothing here waits for a Retry-After. The pure transport
cases (dropped connections, scripted answers) are in test_transport.py.
"""

from __future__ import annotations

import ssl
import uuid

import httpx
import pytest

from tests.graph.emulated import (
    ALERTS,
    ALERTS_MESSAGES,
    JOINED,
    ME,
    PRIVATE,
    SECOPS,
    SECOPS_CHANNELS,
    SECOPS_CHANNELS_PATH,
    EmulatedTeams,
    fast_pacer,
)
from tests.utils.connections import ConnectionWatch
from tests.utils.polling import eventually
from tracecat.auth.integrations.microsoft import MicrosoftTeamsClient
from tracecat.config import Settings
from tracecat.emulator.demo_data import JOINED_TEAMS
from tracecat.exceptions import DeliveryUnknownError, GraphError
from tracecat.graph.resources import ChatMessage
from tracecat.graph.transport import GraphPool, RetryPolicy

# -- reads and paging ----------------------------------------------------------------------


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
