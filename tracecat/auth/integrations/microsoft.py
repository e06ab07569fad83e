"""Microsoft: the MSAL OAuth provider, and the Teams client over Microsoft Graph.

MSAL does all of OAuth (PKCE, state, nonce, token requests); this module only turns its dict
answers into typed results and exceptions, in one place.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import math
import random
import re
import threading
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypedDict, TypeVar, Unpack
from urllib.parse import urlparse, urlsplit

import httpx
import msal
from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS
from pydantic import BaseModel, ValidationError

from tracecat.auth.integrations.pacing import LoopLocal, Pacer, default_pacer
from tracecat.auth.integrations.schemas import (
    Channel,
    ChatMessage,
    GraphUser,
    Mention,
    Team,
)
from tracecat.config import Settings, get_settings
from tracecat.exceptions import (
    BadRequestError,
    DeliveryUnknownError,
    GraphError,
    ReauthorizationRequiredError,
    SignInError,
    TransientProviderError,
    UpstreamError,
)
from tracecat.graph.ids import segment
from tracecat.metrics import GRAPH_REQUESTS, GRAPH_RETRIES, THROTTLE_WAIT_SECONDS

logger = logging.getLogger(__name__)

# The pinned contract uses query response mode: the browser-binding cookie (SameSite=Lax) then
# travels with Microsoft's redirect, which a cross-site form_post would not carry.
warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended")

# Scopes MSAL adds itself and refuses to be given.
RESERVED_SCOPES = {"openid", "profile", "offline_access"}
# Token-endpoint errors that mean the grant is gone and only the user can restore it.
REAUTHORIZATION_ERRORS = {"invalid_grant", "interaction_required", "consent_required"}
# Token-endpoint errors that only fixing our app registration or settings can cure.
CONFIGURATION_ERRORS = {
    "invalid_client",
    "unauthorized_client",
    "invalid_request",
    "invalid_scope",
    "unsupported_grant_type",
}


class _NoTokenCache(msal.TokenCache):
    """Tokens live only in our encrypted columns, never in a process-wide MSAL cache, so a
    disconnect leaves nothing behind in memory."""

    def add(self, event: dict[str, Any], now: float | None = None) -> None:
        return None


@dataclass(frozen=True)
class TokenResult:
    access_token: str
    refresh_token: str | None
    expires_at: datetime
    scope: str
    account: dict[str, str | None] = field(default_factory=dict)

    def __repr__(self) -> str:  # keep tokens out of tracebacks and logs
        return f"TokenResult(expires_at={self.expires_at.isoformat()}, scope={self.scope!r})"

    @classmethod
    def from_msal(cls, result: dict[str, Any], requested: list[str]) -> TokenResult:
        claims = result.get("id_token_claims") or {}
        account = {
            "id": claims.get("oid") or claims.get("sub"),
            "tenant_id": claims.get("tid"),
            "username": claims.get("preferred_username")
            or claims.get("upn")
            or claims.get("email"),
            "display_name": claims.get("name"),
        }
        return cls(
            access_token=result["access_token"],
            refresh_token=result.get("refresh_token"),
            expires_at=datetime.now(UTC) + timedelta(seconds=int(result.get("expires_in", 3600))),
            # OAuth 2.0: an omitted scope means the requested scope was granted.
            scope=str(result.get("scope") or " ".join(requested)),
            account={k: v for k, v in account.items() if v},
        )


def _error_text(result: dict[str, Any]) -> str:
    """Microsoft's error code and the first line of its description (no trace ids)."""
    description = str(result.get("error_description") or "").splitlines()
    return f"{result.get('error')}: {description[0]}" if description else str(result.get("error"))


class MicrosoftOAuthProvider:
    """The authorization-code flow and refreshes, through one MSAL app per process."""

    scopes = ["Team.ReadBasic.All", "Channel.ReadBasic.All", "ChannelMessage.Send", "User.Read"]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # httpx, not requests: an explicit SSL context cannot be overridden by
        # REQUESTS_CA_BUNDLE, so MICROSOFT_CA_BUNDLE always wins.
        self.http_client = httpx.Client(verify=settings.ssl_context(), timeout=15.0)
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()

    @property
    def requested_scopes(self) -> list[str]:
        extra = [s for s in self.settings.microsoft_extra_scopes if s not in RESERVED_SCOPES]
        return list(dict.fromkeys(self.scopes + extra))

    def _build_app(self) -> msal.ConfidentialClientApplication:
        host = urlparse(self.settings.microsoft_authority_host).hostname or ""
        try:
            return msal.ConfidentialClientApplication(
                self.settings.microsoft_client_id,
                client_credential=self.settings.microsoft_client_secret,
                authority=self.settings.authority,
                http_client=self.http_client,
                # Instance discovery only knows Microsoft's own clouds.
                instance_discovery=None if host in WELL_KNOWN_AUTHORITY_HOSTS else False,
                token_cache=_NoTokenCache(),
            )
        except (ValueError, httpx.HTTPError, msal.exceptions.MsalServiceError) as exc:
            logger.warning(
                "Microsoft login discovery failed at %s: %s", self.settings.authority, exc
            )
            raise TransientProviderError(
                f"cannot reach Microsoft login at {self.settings.authority}: "
                "check MICROSOFT_AUTHORITY_HOST, MICROSOFT_CA_BUNDLE and the network, then retry"
            ) from None

    @property
    def app(self) -> msal.ConfidentialClientApplication:
        with self._lock:
            if self._app is None:
                self._app = self._build_app()
            return self._app

    def initiate(self, redirect_uri: str) -> dict[str, Any]:
        """Start a flow; the returned dict (PKCE verifier, state, nonce) must be kept
        server-side and handed back to `complete`."""
        return self.app.initiate_auth_code_flow(
            self.requested_scopes, redirect_uri=redirect_uri, response_mode="query"
        )

    def complete(self, flow: dict[str, Any], params: dict[str, str]) -> TokenResult:
        try:
            result = self._call(lambda app: app.acquire_token_by_auth_code_flow(flow, params))
        # MSAL: ValueError for a state mismatch or a malformed answer, RuntimeError
        # (IdTokenError) for an ID token whose nonce is not this flow's.
        except (ValueError, RuntimeError):
            raise SignInError(
                "the sign-in response does not match this flow: start again",
                what="Microsoft's answer does not belong to this sign-in.",
            ) from None
        if "error" in result:
            logger.info("Authorization code redemption refused: %s", result.get("error"))
            raise SignInError(
                f"Microsoft refused the sign-in ({_error_text(result)}): start again",
                what=f"Microsoft refused to complete the sign-in: {_error_text(result)}",
            )
        return TokenResult.from_msal(result, self.requested_scopes)

    def refresh(self, refresh_token: str, *, fresh_app: bool = False) -> TokenResult:
        """Redeem a refresh token. `fresh_app` bypasses MSAL's per-app replay of a recent
        5xx answer, so a retry really reaches Microsoft."""
        try:
            result = self._call(
                lambda app: app.acquire_token_by_refresh_token(
                    refresh_token, self.requested_scopes
                ),
                fresh_app=fresh_app,
            )
        except ValueError:  # MSAL: the answer was not JSON (a proxy's or a gateway's page)
            raise TransientProviderError("Microsoft login answered with no token") from None
        if "error" not in result:
            return TokenResult.from_msal(result, self.requested_scopes)
        error = result.get("error")
        if error in REAUTHORIZATION_ERRORS:
            raise ReauthorizationRequiredError(_error_text(result))
        if error in CONFIGURATION_ERRORS:
            raise UpstreamError(
                f"Microsoft refused the token request ({_error_text(result)}): "
                "check MICROSOFT_CLIENT_ID, MICROSOFT_CLIENT_SECRET and the app's permissions"
            )
        # temporarily_unavailable, server_error, a 429's body, anything new: keep the grant.
        raise TransientProviderError(f"Microsoft login is unavailable ({_error_text(result)})")

    def _call(self, operation: Any, *, fresh_app: bool = False) -> dict[str, Any]:
        # A new app instance has its own, empty replay cache (and re-reads discovery).
        app = self._build_app() if fresh_app else self.app
        try:
            return operation(app)
        except (httpx.HTTPStatusError, msal.exceptions.MsalServiceError) as exc:
            # MSAL raises on 5xx (and its replay of one) instead of returning an error dict.
            logger.warning("Microsoft token endpoint failed: %s", type(exc).__name__)
            raise TransientProviderError("Microsoft login answered with a server error") from None
        except httpx.TransportError as exc:
            logger.warning("Microsoft token endpoint unreachable: %s", type(exc).__name__)
            raise TransientProviderError("Microsoft login did not answer in time") from None

    def close(self) -> None:
        self.http_client.close()


# -- Microsoft Teams over Microsoft Graph ---------------------------------------------------

ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
# Graph answers a POST with these only when it refused the request, so a resend is safe.
REFUSED_STATUSES = {429, 503}
# Reads are retried on throttling and on these passing failures.
RETRYABLE_READ_STATUSES = {429, 503, 504}
# Graph's largest page of channel messages.
MAX_MESSAGES_PAGE = 50

_shared_http = LoopLocal[httpx.AsyncClient]()


def _shared_http_client(settings: Settings) -> httpx.AsyncClient:
    """The process' keep-alive pool for Graph on the running loop, one per CA bundle."""
    return _shared_http.get(
        ("graph", settings.microsoft_ca_bundle), lambda: _new_http_client(settings)
    )


def _new_http_client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=settings.ssl_context(),
        timeout=httpx.Timeout(30.0, connect=10.0, pool=10.0),
        # Under the idle timeouts of Graph's front doors, so we rarely reuse a dead socket.
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=60),
        headers={"Accept": "application/json"},
    )


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port, with the loopback names taken as one host: a stand-in may
    write its links as `localhost` when it was reached as `127.0.0.1`."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, "loopback" if host in ("localhost", "127.0.0.1", "::1") else host, port


def _channel_path(team_id: str, channel_id: str) -> str:
    return f"/teams/{segment(team_id, 'team_id')}/channels/{segment(channel_id, 'channel_id')}"


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds: Graph sends seconds, HTTP also allows a date."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def graph_error(response: httpx.Response) -> GraphError:
    """Graph's error body as a GraphError with Graph's status; any other body still explains."""
    retry_after = _retry_after(response)
    retry_header = None if retry_after is None else math.ceil(retry_after)
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        inner = error.get("innerError") or error.get("innererror") or {}
        return GraphError(
            response.status_code,
            str(error.get("code") or response.reason_phrase),
            str(error.get("message") or ""),
            inner.get("request-id") or response.headers.get("request-id"),
            retry_header,
        )
    snippet = " ".join(response.text.split())[:200]
    return GraphError(
        response.status_code,
        response.reason_phrase.replace(" ", "") or f"HTTP{response.status_code}",
        f"Microsoft Graph answered {response.status_code} without an error body"
        + (f": {snippet}" if snippet else ""),
        response.headers.get("request-id"),
        retry_header,
    )


class MessageOptions(TypedDict, total=False):
    """How a message is shaped, beyond its content (see `build_message`)."""

    content_type: Literal["text", "html"]
    subject: str | None
    mentions: Sequence[Mention | Mapping[str, str]] | None
    adaptive_card: Mapping[str, Any] | None


def build_message(
    content: str,
    *,
    content_type: Literal["text", "html"] = "text",
    subject: str | None = None,
    mentions: Sequence[Mention | Mapping[str, str]] | None = None,
    adaptive_card: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A chatMessage request body, with mentions and a card in the shapes Graph documents."""
    if content_type not in ("text", "html"):
        raise BadRequestError("content_type must be 'text' or 'html'")
    try:
        people = [
            m if isinstance(m, Mention) else Mention.model_validate(m) for m in mentions or []
        ]
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise BadRequestError(
            f"each mention needs an 'id' (Entra user id) and a 'display_name': {reason}"
        ) from None
    if not people and adaptive_card is None:
        message: dict[str, Any] = {"body": {"contentType": content_type, "content": content}}
    else:
        # Mentions and cards are referenced by tags, which only an html body can hold.
        if content_type == "text":
            content = _text_to_html(content)
        graph_mentions = []
        for index, person in enumerate(people):
            tag = re.search(rf'<at id="{index}">(.*?)</at>', content, re.DOTALL)
            if tag is None:
                content = f'{content} <at id="{index}">{html.escape(person.display_name)}</at>'
            graph_mentions.append(
                {
                    "id": index,
                    "mentionText": html.unescape(tag.group(1)) if tag else person.display_name,
                    "mentioned": {
                        "user": {
                            "id": person.id,
                            "displayName": person.display_name,
                            "userIdentityType": "aadUser",
                        }
                    },
                }
            )
        message = {"body": {"contentType": "html", "content": content.strip()}}
        if graph_mentions:
            message["mentions"] = graph_mentions
        if adaptive_card is not None:
            if not isinstance(adaptive_card, Mapping):
                raise BadRequestError("adaptive_card must be the card's JSON object")
            attachment_id = uuid.uuid4().hex
            message["body"]["content"] += f'<attachment id="{attachment_id}"></attachment>'
            message["attachments"] = [
                {
                    "id": attachment_id,
                    "contentType": ADAPTIVE_CARD,
                    "content": json.dumps(adaptive_card),
                }
            ]
    if subject is not None:
        message["subject"] = subject
    return message


def _text_to_html(text: str) -> str:
    """Escape plain text for an html body, keeping any <at id="n">…</at> tags the caller wrote."""
    escaped = html.escape(text, quote=False).replace("\n", "<br>")
    return re.sub(r'&lt;at id="(\d+)"&gt;(.*?)&lt;/at&gt;', r'<at id="\1">\2</at>', escaped)


def _json_body(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        # Said plainly, since after a 2xx a send did happen and must not be repeated.
        raise GraphError(
            502,
            "InvalidResponse",
            f"Microsoft Graph answered {response.status_code} (success) with a body that is "
            "not a JSON object",
            response.headers.get("request-id"),
        )
    return body


ModelT = TypeVar("ModelT", bound=BaseModel)


def _parse(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise GraphError(
            502,
            "InvalidResponse",
            f"Microsoft Graph sent a {model.__name__} we cannot read: {exc.errors()[0]['msg']}",
        ) from None


class MicrosoftTeamsClient:
    """Microsoft Graph's Teams API for one user's access token.

    By default it uses the process' pooled keep-alive connections, so it needs no closing;
    `async with` or `aclose()` close only a connection pool it opened itself (`pooled=False`).
    """

    max_attempts = 4
    max_retry_wait = 30.0
    backoff_base = 0.5
    max_pages = 100

    def __init__(
        self,
        access_token: str,
        *,
        graph_url: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        pacer: Pacer | None = None,
        settings: Settings | None = None,
        pooled: bool = True,
    ) -> None:
        if not access_token:
            raise ValueError("an access token is required")
        self._access_token = access_token
        self._settings = settings
        self.graph_url = (graph_url or self.settings.microsoft_graph_url).rstrip("/")
        self._graph_origin = _origin(self.graph_url)
        self._http_client = http_client
        self._owns_http = http_client is None and not pooled
        self._pacer = pacer

    def __repr__(self) -> str:  # never the token
        return f"MicrosoftTeamsClient(graph_url={self.graph_url!r})"

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = get_settings()
        return self._settings

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http_client is None:
            if self._owns_http:
                self._http_client = _new_http_client(self.settings)
            else:
                return _shared_http_client(self.settings)
        return self._http_client

    @property
    def pacer(self) -> Pacer:
        if self._pacer is None:
            self._pacer = default_pacer(self.settings)
        return self._pacer

    async def __aenter__(self) -> MicrosoftTeamsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http and self._http_client is not None:
            await self._http_client.aclose()
            self._http_client = None

    # -- Graph operations --------------------------------------------------------------------

    async def get_me(self) -> GraphUser:
        return _parse(GraphUser, await self._get("/me"))

    async def get_user_teams(self) -> list[Team]:
        return [_parse(Team, item) for item in await self._get_all("/me/joinedTeams")]

    async def list_channels(self, team_id: str) -> list[Channel]:
        items = await self._get_all(f"/teams/{segment(team_id, 'team_id')}/channels")
        return [_parse(Channel, item) for item in items]

    async def list_channel_messages(
        self, team_id: str, channel_id: str, *, top: int | None = None
    ) -> list[ChatMessage]:
        if top is not None and top < 1:
            raise BadRequestError("top must be at least 1")
        params = {"$top": str(min(top, MAX_MESSAGES_PAGE))} if top else None
        path = f"{_channel_path(team_id, channel_id)}/messages"
        items = await self._get_all(path, params=params, limit=top)
        return [_parse(ChatMessage, item) for item in items]

    async def send_message(
        self, team_id: str, channel_id: str, content: str, **options: Unpack[MessageOptions]
    ) -> ChatMessage:
        """Post to a channel; `options` as in `build_message`."""
        path = f"{_channel_path(team_id, channel_id)}/messages"
        body = build_message(content, **options)
        return _parse(ChatMessage, await self._send(team_id, channel_id, path, body))

    async def reply_to_message(
        self,
        team_id: str,
        channel_id: str,
        message_id: str,
        content: str,
        **options: Unpack[MessageOptions],
    ) -> ChatMessage:
        """Reply in a message's thread; `options` as in `build_message`."""
        path = (
            f"{_channel_path(team_id, channel_id)}"
            f"/messages/{segment(message_id, 'message_id')}/replies"
        )
        body = build_message(content, **options)
        return _parse(ChatMessage, await self._send(team_id, channel_id, path, body))

    # -- transport ---------------------------------------------------------------------------

    async def _get(self, path_or_url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return await self._request("GET", path_or_url, params=params)

    async def _get_all(
        self, path: str, *, params: dict[str, str] | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Every item of a collection, following @odata.nextLink up to `max_pages` pages."""
        items: list[dict[str, Any]] = []
        url: str | None = path
        for _ in range(self.max_pages):
            page = await self._get(url, params)
            items.extend(page.get("value") or [])
            if limit is not None and len(items) >= limit:
                return items[:limit]
            url, params = page.get("@odata.nextLink"), None  # the link carries the query
            if not url:
                return items
        raise GraphError(
            502,
            "TooManyPages",
            f"Microsoft Graph returned more than {self.max_pages} pages for {path}; "
            "narrow the request",
        )

    async def _send(
        self, team_id: str, channel_id: str, path: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        await self.pacer.acquire(team_id, channel_id)
        return await self._request("POST", path, json=body)

    def _url(self, path_or_url: str) -> str:
        if not path_or_url.startswith(("http://", "https://")):
            return f"{self.graph_url}{path_or_url}"
        # A nextLink elsewhere would receive the user's token: refuse it.
        if _origin(path_or_url) != self._graph_origin:
            raise GraphError(
                502, "UnexpectedNextLink", "Microsoft Graph sent a link outside the Graph URL"
            )
        return path_or_url

    async def _request(
        self,
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
        is_read = method == "GET"
        waited = 0.0
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = await self.http.request(
                    method, url, params=params, json=json, headers=headers
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing was sent: a retry cannot duplicate anything.
                GRAPH_REQUESTS.labels(method=method, status="connect_error").inc()
                failure: GraphError = GraphError(
                    503,
                    "ServiceUnavailable",
                    f"cannot reach Microsoft Graph at {self.graph_url} ({type(exc).__name__}): "
                    "check MICROSOFT_GRAPH_URL, MICROSOFT_CA_BUNDLE and the network",
                )
                delay, reason = None, "connect_error"
            except httpx.TransportError as exc:
                timed_out = isinstance(exc, httpx.TimeoutException)
                GRAPH_REQUESTS.labels(
                    method=method, status="timeout" if timed_out else "transport_error"
                ).inc()
                what = (
                    "Microsoft Graph did not answer in time"
                    if timed_out
                    else (f"the connection to Microsoft Graph broke ({type(exc).__name__})")
                )
                if not is_read:
                    logger.warning("Graph %s outcome unknown: %s", method, type(exc).__name__)
                    raise DeliveryUnknownError(what) from None
                failure = GraphError(504, "GatewayTimeout", what)
                delay, reason = None, "timeout" if timed_out else "transport_error"
            else:
                status = response.status_code
                GRAPH_REQUESTS.labels(method=method, status=str(status)).inc()
                if response.is_success:
                    return _json_body(response)
                failure = graph_error(response)
                delay = _retry_after(response)
                reason = str(status)
                if not is_read and status == 504:
                    logger.warning("Graph %s answered 504: outcome unknown", method)
                    raise DeliveryUnknownError(
                        "Microsoft Graph answered 504 Gateway Timeout"
                    ) from None
                retryable = (
                    status in RETRYABLE_READ_STATUSES
                    if is_read
                    else status in REFUSED_STATUSES and delay is not None
                )
                if not retryable:
                    raise failure
            if attempt == self.max_attempts:
                break
            if delay is None:
                delay = self.backoff_base * 2 ** (attempt - 1) * (0.5 + random.random() / 2)
            if waited + delay > self.max_retry_wait:
                break
            waited += delay
            GRAPH_RETRIES.labels(method=method, reason=reason).inc()
            THROTTLE_WAIT_SECONDS.labels(source="graph").inc(delay)
            logger.info("Graph %s %s: retrying in %.2fs", method, reason, delay)
            await asyncio.sleep(delay)
        raise failure
