"""Injected failures: the next N matching requests get a Microsoft-shaped error."""

from __future__ import annotations

import asyncio
import re

from fastapi import Request

from tracecat.emulator.errors import AadError, GraphError, aad_fault, graph_fault
from tracecat.emulator.http_utils import emulator_state
from tracecat.emulator.state import FaultKind

TOKEN_PATH = re.compile(r"^/[^/]+/oauth2/v2\.0/token/?$")


def request_kind(request: Request) -> FaultKind | None:
    path = request.url.path
    if path == "/v1.0" or path.startswith("/v1.0/"):
        return "graph"
    if path.startswith("/_emulator"):
        return None
    if request.method == "POST" and TOKEN_PATH.match(path):
        return "token"
    return "identity"


async def injected_fault(request: Request, kind: FaultKind) -> AadError | GraphError | None:
    raw_path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    rule = emulator_state(request).take_fault(kind, raw_path, request.url.path)
    if rule is None:
        return None
    if rule.delay_seconds:
        # Lets tests see their client time out; the answer still comes afterwards.
        await asyncio.sleep(rule.delay_seconds)
    if kind == "graph":
        return graph_fault(rule.status, rule.code, rule.message, rule.retry_after)
    return aad_fault(rule.status, rule.code, rule.message, rule.retry_after)
