"""Microsoft Graph over HTTP: one request path with retries, paging, errors and typed results.

`GraphClient` is one user's access token plus this transport; each product area subclasses it
(`tracecat.graph.teams.MicrosoftTeamsClient`, later a calendar client, ...) and only adds its
operations. Nothing here is process-wide: keep-alive connections live in a `GraphPool` that
its creator closes (the app's lifespan), or in a client's own `async with` block, or only for
the duration of one operation.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

from tracecat.config import Settings
from tracecat.exceptions import DeliveryUnknownError, GraphError
from tracecat.graph.responses import ModelT, graph_error, json_body, origin, parse, retry_after
from tracecat.metrics import GRAPH_REQUESTS, GRAPH_RETRIES, THROTTLE_WAIT_SECONDS

logger = logging.getLogger(__name__)

# Graph answers a POST with these only when it refused the request, so a resend is safe.
REFUSED_STATUSES = frozenset({429, 503})
# Reads are retried on throttling and on these passing failures.
RETRYABLE_READ_STATUSES = frozenset({429, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a Graph call is retried, and how many pages a list may take.

    `sleep` and `jitter` are injectable so that tests can check the waits without waiting.
    """

    max_attempts: int = 4
    # Total seconds of waiting one call may spend between its attempts.
    max_retry_wait: float = 30.0
    # First backoff when Graph gave no Retry-After; doubled per attempt, jittered to 50-100%.
    backoff_base: float = 0.5
    max_pages: int = 100
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)
    jitter: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_pages < 1:
            raise ValueError("max_attempts and max_pages must be at least 1")
        if self.max_retry_wait < 0 or self.backoff_base < 0:
            raise ValueError("max_retry_wait and backoff_base cannot be negative")

    def backoff(self, attempt: int) -> float:
        """Seconds before attempt `attempt + 1` when Graph did not say (attempt counts from 1)."""
        return self.backoff_base * 2.0 ** (attempt - 1) * (0.5 + self.jitter() / 2)

    def next_delay(self, attempt: int, retry_after: float | None, waited: float) -> float | None:
        """Seconds to wait before another attempt, or None when this call should give up:
        no attempts left, or the wait would take it past `max_retry_wait` in total."""
        if attempt >= self.max_attempts:
            return None
        delay = self.backoff(attempt) if retry_after is None else retry_after
        if waited + delay > self.max_retry_wait:
            return None
        return delay


def new_http_client(settings: Settings) -> httpx.AsyncClient:
    """An HTTP client for Graph: our explicit trust (MICROSOFT_CA_BUNDLE), timeouts, limits."""
    return httpx.AsyncClient(
        verify=settings.ssl_context(),
        timeout=httpx.Timeout(30.0, connect=10.0, pool=10.0),
        # Under the idle timeouts of Graph's front doors, so we rarely reuse a dead socket.
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=60),
        headers={"Accept": "application/json"},
    )


class GraphPool:
    """Keep-alive connections to Graph for every client given `pool.http`; `aclose` ends them.

    Create one per application (its lifespan) and close it on shutdown. Like any asyncio
    client, it belongs to the event loop that first uses it.
    """

    def __init__(self, settings: Settings) -> None:
        self._http = new_http_client(settings)

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    @property
    def is_closed(self) -> bool:
        return self._http.is_closed

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# -- what Graph answered ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    """One attempt that did not succeed, and whether another attempt may follow it."""

    error: GraphError
    reason: str  # the retry metric's label
    retry_after: float | None  # Graph's own Retry-After, when it sent one
    retryable: bool


# -- the client --------------------------------------------------------------------------------


class GraphClient:
    """Microsoft Graph for one user's access token.

    Connections, in order of precedence:
    - `http_client` given (e.g. a `GraphPool`'s): used, never closed by this client;
    - inside `async with client:`: the client opens its own pool and closes it on exit;
    - otherwise each operation opens a short-lived HTTP client and closes it when done, so a
      client that is never closed leaks nothing.
    """

    def __init__(
        self,
        access_token: str,
        *,
        settings: Settings,
        graph_url: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not access_token:
            raise ValueError("an access token is required")
        self._access_token = access_token
        self.settings = settings
        self.retry = retry or RetryPolicy()
        self.graph_url = (graph_url or settings.microsoft_graph_url).rstrip("/")
        self._graph_origin = origin(self.graph_url)
        self._http_client = http_client
        self._entered = False
        # The pool this client opened for its `async with` block, if inside one.
        self._own_http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never the token
        return f"{type(self).__name__}(graph_url={self.graph_url!r})"

    @property
    def in_context(self) -> bool:
        """Inside `async with`: what the client opens lives until the block ends."""
        return self._entered

    async def __aenter__(self) -> Self:
        self._entered = True
        if self._http_client is None and self._own_http is None:
            self._own_http = new_http_client(self.settings)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close what this client opened (never a given `http_client`)."""
        self._entered = False
        own, self._own_http = self._own_http, None
        if own is not None:
            await own.aclose()

    # -- typed operations for subclasses -------------------------------------------------------

    async def _get(self, model: type[ModelT], path: str) -> ModelT:
        async with self._connection() as http:
            return parse(model, await self._request(http, "GET", path))

    async def _list(
        self,
        model: type[ModelT],
        path: str,
        *,
        params: dict[str, str] | None = None,
        limit: int | None = None,
    ) -> list[ModelT]:
        """Every item of a collection, following @odata.nextLink up to `max_pages` pages."""
        items: list[dict[str, Any]] = []
        url = path
        async with self._connection() as http:
            for _ in range(self.retry.max_pages):
                page = await self._request(http, "GET", url, params=params)
                items.extend(page.get("value") or [])
                if limit is not None and len(items) >= limit:
                    return [parse(model, item) for item in items[:limit]]
                next_link = page.get("@odata.nextLink")
                if not next_link:
                    return [parse(model, item) for item in items]
                url, params = next_link, None  # the link carries the query
        raise GraphError(
            502,
            "TooManyPages",
            f"Microsoft Graph returned more than {self.retry.max_pages} pages for {path}; "
            "narrow the request",
        )

    async def _post(self, model: type[ModelT], path: str, body: dict[str, Any]) -> ModelT:
        async with self._connection() as http:
            return parse(model, await self._request(http, "POST", path, json=body))

    # -- transport -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[httpx.AsyncClient]:
        """The HTTP client for one operation (see the class docstring)."""
        http = self._http_client if self._http_client is not None else self._own_http
        if http is not None:
            yield http
            return
        async with new_http_client(self.settings) as short_lived:
            yield short_lived

    def _url(self, path_or_url: str) -> str:
        if not path_or_url.startswith(("http://", "https://")):
            return f"{self.graph_url}{path_or_url}"
        # A nextLink elsewhere would receive the user's token: refuse it.
        if origin(path_or_url) != self._graph_origin:
            raise GraphError(
                502, "UnexpectedNextLink", "Microsoft Graph sent a link outside the Graph URL"
            )
        return path_or_url

    async def _request(
        self,
        http: httpx.AsyncClient,
        method: str,
        path_or_url: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One Graph call with retries that never repeat a send Graph may have processed.

        A GET is retried on 429/503/504 and transport failures. A POST is retried only when
        nothing reached Graph (connect failures) or Graph refused it with Retry-After; after a
        timeout, a dropped connection or a 504 its outcome is unknown: DeliveryUnknownError.
        """
        url = self._url(path_or_url)
        headers = {"Authorization": f"Bearer {self._access_token}"}
        waited = 0.0
        attempt = 1
        while True:
            outcome = await self._attempt(http, method, url, params, json, headers)
            if not isinstance(outcome, _Failure):
                return outcome
            if not outcome.retryable:
                raise outcome.error
            delay = self.retry.next_delay(attempt, outcome.retry_after, waited)
            if delay is None:
                raise outcome.error
            waited += delay
            GRAPH_RETRIES.labels(method=method, reason=outcome.reason).inc()
            THROTTLE_WAIT_SECONDS.labels(source="graph").inc(delay)
            logger.info("Graph %s %s: retrying in %.2fs", method, outcome.reason, delay)
            await self.retry.sleep(delay)
            attempt += 1

    async def _attempt(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        params: dict[str, str] | None,
        json: dict[str, Any] | None,
        headers: dict[str, str],
    ) -> dict[str, Any] | _Failure:
        """Send once: Graph's JSON body, or why not and whether a retry is safe.

        Raises DeliveryUnknownError when a send (a non-GET) may or may not have been processed.
        """
        is_read = method == "GET"
        try:
            response = await http.request(method, url, params=params, json=json, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing was sent: a retry cannot duplicate anything.
            GRAPH_REQUESTS.labels(method=method, status="connect_error").inc()
            error = GraphError(
                503,
                "ServiceUnavailable",
                f"cannot reach Microsoft Graph at {self.graph_url} ({type(exc).__name__}): "
                "check MICROSOFT_GRAPH_URL, MICROSOFT_CA_BUNDLE and the network",
            )
            return _Failure(error, "connect_error", None, retryable=True)
        except httpx.TransportError as exc:
            timed_out = isinstance(exc, httpx.TimeoutException)
            reason = "timeout" if timed_out else "transport_error"
            GRAPH_REQUESTS.labels(method=method, status=reason).inc()
            what = (
                "Microsoft Graph did not answer in time"
                if timed_out
                else f"the connection to Microsoft Graph broke ({type(exc).__name__})"
            )
            if not is_read:
                logger.warning("Graph %s outcome unknown: %s", method, type(exc).__name__)
                raise DeliveryUnknownError(what) from None
            return _Failure(GraphError(504, "GatewayTimeout", what), reason, None, retryable=True)
        status = response.status_code
        GRAPH_REQUESTS.labels(method=method, status=str(status)).inc()
        if response.is_success:
            return json_body(response)
        if not is_read and status == 504:
            logger.warning("Graph %s answered 504: outcome unknown", method)
            raise DeliveryUnknownError("Microsoft Graph answered 504 Gateway Timeout") from None
        delay = retry_after(response)
        retryable = (
            status in RETRYABLE_READ_STATUSES
            if is_read
            else status in REFUSED_STATUSES and delay is not None
        )
        return _Failure(graph_error(response), str(status), delay, retryable)
