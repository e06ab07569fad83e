"""OData paging as Graph does it: `value`, and an absolute `@odata.nextLink` with `$skiptoken`.

Also where the next-link faults (fault_rules.py) take effect, since only the list
route knows which page it is serving:

  * endless_next_link: the page links to one more page even when it is the last;
    that page is served normally (empty once past the end) and links on again, each
    link different from the ones before, for as long as the rule has uses left.
  * foreign_next_link: the page's link (one is added on the last page) points to
    the rule's `next_link_base` instead of the emulator.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import Request

from tracecat.emulator.encoding import b64url, b64url_decode
from tracecat.emulator.errors import graph_bad_request
from tracecat.emulator.fault_rules import NEXT_LINK_FAULTS, FaultKind, FaultRule, RequestKind
from tracecat.emulator.http_utils import emulator_state, https_base, raw_path

T = TypeVar("T")


def _encode(key: str | None, link_number: int = 0) -> str:
    token: dict[str, Any] = {"after": key}
    if link_number:
        # Only in links a fault made up: keeps each one different from the last.
        token["fault_link"] = link_number
    return b64url(json.dumps(token).encode())


def _decode(token: str) -> tuple[str | None, int]:
    """The key of the last item served before, and the number of made-up links so far."""
    try:
        raw = json.loads(b64url_decode(token))
        key = raw["after"]
        link_number = int(raw.get("fault_link", 0))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise graph_bad_request("The $skiptoken value is not valid.") from exc
    # A made-up link past the end of an empty collection has no item to resume after.
    if not (isinstance(key, str) or (key is None and link_number)):
        raise graph_bad_request("The $skiptoken value is not valid.")
    return key, link_number


def _top(request: Request, max_top: int | None) -> int | None:
    raw = request.query_params.get("$top")
    if raw is None or max_top is None:
        return None  # collections without $top support ignore it, like Graph
    if not raw.isdigit() or not 1 <= int(raw) <= max_top:
        raise graph_bad_request(
            f"Invalid page size specified: '{raw}'. Must be between 1 and {max_top}."
        )
    return int(raw)


def _next_link_fault(request: Request) -> FaultRule | None:
    return emulator_state(request).faults.take(
        NEXT_LINK_FAULTS, RequestKind.GRAPH, request.method, raw_path(request), request.url.path
    )


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
    start, after, link_number = 0, None, 0
    token = request.query_params.get("$skiptoken")
    if token is not None:
        after, link_number = _decode(token)
        if after is not None:
            positions = [i for i, item in enumerate(items) if key(item) == after]
            if not positions:
                raise graph_bad_request("The $skiptoken value is not valid.")
            start = positions[0] + 1
    chunk = items[start : start + size]
    body: dict[str, Any] = {"@odata.context": context}
    if max_top is not None:
        body["@odata.count"] = len(chunk)
    body["value"] = [render(item) for item in chunk]
    last_key = key(chunk[-1]) if chunk else after
    fault = _next_link_fault(request)
    if start + size < len(items) or fault is not None:
        query = [f"$top={top}"] if top else []
        if fault is not None and start + size >= len(items):
            query.append(f"$skiptoken={_encode(last_key, link_number + 1)}")
        else:
            query.append(f"$skiptoken={_encode(last_key)}")
        base = https_base(request)
        if fault is not None and fault.kind == FaultKind.FOREIGN_NEXT_LINK:
            base = fault.next_link_base or base
        path = quote(request.url.path, safe="/")
        body["@odata.nextLink"] = f"{base}{path}?{'&'.join(query)}"
    return body
