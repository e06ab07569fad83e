"""Request helpers shared by the identity, Graph and control routers."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import Request

from tracecat.emulator.state import EmulatorState


def emulator_state(request: Request) -> EmulatorState:
    return request.app.state.emulator


def https_base(request: Request) -> str:
    """Where the HTTPS listener is published (issuer, token endpoint, Graph)."""
    state = emulator_state(request)
    return state.https_base or str(request.base_url).rstrip("/")


def http_base(request: Request) -> str:
    """Where browsers are sent: the plain-HTTP loopback listener, which needs no CA trust."""
    state = emulator_state(request)
    return state.http_base or str(request.base_url).rstrip("/")


def graph_base(request: Request) -> str:
    return f"{https_base(request)}/v1.0"


async def read_form(request: Request) -> dict[str, str]:
    """Parse an application/x-www-form-urlencoded body; the first value of a repeated key wins.

    Parsed by hand because python-multipart, which FastAPI's Form needs, is not a dependency.
    """
    body = (await request.body()).decode("utf-8", errors="replace")
    form: dict[str, str] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        form.setdefault(key, value)
    return form
