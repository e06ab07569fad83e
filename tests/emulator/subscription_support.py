"""Helpers for the change-notification tests: subscribing through Graph at the emulator's time."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import httpx
from emulator_support import GENERAL, SECOPS

from tests.utils.webhook import Receiver

Graph = Callable[..., httpx.Response]
Control = Callable[..., httpx.Response]
RESOURCE = f"/teams/{SECOPS}/channels/{GENERAL}/messages"
# Fast and unthrottled: several subscriptions and messages a second, retries in ms.
FAST = {
    "throttling": {"enabled": False},
    "notifications": {"retry_delays": [0.05, 0.1], "timeout_seconds": 2},
}


def iso_in(control: Control, seconds: float) -> str:
    """An expirationDateTime `seconds` after the emulator's now, in Graph's 7-digit style."""
    now = control("GET", "/clock").json()["now"] + seconds
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}0Z"


def subscription_body(control: Control, receiver: Receiver, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "changeType": "created",
        "notificationUrl": f"{receiver.url}/notify",
        "lifecycleNotificationUrl": f"{receiver.url}/lifecycle",
        "resource": RESOURCE,
        "expirationDateTime": iso_in(control, 3 * 3600),
        "clientState": "secret-state",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def subscribe(
    graph: Graph, control: Control, receiver: Receiver, token: str, **overrides: Any
) -> dict[str, Any]:
    created = graph(
        "POST", "/subscriptions", token, json=subscription_body(control, receiver, **overrides)
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body
