"""Outbound calls to a subscriber: the validation handshake, change and lifecycle notifications.

Graph calls the app's endpoints from the outside, so this is the one part of the
emulator that makes HTTP requests. It is a product feature (a developer points
`serve --emulator` at their own webhook), so any http or https URL is allowed, https
verified against the system's CAs, each request given `timeout_seconds` (Graph: 10 s).

Deliveries never hold up the request that caused them: each notification gets its own
daemon thread, which tries once, then once more after each of the configured
`retry_delays`, and gives up after the last. Graph gives no ordering guarantee and may
send a notification twice, and one thread per notification reproduces the first for
free; `notifications.duplicate` forces the second. A reset (or the server stopping)
cancels every pending retry, so no notification from before a reset arrives after it.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import uuid
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from tracecat.emulator.subscriptions import Subscription, graph_datetime

if TYPE_CHECKING:
    from tracecat.emulator.state import EmulatorState
    from tracecat.emulator.teams_store import StoredMessage

logger = logging.getLogger(__name__)

# Graph asks endpoints to answer within 3 s and treats slower ones as slow (and may drop
# their notifications); the emulator only counts them, so tests can see it happening.
SLOW_ANSWER_SECONDS = 3.0
CHAT_MESSAGE_TYPE = "#Microsoft.Graph.chatMessage"


@lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    """The system's trust store, not certifi's: a developer's own CA is usually there."""
    return ssl.create_default_context()


def _with_token(url: str, token: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}validationToken={quote(token, safe='')}"


async def validate_endpoint(url: str, *, timeout_seconds: float) -> str | None:
    """Graph's handshake: POST ?validationToken=..., expect it back as text/plain; None if OK.

    The token has spaces and a colon like Graph's, so an endpoint that forgets to
    url-decode it fails here rather than against Microsoft."""
    token = (
        "Validation: Testing client application reachability for subscription "
        f"Request-Id: {uuid.uuid4()}"
    )
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    try:
        async with httpx.AsyncClient(verify=_tls(), timeout=timeout_seconds) as client:
            answer = await client.post(_with_token(url, token), content=b"", headers=headers)
    except httpx.TimeoutException:
        return "Subscription validation request timed out."
    except httpx.HTTPError:
        return (
            "Subscription validation request failed. Notification endpoint must respond with "
            "200 OK to validation request."
        )
    media_type = answer.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if answer.status_code != 200:
        return (
            "Subscription validation request failed. Notification endpoint must respond with "
            "200 OK to validation request."
        )
    if media_type != "text/plain" or answer.text != token:
        return (
            "Subscription validation request failed. Response must exactly match "
            "validationToken query parameter."
        )
    return None


def resource_path(message: StoredMessage) -> str:
    """The notification's `resource` (and `@odata.id`): Graph's key syntax, ids unencoded."""
    path = f"teams('{message.team_id}')/channels('{message.channel_id}')"
    if message.reply_to_id is None:
        return f"{path}/messages('{message.id}')"
    return f"{path}/messages('{message.reply_to_id}')/replies('{message.id}')"


def change_notification(
    subscription: Subscription, message: StoredMessage, tenant_id: str
) -> dict[str, Any]:
    path = resource_path(message)
    return {
        "value": [
            {
                "subscriptionId": subscription.id,
                "subscriptionExpirationDateTime": graph_datetime(subscription.expiration),
                "changeType": "created",
                "clientState": subscription.client_state,
                "resource": path,
                "resourceData": {
                    "id": message.id,
                    "@odata.type": CHAT_MESSAGE_TYPE,
                    "@odata.id": path,
                },
                "tenantId": tenant_id,
            }
        ]
    }


def lifecycle_notification(
    subscription: Subscription, event: str, tenant_id: str
) -> dict[str, Any]:
    return {
        "value": [
            {
                "subscriptionId": subscription.id,
                "subscriptionExpirationDateTime": graph_datetime(subscription.expiration),
                "tenantId": tenant_id,
                "clientState": subscription.client_state,
                "lifecycleEvent": event,
            }
        ]
    }


class Notifier:
    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self._lock = threading.Lock()
        # Pending deliveries wait on the event of their generation; cancel() sets it and
        # starts a new one, so they wake at once and see they belong to the past.
        self._generation = 0
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        with self._lock:
            self._generation += 1
            self._cancelled.set()
            self._cancelled = threading.Event()

    def message_created(self, message: StoredMessage) -> int:
        """Notify every subscription watching the message's channel; return how many."""
        state = self._state
        watching = state.subscriptions.watching(message.team_id, message.channel_id)
        copies = 2 if state.config.notifications.duplicate else 1
        for subscription in watching:
            payload = change_notification(subscription, message, state.tenant_id)
            for _ in range(copies):
                self._start(subscription, subscription.notification_url, payload, "change")
        return len(watching)

    def lifecycle(self, subscription: Subscription, event: str) -> None:
        url = subscription.lifecycle_notification_url
        if url is None:
            return
        payload = lifecycle_notification(subscription, event, self._state.tenant_id)
        self._state.subscriptions.record_lifecycle(subscription.id)
        self._start(subscription, url, payload, "lifecycle")

    def _start(
        self, subscription: Subscription, url: str, payload: dict[str, Any], kind: str
    ) -> None:
        with self._lock:
            generation, cancelled = self._generation, self._cancelled
        thread = threading.Thread(
            target=self._deliver,
            args=(generation, cancelled, subscription.id, url, json.dumps(payload), kind),
            name=f"emulator-notify-{subscription.id[:8]}",
            daemon=True,
        )
        thread.start()

    def _current(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation

    def _deliver(
        self,
        generation: int,
        cancelled: threading.Event,
        subscription_id: str,
        url: str,
        body: str,
        kind: str,
    ) -> None:
        state = self._state
        config = state.config.notifications
        delays = [0.0, *config.retry_delays]
        for attempt, delay in enumerate(delays):
            if delay and cancelled.wait(delay):
                return
            if not self._current(generation):
                return
            # Graph stops delivering for a subscription once it is deleted or expired; a
            # lifecycle notification is what announces the removal, so it is still sent.
            if kind == "change" and not state.subscriptions.is_live(subscription_id):
                return
            outcome, seconds = self._post(url, body, config.timeout_seconds)
            if not self._current(generation):
                return  # reset while posting: the counters now belong to what came after
            delivered = outcome.isdigit() and 200 <= int(outcome) < 300
            state.subscriptions.record_attempt(subscription_id, outcome)
            state.stats.record_notification_attempt(
                kind, outcome, seconds, retry=attempt > 0, slow=seconds > SLOW_ANSWER_SECONDS
            )
            if delivered:
                state.subscriptions.record_result(subscription_id, delivered=True)
                state.stats.record_notification_result(kind, delivered=True)
                return
        state.subscriptions.record_result(subscription_id, delivered=False)
        state.stats.record_notification_result(kind, delivered=False)
        logger.info("Gave up delivering a %s notification to %s", kind, url)

    @staticmethod
    def _post(url: str, body: str, timeout: float) -> tuple[str, float]:
        """("202" or another status, "timeout" or "error"; seconds the answer took)."""
        started = time.monotonic()
        headers = {"Content-Type": "application/json; charset=utf-8"}
        try:
            with httpx.Client(verify=_tls(), timeout=timeout) as client:
                answer = client.post(url, content=body.encode(), headers=headers)
            outcome = str(answer.status_code)
        except httpx.TimeoutException:
            outcome = "timeout"
        except httpx.HTTPError:
            outcome = "error"
        return outcome, time.monotonic() - started
