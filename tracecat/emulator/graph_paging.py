"""OData paging as Graph does it: `value`, and an absolute `@odata.nextLink` with `$skiptoken`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import Request

from tracecat.emulator.encoding import b64url, b64url_decode
from tracecat.emulator.errors import graph_bad_request
from tracecat.emulator.http_utils import https_base

T = TypeVar("T")


def _encode(key: str) -> str:
    return b64url(json.dumps({"after": key}).encode())


def _decode(token: str) -> str:
    try:
        raw = b64url_decode(token)
        key = json.loads(raw)["after"]
    except (ValueError, KeyError, TypeError) as exc:
        raise graph_bad_request("The $skiptoken value is not valid.") from exc
    if not isinstance(key, str):
        raise graph_bad_request("The $skiptoken value is not valid.")
    return key


def _top(request: Request, max_top: int | None) -> int | None:
    raw = request.query_params.get("$top")
    if raw is None or max_top is None:
        return None  # collections without $top support ignore it, like Graph
    if not raw.isdigit() or not 1 <= int(raw) <= max_top:
        raise graph_bad_request(
            f"Invalid page size specified: '{raw}'. Must be between 1 and {max_top}."
        )
    return int(raw)


def collection_page(
    request: Request,
    items: Sequence[T],
    *,
    key: Callable[[T], str],
    render: Callable[[T], dict[str, Any]],
    context: str,
    page_size: int,
    max_top: int | None = None,
) -> dict[str, Any]:
    """One page of `items` (already in answer order), resuming after the skiptoken's item.

    The token names the last item served rather than an offset, so messages posted
    while a client pages do not shift or repeat what it sees.
    """
    top = _top(request, max_top)
    size = top or page_size
    start = 0
    token = request.query_params.get("$skiptoken")
    if token is not None:
        after = _decode(token)
        positions = [i for i, item in enumerate(items) if key(item) == after]
        if not positions:
            raise graph_bad_request("The $skiptoken value is not valid.")
        start = positions[0] + 1
    chunk = items[start : start + size]
    body: dict[str, Any] = {"@odata.context": context}
    if max_top is not None:
        body["@odata.count"] = len(chunk)
    body["value"] = [render(item) for item in chunk]
    if start + size < len(items):
        query = [f"$top={top}"] if top else []
        query.append(f"$skiptoken={_encode(key(chunk[-1]))}")
        path = quote(request.url.path, safe="/")
        body["@odata.nextLink"] = f"{https_base(request)}{path}?{'&'.join(query)}"
    return body
