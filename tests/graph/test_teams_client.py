"""MicrosoftTeamsClient against real HTTP servers: a small Graph stand-in written from
Microsoft's docs (paging, error bodies, throttling, faults), and the Microsoft emulator.

The stand-in stays until the emulator can inject every fault used here (timeouts, dropped
connections, non-JSON bodies)."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import msal
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.utils.server import CONTROL_HEADERS, LiveServer
from tracecat.auth.integrations.microsoft import MicrosoftTeamsClient
from tracecat.config import Settings
from tracecat.emulator.constants import DEMO_APP_SCOPES, DEMO_USERS, GRAPH_RESOURCE
from tracecat.emulator.demo_data import JOINED_TEAMS
from tracecat.emulator.server import EmulatorServer
from tracecat.exceptions import BadRequestError, DeliveryUnknownError, GraphError
from tracecat.graph.pacing import InProcessPacer, RedisPacer
from tracecat.graph.resources import ChatMessage, Mention
from tracecat.graph.transport import GraphPool, RetryPolicy

TOKEN = "stand-in-secret-token"
# Retries without the production backoff, so failing attempts follow each other quickly.
QUICK_RETRY = RetryPolicy(backoff_base=0.01)
TEAM = "team#1?"  # unencoded, "#" and "?" would cut the path: ids must be percent-encoded
CHANNEL = "19:abc@thread.tacv2"


@dataclass
class Fault:
    method: str
    path: str
    status: int = 503
    count: int = 1
    retry_after: str | None = None
    delay: float = 0.0
    # Answer after the delay, or process the request normally (a slow success)?
    answer: bool = True
    text_body: str | None = None


@dataclass
class GraphStandIn:
    """State of the stand-in: what it received and what it was told to do."""

    faults: list[Fault] = field(default_factory=list)
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    client_ports: set[int] = field(default_factory=set)
    # Graph's per-channel send limit (messages per second), enforced like Teams does.
    channel_rate: float | None = None
    last_send: dict[str, float] = field(default_factory=dict)
    throttled: int = 0
    throttle_retry_after: str = "1"
    team_count: int = 5

    def calls_to(self, method: str, fragment: str) -> int:
        return sum(1 for m, path in self.calls if m == method and fragment in path)


def graph_error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    inner = {"request-id": "req-123", "date": "2024-01-15T09:00:00"}
    body = {"error": {"code": code, "message": message, "innerError": inner}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_stand_in(state: GraphStandIn) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def faults_and_auth(request: Request, call_next: Any) -> Response:
        path = request.url.path
        state.calls.append((request.method, path))
        if request.client:
            state.client_ports.add(request.client.port)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
        for fault in state.faults:
            if fault.count > 0 and fault.method == request.method and path.startswith(fault.path):
                fault.count -= 1
                await request.body()  # received in full before the slow part, as on Graph
                await asyncio.sleep(fault.delay)
                if not fault.answer:
                    break
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                if fault.text_body is not None:
                    return PlainTextResponse(fault.text_body, fault.status, headers=headers)
                return graph_error(fault.status, "Fault", "injected", **headers)
        return await call_next(request)

    def page(request: Request, items: list[dict[str, Any]], size: int) -> dict[str, Any]:
        start = int(request.query_params.get("$skiptoken", "0"))
        size = int(request.query_params.get("$top", size))
        body: dict[str, Any] = {"value": items[start : start + size]}
        if start + size < len(items):
            link = request.url.include_query_params(**{"$skiptoken": start + size})
            body["@odata.nextLink"] = str(link)
        return body

    @app.get("/v1.0/me")
    async def me() -> dict[str, Any]:
        return {"id": "user-1", "displayName": "Alice", "mail": "alice@example.com"}

    @app.get("/v1.0/me/joinedTeams")
    async def joined_teams(request: Request) -> dict[str, Any]:
        teams = [
            {"id": f"team-{i}", "displayName": f"Team {i}", "tenantId": "t1", "isArchived": False}
            for i in range(state.team_count)
        ]
        return page(request, teams, 2)

    @app.get("/v1.0/teams/{team_id}/channels")
    async def channels(team_id: str, request: Request) -> Response:
        if team_id == "forbidden":
            return graph_error(403, "Forbidden", "Missing role permissions on the request.")
        if team_id == "endless":
            link = request.url.include_query_params(n=int(request.query_params.get("n", 0)) + 1)
            return JSONResponse({"value": [{"id": "c"}], "@odata.nextLink": str(link)})
        if team_id == "elsewhere":
            link = "https://attacker.example/v1.0/teams/x/channels?$skiptoken=1"
            return JSONResponse({"value": [{"id": "c"}], "@odata.nextLink": link})
        if team_id == "alias":  # reached as 127.0.0.1, links written as localhost
            path = request.url.path.replace("alias", quote(TEAM, safe=""))
            link = str(request.url.replace(hostname="localhost", path=path))
            return JSONResponse({"value": [{"id": "first"}], "@odata.nextLink": link})
        if team_id != TEAM:
            return graph_error(404, "NotFound", f"No team found with Group Id {team_id}")
        items = [
            {"id": f"19:c{i}@thread.tacv2", "displayName": f"C{i}", "membershipType": "standard"}
            for i in range(3)
        ]
        return JSONResponse(page(request, items, 2))

    def store(channel_id: str, body: dict[str, Any], reply_to: str | None) -> dict[str, Any]:
        messages = state.messages.setdefault(channel_id, [])
        message = {
            "id": str(1000 + len(messages)),
            "replyToId": reply_to,
            "messageType": "message",
            "createdDateTime": "2024-01-15T09:00:00.123Z",
            "channelIdentity": {"teamId": TEAM, "channelId": channel_id},
            "from": {"user": {"id": "user-1", "displayName": "Alice"}},
            "attachments": [],
            "mentions": [],
            **body,
        }
        messages.append(message)
        return message

    def throttle(channel_id: str) -> Response | None:
        now = time.monotonic()
        last = state.last_send.get(channel_id)
        if state.channel_rate and last is not None and now - last < 1 / state.channel_rate:
            state.throttled += 1
            return graph_error(
                429,
                "TooManyRequests",
                "Please retry later.",
                **{"Retry-After": state.throttle_retry_after},
            )
        state.last_send[channel_id] = now
        return None

    @app.post("/v1.0/teams/{team_id}/channels/{channel_id}/messages", status_code=201)
    async def send(team_id: str, channel_id: str, request: Request) -> Response:
        if team_id != TEAM:
            return graph_error(404, "NotFound", "Team not found")
        if refused := throttle(channel_id):
            return refused
        return JSONResponse(store(channel_id, await request.json(), None), 201)

    @app.post("/v1.0/teams/{team_id}/channels/{channel_id}/messages/{message_id}/replies")
    async def reply(team_id: str, channel_id: str, message_id: str, request: Request) -> Response:
        if not any(m["id"] == message_id for m in state.messages.get(channel_id, [])):
            return graph_error(404, "NotFound", "Message not found")
        return JSONResponse(store(channel_id, await request.json(), message_id), 201)

    @app.get("/v1.0/teams/{team_id}/channels/{channel_id}/messages")
    async def messages(team_id: str, channel_id: str, request: Request) -> dict[str, Any]:
        return page(request, state.messages.get(channel_id, []), 2)

    return app


@pytest.fixture(scope="module")
def stand_in_server() -> Iterator[tuple[LiveServer, GraphStandIn]]:
    state = GraphStandIn()
    server = LiveServer(create_stand_in(state)).start()
    yield server, state
    server.stop()


@pytest.fixture
def graph(stand_in_server: tuple[LiveServer, GraphStandIn]) -> GraphStandIn:
    _, state = stand_in_server
    state.__init__()  # type: ignore[misc]  # a fresh stand-in for each test
    return state


@pytest.fixture
def graph_url(stand_in_server: tuple[LiveServer, GraphStandIn]) -> str:
    return f"{stand_in_server[0].url}/v1.0"


def fast_pacer() -> InProcessPacer:
    return InProcessPacer(channel_per_second=1000, team_per_second=1000, tenant_per_second=1000)


@pytest.fixture
def client(graph_url: str, graph: GraphStandIn) -> MicrosoftTeamsClient:
    return MicrosoftTeamsClient(
        TOKEN, graph_url=graph_url, pacer=fast_pacer(), settings=Settings(), retry=QUICK_RETRY
    )


# -- reads and paging ----------------------------------------------------------------------


async def test_seed_example_lists_every_team_across_pages(
    graph_url: str, graph: GraphStandIn
) -> None:
    teams = await MicrosoftTeamsClient(TOKEN, graph_url=graph_url).get_user_teams()
    assert [t.id for t in teams] == [f"team-{i}" for i in range(5)]
    assert graph.calls_to("GET", "/joinedTeams") == 3
    assert teams[0].model_dump()["displayName"] == "Team 0"
    assert teams[0].model_dump()["tenantId"] == "t1"


def open_connections(port: int) -> int:
    """Client-side TCP connections to `port` still established, as the kernel sees them
    (Linux), so that closing is checked without looking inside the client."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                remote_port, state = int(fields[2].rsplit(":", 1)[1], 16), fields[3]
                count += remote_port == port and state == "01"  # 01: ESTABLISHED
    return count


@pytest.fixture
def port(stand_in_server: tuple[LiveServer, GraphStandIn]) -> int:
    return stand_in_server[0].port


async def test_clients_share_one_keep_alive_pool(
    graph_url: str, graph: GraphStandIn, port: int
) -> None:
    async with GraphPool(Settings()) as pool:
        for _ in range(3):
            await MicrosoftTeamsClient(TOKEN, graph_url=graph_url, http_client=pool.http).get_me()
        assert len(graph.client_ports) == 1  # one TCP connection served every client
        assert open_connections(port) == 1
    assert pool.is_closed and open_connections(port) == 0


async def test_context_manager_closes_only_its_own_pool(
    graph_url: str, graph: GraphStandIn, port: int
) -> None:
    async with GraphPool(Settings()) as pool:
        async with MicrosoftTeamsClient(TOKEN, graph_url=graph_url, http_client=pool.http) as given:
            await given.get_me()
        assert not pool.is_closed  # a given pool is its creator's to close
        async with MicrosoftTeamsClient(TOKEN, graph_url=graph_url) as own:
            assert (await own.get_me()).display_name == "Alice"
            assert (await own.get_me()).display_name == "Alice"
            assert len(graph.client_ports) == 2  # its own pool, kept alive for the block
            assert open_connections(port) == 2
        assert open_connections(port) == 1  # its own pool closed, the given one still open
        assert not pool.is_closed
    assert open_connections(port) == 0


async def test_without_pool_each_operation_opens_and_closes_its_connection(
    graph_url: str, graph: GraphStandIn, port: int
) -> None:
    teams = MicrosoftTeamsClient(TOKEN, graph_url=graph_url)
    assert len(await teams.get_user_teams()) == 5
    assert len(graph.client_ports) == 1  # three pages over one connection
    assert open_connections(port) == 0  # closed when the operation ended
    await teams.get_me()
    assert len(graph.client_ports) == 2 and open_connections(port) == 0


async def test_channels_follow_next_link_and_encode_ids(client: MicrosoftTeamsClient) -> None:
    channels = await client.list_channels(TEAM)
    assert [c.display_name for c in channels] == ["C0", "C1", "C2"]
    assert channels[0].model_dump()["membershipType"] == "standard"


async def test_paging_stops_at_the_cap(graph_url: str, graph: GraphStandIn) -> None:
    client = MicrosoftTeamsClient(
        TOKEN, graph_url=graph_url, settings=Settings(), retry=RetryPolicy(max_pages=5)
    )
    with pytest.raises(GraphError) as caught:
        await client.list_channels("endless")
    assert caught.value.code == "TooManyPages"
    assert graph.calls_to("GET", "/endless/") == 5


async def test_next_link_to_a_loopback_alias_is_followed(client: MicrosoftTeamsClient) -> None:
    channels = await client.list_channels("alias")
    assert [c.id for c in channels][0] == "first" and len(channels) == 4


async def test_next_link_to_another_host_is_refused(client: MicrosoftTeamsClient) -> None:
    with pytest.raises(GraphError) as caught:
        await client.list_channels("elsewhere")
    assert caught.value.code == "UnexpectedNextLink"


async def test_list_messages_stops_at_top(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    for i in range(5):
        await client.send_message(TEAM, CHANNEL, f"m{i}")
    graph.calls.clear()
    messages = await client.list_channel_messages(TEAM, CHANNEL, top=3)
    assert [m.body.content for m in messages] == ["m0", "m1", "m2"]
    assert graph.calls_to("GET", "/messages") == 1  # $top=3 asked for one page of three
    everything = await client.list_channel_messages(TEAM, CHANNEL)
    assert len(everything) == 5
    assert all(isinstance(m, ChatMessage) for m in everything)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("team_id", "status", "code"), [("forbidden", 403, "Forbidden"), ("nope", 404, "NotFound")]
)
async def test_graph_errors_keep_status_code_and_request_id(
    client: MicrosoftTeamsClient, team_id: str, status: int, code: str
) -> None:
    with pytest.raises(GraphError) as caught:
        await client.list_channels(team_id)
    assert (caught.value.status_code, caught.value.code) == (status, code)
    assert caught.value.request_id == "req-123"


async def test_unauthorized_is_a_401_graph_error(graph_url: str, graph: GraphStandIn) -> None:
    teams = MicrosoftTeamsClient("expired-token", graph_url=graph_url)
    with pytest.raises(GraphError) as caught:
        await teams.get_me()
    assert caught.value.status_code == 401
    assert caught.value.code == "InvalidAuthenticationToken"
    assert graph.calls_to("GET", "/me") == 1  # the caller refreshes, not the client


async def test_non_json_error_body_still_explains(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    graph.faults.append(Fault("GET", "/v1.0/me", 502, text_body="<html>Bad Gateway</html>"))
    with pytest.raises(GraphError) as caught:
        await client.get_me()
    assert caught.value.status_code == 502
    assert "502" in caught.value.message and "Bad Gateway" in caught.value.message


async def test_token_never_shown(client: MicrosoftTeamsClient, graph: GraphStandIn) -> None:
    assert TOKEN not in repr(client) and TOKEN not in str(client)
    graph.faults.append(Fault("GET", "/v1.0/me", 400))
    with pytest.raises(GraphError) as caught:
        await client.get_me()
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value.detail)


# -- retries of reads ------------------------------------------------------------------------


async def test_reads_retry_throttling_and_outages(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    graph.faults += [
        Fault("GET", "/v1.0/me", 429, retry_after="0"),
        Fault("GET", "/v1.0/me", 503),
        Fault("GET", "/v1.0/me", 504),
    ]
    assert (await client.get_me()).id == "user-1"
    assert graph.calls_to("GET", "/me") == 4


async def test_reads_give_up_with_the_last_status(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    graph.faults.append(Fault("GET", "/v1.0/me", 429, count=10, retry_after="0"))
    with pytest.raises(GraphError) as caught:
        await client.get_me()
    assert caught.value.status_code == 429
    assert graph.calls_to("GET", "/me") == client.retry.max_attempts


async def test_reads_do_not_wait_past_the_budget(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    graph.faults.append(Fault("GET", "/v1.0/me", 429, count=10, retry_after="120"))
    started = time.monotonic()
    with pytest.raises(GraphError) as caught:
        await client.get_me()
    assert time.monotonic() - started < 2
    assert caught.value.status_code == 429
    assert caught.value.headers == {"Retry-After": "120"}  # passed on to our API's caller


async def test_read_timeout_is_retried(graph_url: str, graph: GraphStandIn) -> None:
    graph.faults.append(Fault("GET", "/v1.0/me", delay=1.0, answer=False))
    async with httpx.AsyncClient(timeout=0.3) as http:
        teams = MicrosoftTeamsClient(
            TOKEN, graph_url=graph_url, http_client=http, retry=QUICK_RETRY
        )
        assert (await teams.get_me()).display_name == "Alice"
    assert graph.calls_to("GET", "/me") == 2


# -- sends: never lost, never duplicated ---------------------------------------------------


async def test_send_refused_with_retry_after_is_delivered_once(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    graph.faults.append(Fault("POST", "/v1.0/teams", 429, retry_after="0"))
    message = await client.send_message(TEAM, CHANNEL, "hello")
    assert message.body.content == "hello"
    assert graph.calls_to("POST", "/messages") == 2
    assert [m["body"]["content"] for m in graph.messages[CHANNEL]] == ["hello"]


async def test_send_504_is_delivery_unknown_and_not_resent(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    graph.faults.append(Fault("POST", "/v1.0/teams", 504, retry_after="0"))
    with pytest.raises(DeliveryUnknownError) as caught:
        await client.send_message(TEAM, CHANNEL, "hello")
    assert caught.value.status_code == 504
    assert graph.calls_to("POST", "/messages") == 1


async def test_send_503_without_retry_after_is_not_resent(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    graph.faults.append(Fault("POST", "/v1.0/teams", 503))
    with pytest.raises(GraphError) as caught:
        await client.send_message(TEAM, CHANNEL, "hello")
    assert caught.value.status_code == 503
    assert graph.calls_to("POST", "/messages") == 1


async def test_send_timeout_is_delivery_unknown_and_not_resent(
    graph_url: str, graph: GraphStandIn
) -> None:
    # Graph is slow but does post the message: a resend would duplicate it.
    graph.faults.append(Fault("POST", "/v1.0/teams", delay=0.6, answer=False))
    async with httpx.AsyncClient(timeout=0.2) as http:
        teams = MicrosoftTeamsClient(
            TOKEN, graph_url=graph_url, http_client=http, pacer=fast_pacer()
        )
        with pytest.raises(DeliveryUnknownError):
            await teams.send_message(TEAM, CHANNEL, "hello")
    await asyncio.sleep(0.8)
    assert graph.calls_to("POST", "/messages") == 1
    assert len(graph.messages[CHANNEL]) == 1


class FailFirstConnect(httpx.AsyncBaseTransport):
    """A network whose first connection attempt fails before anything is sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.failed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.failed:
            self.failed = True
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_send_after_connect_error_is_retried(graph_url: str, graph: GraphStandIn) -> None:
    async with httpx.AsyncClient(transport=FailFirstConnect()) as http:
        teams = MicrosoftTeamsClient(
            TOKEN, graph_url=graph_url, http_client=http, pacer=fast_pacer(), retry=QUICK_RETRY
        )
        await teams.send_message(TEAM, CHANNEL, "hello")
    assert len(graph.messages[CHANNEL]) == 1


async def test_send_to_unreachable_graph_names_the_setting() -> None:
    teams = MicrosoftTeamsClient(
        TOKEN,
        graph_url="http://127.0.0.1:9/v1.0",
        pacer=fast_pacer(),
        settings=Settings(),
        retry=QUICK_RETRY,
    )
    with pytest.raises(GraphError) as caught:
        await teams.send_message(TEAM, CHANNEL, "hello")
    assert caught.value.status_code == 503
    assert "MICROSOFT_GRAPH_URL" in caught.value.message


# -- message shapes --------------------------------------------------------------------------


async def test_mentions_are_tagged_in_an_html_body(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    message = await client.send_message(
        TEAM,
        CHANNEL,
        "Alert <high> for",
        subject="Incident",
        mentions=[
            {"id": "aad-1", "display_name": "Alice"},
            Mention(id="aad-2", display_name="Bob"),
        ],
    )
    sent = graph.messages[CHANNEL][0]
    assert sent["subject"] == "Incident"
    assert sent["body"] == {
        "contentType": "html",
        "content": 'Alert &lt;high&gt; for <at id="0">Alice</at> <at id="1">Bob</at>',
    }
    assert sent["mentions"][1] == {
        "id": 1,
        "mentionText": "Bob",
        "mentioned": {"user": {"id": "aad-2", "displayName": "Bob", "userIdentityType": "aadUser"}},
    }
    assert [m.mentioned.user.id for m in message.mentions] == ["aad-1", "aad-2"]


async def test_existing_mention_tags_are_kept(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    await client.send_message(
        TEAM,
        CHANNEL,
        '<p>Hi <at id="0">Ali</at>, please look</p>',
        content_type="html",
        mentions=[{"id": "aad-1", "displayName": "Alice Smith"}],
    )
    sent = graph.messages[CHANNEL][0]
    assert sent["body"]["content"] == '<p>Hi <at id="0">Ali</at>, please look</p>'
    assert sent["mentions"][0]["mentionText"] == "Ali"


async def test_adaptive_card_is_an_attachment_referenced_by_the_body(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    card = {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "x"}]}
    root = await client.send_message(TEAM, CHANNEL, "See card", adaptive_card=card)
    reply = await client.reply_to_message(TEAM, CHANNEL, root.id, "ack")
    sent = graph.messages[CHANNEL][0]
    (attachment,) = sent["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert json.loads(attachment["content"]) == card
    assert sent["body"]["contentType"] == "html"
    assert re.fullmatch(
        rf'See card<attachment id="{attachment["id"]}"></attachment>', sent["body"]["content"]
    )
    assert reply.reply_to_id == root.id
    assert graph.messages[CHANNEL][1]["body"] == {"contentType": "text", "content": "ack"}


async def test_bad_mention_is_rejected_before_sending(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    with pytest.raises(BadRequestError) as caught:
        await client.send_message(TEAM, CHANNEL, "hi", mentions=[{"id": "aad-1"}])
    assert "display_name" in str(caught.value)
    assert graph.calls_to("POST", "/messages") == 0


# -- pacing ----------------------------------------------------------------------------------


async def test_burst_is_paced_under_the_channel_limit(graph_url: str, graph: GraphStandIn) -> None:
    graph.channel_rate = 10.0
    paced = MicrosoftTeamsClient(
        TOKEN, graph_url=graph_url, pacer=InProcessPacer(channel_per_second=10)
    )
    await asyncio.gather(*(paced.send_message(TEAM, CHANNEL, f"m{i}") for i in range(6)))
    assert graph.throttled == 0
    assert len(graph.messages[CHANNEL]) == 6


async def test_unpaced_burst_would_be_throttled(
    client: MicrosoftTeamsClient, graph: GraphStandIn
) -> None:
    # The stand-in really enforces the limit: without pacing the same burst hits 429s.
    graph.channel_rate, graph.throttle_retry_after = 10.0, "0"
    results = await asyncio.gather(
        *(client.send_message(TEAM, CHANNEL, f"m{i}") for i in range(6)), return_exceptions=True
    )
    assert graph.throttled > 0
    assert len(graph.messages[CHANNEL]) + sum(isinstance(r, GraphError) for r in results) == 6


# -- against the Microsoft emulator ----------------------------------------------------------


@dataclass
class EmulatedTeams:
    emulator: EmulatorServer
    token: str
    settings: Settings
    control: httpx.Client

    def client(self, **options: Any) -> MicrosoftTeamsClient:
        return MicrosoftTeamsClient(self.token, settings=self.settings, **options)

    def stored_messages(self) -> list[dict[str, Any]]:
        return self.control.get("/messages").json()["messages"]

    def stats(self) -> dict[str, Any]:
        return self.control.get("/stats").json()


def sign_in(emulator: EmulatorServer, email: str) -> str:
    """The auth code flow through MSAL, the browser step answered by login_hint."""
    tls = ssl.create_default_context(cafile=str(emulator.ca_bundle))
    with httpx.Client(verify=tls, timeout=10) as http:
        app = msal.ConfidentialClientApplication(
            emulator.client_id,
            client_credential=emulator.client_secret,
            authority=f"{emulator.authority_host}/common",
            instance_discovery=False,
            http_client=http,
        )
        scopes = [f"{GRAPH_RESOURCE}/{scope}" for scope in DEMO_APP_SCOPES]
        redirect_uri = "http://localhost:8400/auth/callback"
        flow = app.initiate_auth_code_flow(scopes, redirect_uri=redirect_uri, login_hint=email)
        location = httpx.get(flow["auth_uri"], follow_redirects=False).headers["location"]
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        result = app.acquire_token_by_auth_code_flow(flow, params)
    assert "access_token" in result, result
    return result["access_token"]


@pytest.fixture
def emulated(emulator: EmulatorServer) -> Iterator[EmulatedTeams]:
    with httpx.Client(
        base_url=f"{emulator.http_url}/_emulator", headers=CONTROL_HEADERS, timeout=10
    ) as control:
        control.post("/reset").raise_for_status()
        settings = Settings(
            microsoft_graph_url=emulator.graph_url, microsoft_ca_bundle=emulator.ca_bundle
        )
        yield EmulatedTeams(emulator, sign_in(emulator, DEMO_USERS[0]), settings, control)


async def test_emulator_teams_and_channels_across_pages(emulated: EmulatedTeams) -> None:
    teams = await emulated.client().get_user_teams()
    assert sorted(t.display_name for t in teams) == sorted(name for name, _, _ in JOINED_TEAMS)
    assert emulated.stats()["graph_requests"]  # served by the emulator, over TLS
    security = next(t for t in teams if t.display_name == "Security Operations")
    channels = await emulated.client().list_channels(security.id)
    assert [c.display_name for c in channels] == list(JOINED_TEAMS[0][2])
    assert all(c.id.startswith("19:") for c in channels)


async def test_emulator_send_with_mention_and_card(emulated: EmulatedTeams) -> None:
    teams = emulated.client(pacer=fast_pacer())
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
    (stored,) = emulated.stored_messages()
    graph_message = stored["chat_message"]
    assert graph_message["mentions"][0]["mentioned"]["user"]["userIdentityType"] == "aadUser"
    (attachment,) = graph_message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert json.loads(attachment["content"]) == card
    assert f'<attachment id="{attachment["id"]}"></attachment>' in graph_message["body"]["content"]
    assert '<at id="0">Bob</at>' in graph_message["body"]["content"]
    listed = await teams.list_channel_messages(team.id, channel.id, top=5)
    assert [m.id for m in listed] == [sent.id]
    assert listed[0].mentions[0].mention_text == "Bob"


async def test_emulator_burst_is_paced_without_429(emulated: EmulatedTeams) -> None:
    # One attempt: a 429 would surface instead of being retried.
    teams = emulated.client(pacer=InProcessPacer(), retry=RetryPolicy(max_attempts=1))
    team = (await teams.get_user_teams())[0]
    channel = (await teams.list_channels(team.id))[0]
    await asyncio.gather(*(teams.send_message(team.id, channel.id, f"m{i}") for i in range(3)))
    assert emulated.stats()["throttled"] == 0
    assert len(emulated.stored_messages()) == 3


async def test_emulator_redis_pacer_is_shared_by_two_processes(emulated: EmulatedTeams) -> None:
    prefix = f"test:teams:{uuid.uuid4().hex}"
    clients = [
        emulated.client(
            pacer=RedisPacer("redis://127.0.0.1:6379/0", prefix=prefix),
            retry=RetryPolicy(max_attempts=1),
        )
        for _ in range(2)
    ]
    team = (await clients[0].get_user_teams())[0]
    channel = (await clients[0].list_channels(team.id))[0]
    await asyncio.gather(
        *(t.send_message(team.id, channel.id, f"m{i}") for i, t in enumerate(clients * 2))
    )
    assert emulated.stats()["throttled"] == 0
    assert len(emulated.stored_messages()) == 4
    for teams in clients:
        await teams.pacer.aclose()


async def test_emulator_throttled_send_is_delivered_once(emulated: EmulatedTeams) -> None:
    teams = emulated.client(pacer=fast_pacer())
    team = (await teams.get_user_teams())[0]
    channel = (await teams.list_channels(team.id))[0]
    fault = {"target": "/v1.0/teams", "status": 429, "count": 1, "retry_after": 1}
    emulated.control.post("/faults", json=fault).raise_for_status()
    await teams.send_message(team.id, channel.id, "once")
    assert [m["chat_message"]["body"]["content"] for m in emulated.stored_messages()] == ["once"]


async def test_emulator_gateway_timeout_is_not_resent(emulated: EmulatedTeams) -> None:
    teams = emulated.client(pacer=fast_pacer())
    team = (await teams.get_user_teams())[0]
    channel = (await teams.list_channels(team.id))[0]
    fault = {"target": "/v1.0/teams", "status": 504, "count": 1}
    emulated.control.post("/faults", json=fault).raise_for_status()
    with pytest.raises(DeliveryUnknownError):
        await teams.send_message(team.id, channel.id, "maybe")
    # The fault is used up: a resend would have been posted.
    assert emulated.stored_messages() == []
