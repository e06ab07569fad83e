"""Applying injected faults that replace or delay an answer (see fault_rules.py).

The next-link faults are not here: only the list route knows its page, so
graph_paging.py applies those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response

from tracecat.emulator.errors import aad_fault, graph_fault
from tracecat.emulator.fault_rules import ANSWER_FAULTS, FaultKind, RequestKind
from tracecat.emulator.http_utils import (
    aad_error_response,
    emulator_state,
    graph_error_response,
    raw_path,
)

CallNext = Callable[[Request], Awaitable[Response]]


async def answer(request: Request, kind: RequestKind, call_next: CallNext) -> Response:
    """The response to `request`: the real one, unless a fault rule claims the request."""
    state = emulator_state(request)
    rule = state.faults.take(
        ANSWER_FAULTS, kind, request.method, raw_path(request), request.url.path
    )
    if rule is None:
        return await call_next(request)
    if rule.kind == FaultKind.SLOW:
        # Handled now (a POST is stored at once, as when Graph is slow to answer), answered
        # late: a client that times out cannot know whether its request took effect.
        response = await call_next(request)
        await asyncio.sleep(rule.delay_seconds)
        return response
    if rule.delay_seconds:
        # Lets tests see their client time out; the answer still comes afterwards.
        await asyncio.sleep(rule.delay_seconds)
    status = rule.status or 503
    if rule.kind == FaultKind.NON_JSON:
        headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else {}
        return Response(
            rule.body or "", status_code=status, media_type=rule.content_type, headers=headers
        )
    if kind == RequestKind.GRAPH:
        graph_error = graph_fault(status, rule.code, rule.message, rule.retry_after)
        return graph_error_response(request, graph_error)
    return aad_error_response(request, aad_fault(status, rule.code, rule.message, rule.retry_after))
