"""Reading Graph's answers: errors as `GraphError` (Graph's body, or any other body said
plainly), `Retry-After` in seconds, success bodies as JSON objects and typed resources, and
which host a link points to. Used by `transport.py`'s one request path."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from tracecat.exceptions import GraphError

ModelT = TypeVar("ModelT", bound=BaseModel)


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port, with the loopback names taken as one host: a stand-in may
    write its links as `localhost` when it was reached as `127.0.0.1`."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, "loopback" if host in ("localhost", "127.0.0.1", "::1") else host, port


def retry_after(response: httpx.Response) -> float | None:
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
    seconds = retry_after(response)
    retry_header = None if seconds is None else math.ceil(seconds)
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


def json_body(response: httpx.Response) -> dict[str, Any]:
    """A success's body, which must be a JSON object (or empty)."""
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


def parse(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """`data` as `model`; a resource we cannot read is Graph's fault (502), not the caller's."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise GraphError(
            502,
            "InvalidResponse",
            f"Microsoft Graph sent a {model.__name__} we cannot read: {exc.errors()[0]['msg']}",
        ) from None
