"""The Graph request path, offline: `RetryPolicy` and the send semantics it drives, with an
injected sleep (nothing really waits) and a scripted transport in place of Graph."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from tracecat.config import Settings
from tracecat.exceptions import DeliveryUnknownError, GraphError
from tracecat.graph.pacing import InProcessPacer, RedisPacer
from tracecat.graph.responses import graph_error, retry_after
from tracecat.graph.teams import MicrosoftTeamsClient
from tracecat.graph.transport import GraphPool, RetryPolicy

GRAPH = "https://graph.test/v1.0"
ME = {"id": "user-1", "displayName": "Alice"}
SENT = {"id": "1000", "body": {"contentType": "text", "content": "hi"}}

Answer = httpx.Response | type[httpx.TransportError]


class Sleeps:
    """An injected sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class ScriptedGraph:
    """Answers each request with the next scripted answer (a response or a transport error
    to raise), then with `default`; records what it was sent."""

    def __init__(self, *answers: Answer, default: httpx.Response | None = None) -> None:
        self.answers = list(answers)
        self.default = default
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else self.default
        if answer is None:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        if isinstance(answer, type):
            raise answer("scripted", request=request)
        return answer


def error(status: int, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"error": {"code": f"E{status}", "message": "scripted"}}
    return httpx.Response(status, json=body, headers=headers)


def ok(body: dict[str, Any], status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client_for(sleeps: Sleeps) -> AsyncIterator[Callable[..., MicrosoftTeamsClient]]:
    """A client whose HTTP goes to a ScriptedGraph; retries without jitter or real sleeps."""
    opened: list[httpx.AsyncClient] = []

    def make(graph: ScriptedGraph, **policy: Any) -> MicrosoftTeamsClient:
        retry = RetryPolicy(sleep=sleeps, jitter=lambda: 0.0, **policy)
        http = httpx.AsyncClient(transport=httpx.MockTransport(graph))
        opened.append(http)
        fast = InProcessPacer(channel_per_second=1e6, team_per_second=1e6, tenant_per_second=1e6)
        return MicrosoftTeamsClient(
            "token", graph_url=GRAPH, http_client=http, pacer=fast, settings=Settings(), retry=retry
        )

    yield make
    for http in opened:
        await http.aclose()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total", labels) or 0.0


# -- the policy itself -------------------------------------------------------------------------


def test_policy_defaults_and_frozen() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.max_retry_wait, policy.backoff_base, policy.max_pages) == (
        4,
        30.0,
        0.5,
        100,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 1  # type: ignore[misc]
    assert dataclasses.replace(policy, max_attempts=1).max_attempts == 1


@pytest.mark.parametrize(
    "options", [{"max_attempts": 0}, {"max_pages": 0}, {"max_retry_wait": -1}, {"backoff_base": -1}]
)
def test_policy_refuses_nonsense(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**options)


def test_backoff_doubles_and_jitters_between_half_and_full() -> None:
    low = RetryPolicy(jitter=lambda: 0.0)
    high = RetryPolicy(jitter=lambda: 1.0)
    assert [low.backoff(n) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]
    assert [high.backoff(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]


def test_next_delay_prefers_retry_after_and_respects_both_budgets() -> None:
    policy = RetryPolicy(jitter=lambda: 0.0)
    assert policy.next_delay(1, None, 0.0) == 0.25
    assert policy.next_delay(1, 7.0, 0.0) == 7.0  # Graph's own word wins
    assert policy.next_delay(1, 0.0, 0.0) == 0.0
    assert policy.next_delay(4, 1.0, 0.0) is None  # no attempt left
    assert policy.next_delay(2, 10.0, 20.0) == 10.0  # exactly the budget is allowed
    assert policy.next_delay(2, 10.1, 20.0) is None  # past the budget: give up now


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after(error(429, "3")) == 3.0
    assert retry_after(error(429, "-5")) == 0.0
    assert retry_after(error(429, "Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0  # in the past
    assert retry_after(error(429, "soon")) is None
    assert retry_after(error(429)) is None
    assert graph_error(error(429, "2.5")).headers == {"Retry-After": "3"}


# -- reads -------------------------------------------------------------------------------------


async def test_read_retries_with_backoff_then_succeeds(client_for: Any, sleeps: Sleeps) -> None:
    graph = ScriptedGraph(error(503), error(504), httpx.ReadTimeout, default=ok(ME))
    retries_before = counter("tracecat_graph_retries", method="GET", reason="503")
    assert (await client_for(graph).get_me()).id == "user-1"
    assert len(graph.requests) == 4
    assert sleeps.waits == [0.25, 0.5, 1.0]  # backoff_base * 2**n, jitter at its floor
    assert counter("tracecat_graph_retries", method="GET", reason="503") == retries_before + 1


async def test_read_gives_up_after_max_attempts(client_for: Any, sleeps: Sleeps) -> None:
    graph = ScriptedGraph(default=error(429, "2"))
    with pytest.raises(GraphError) as caught:
        await client_for(graph, max_attempts=3).get_me()
    assert caught.value.status_code == 429
    assert len(graph.requests) == 3
    assert sleeps.waits == [2.0, 2.0]


async def test_read_stops_before_waiting_past_the_budget(client_for: Any, sleeps: Sleeps) -> None:
    graph = ScriptedGraph(default=error(429, "20"))
    with pytest.raises(GraphError) as caught:
        await client_for(graph).get_me()
    assert caught.value.status_code == 429
    assert sleeps.waits == [20.0]  # a second 20 s wait would pass max_retry_wait (30 s)
    assert len(graph.requests) == 2


async def test_read_transport_failures_end_as_gateway_timeout(
    client_for: Any, sleeps: Sleeps
) -> None:
    graph = ScriptedGraph(httpx.ReadError, httpx.ReadTimeout, default=None)
    with pytest.raises(GraphError) as caught:
        await client_for(graph, max_attempts=2).get_me()
    assert (caught.value.status_code, caught.value.code) == (504, "GatewayTimeout")
    assert len(sleeps.waits) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 502])
async def test_read_is_not_retried_on_other_statuses(
    client_for: Any, sleeps: Sleeps, status: int
) -> None:
    graph = ScriptedGraph(error(status, "0"), default=ok(ME))
    with pytest.raises(GraphError) as caught:
        await client_for(graph).get_me()
    assert caught.value.status_code == status
    assert len(graph.requests) == 1 and sleeps.waits == []


async def test_paging_cap_and_next_link_origin(client_for: Any) -> None:
    link = f"{GRAPH}/me/joinedTeams?$skiptoken=x"
    graph = ScriptedGraph(default=ok({"value": [{"id": "t"}], "@odata.nextLink": link}))
    with pytest.raises(GraphError) as caught:
        await client_for(graph, max_pages=3).get_user_teams()
    assert caught.value.code == "TooManyPages" and len(graph.requests) == 3
    elsewhere = ScriptedGraph(
        default=ok({"value": [], "@odata.nextLink": "https://evil.test/v1.0/x"})
    )
    with pytest.raises(GraphError) as caught:
        await client_for(elsewhere).get_user_teams()
    assert caught.value.code == "UnexpectedNextLink" and len(elsewhere.requests) == 1


# -- sends: retried only when Graph cannot have processed them ---------------------------------


async def test_send_refused_with_retry_after_is_retried(client_for: Any, sleeps: Sleeps) -> None:
    graph = ScriptedGraph(error(429, "1"), error(503, "2"), default=ok(SENT, 201))
    sent = await client_for(graph).send_message("team", "channel", "hi")
    assert sent.id == "1000"
    assert len(graph.requests) == 3 and sleeps.waits == [1.0, 2.0]


async def test_send_after_connect_error_is_retried(client_for: Any, sleeps: Sleeps) -> None:
    graph = ScriptedGraph(httpx.ConnectError, httpx.ConnectTimeout, default=ok(SENT, 201))
    assert (await client_for(graph).send_message("team", "channel", "hi")).id == "1000"
    assert len(graph.requests) == 3 and sleeps.waits == [0.25, 0.5]


@pytest.mark.parametrize("status", [429, 503])
async def test_send_refused_without_retry_after_is_not_retried(
    client_for: Any, sleeps: Sleeps, status: int
) -> None:
    graph = ScriptedGraph(error(status), default=ok(SENT, 201))
    with pytest.raises(GraphError) as caught:
        await client_for(graph).send_message("team", "channel", "hi")
    assert caught.value.status_code == status and not isinstance(caught.value, DeliveryUnknownError)
    assert len(graph.requests) == 1 and sleeps.waits == []


@pytest.mark.parametrize(
    "answer", [error(504, "0"), httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError]
)
async def test_send_with_unknown_outcome_is_never_resent(
    client_for: Any, sleeps: Sleeps, answer: Answer
) -> None:
    graph = ScriptedGraph(answer, default=ok(SENT, 201))
    with pytest.raises(DeliveryUnknownError):
        await client_for(graph).send_message("team", "channel", "hi")
    assert len(graph.requests) == 1 and sleeps.waits == []


async def test_send_success_with_a_broken_body_is_not_resent(client_for: Any) -> None:
    graph = ScriptedGraph(httpx.Response(201, text="<html>ok</html>"), default=ok(SENT, 201))
    with pytest.raises(GraphError) as caught:
        await client_for(graph).send_message("team", "channel", "hi")
    assert caught.value.code == "InvalidResponse" and len(graph.requests) == 1


# -- who owns what -------------------------------------------------------------------------------


async def test_pool_owns_its_connections() -> None:
    async with GraphPool(Settings()) as pool:
        assert not pool.is_closed
        client = MicrosoftTeamsClient("token", settings=Settings(), http_client=pool.http)
        async with client:
            pass
        assert not pool.is_closed  # a client never closes what it was given
    assert pool.is_closed


REDIS_URL = "redis://127.0.0.1:6379/0"


async def redis_connections(name: str) -> int:
    """Connections Redis has open under this client name."""
    async with aioredis.Redis.from_url(REDIS_URL) as admin:
        return sum(1 for client in await admin.client_list() if client.get("name") == name)


@pytest.fixture
async def sends_ok() -> AsyncIterator[httpx.AsyncClient]:
    """HTTP to a Graph that accepts every send."""
    graph = ScriptedGraph(default=ok(SENT, 201))
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as http:
        yield http


async def test_own_redis_pacer_is_closed_after_each_send_outside_a_block(
    sends_ok: httpx.AsyncClient,
) -> None:
    # Named connections, so that Redis itself tells which are still open.
    name = f"test-pacer-{uuid.uuid4().hex}"
    settings = Settings(redis_url=f"{REDIS_URL}?client_name={name}")
    options: dict[str, Any] = {"graph_url": GRAPH, "http_client": sends_ok, "settings": settings}
    # Teams of their own: nothing else books on these keys, and nothing here waits long.
    targets = iter([(f"{name}-{i}", "channel") for i in range(5)])

    teams = MicrosoftTeamsClient("token", **options)
    await teams.send_message(*next(targets), "one")
    assert isinstance(teams.pacer, RedisPacer)
    assert await redis_connections(name) == 0
    await teams.send_message(*next(targets), "two")  # reopened, and closed again
    assert await redis_connections(name) == 0

    async with MicrosoftTeamsClient("token", **options) as block:
        await block.send_message(*next(targets), "three")
        assert await redis_connections(name) == 1  # kept for the block
    assert await redis_connections(name) == 0

    given = RedisPacer(str(settings.redis_url))
    shared = MicrosoftTeamsClient("token", pacer=given, **options)
    await shared.send_message(*next(targets), "four")
    await shared.aclose()
    assert await redis_connections(name) == 1  # a given pacer is its creator's to close
    await given.aclose()
    assert await redis_connections(name) == 0
