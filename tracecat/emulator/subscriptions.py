"""Graph change-notification subscriptions: what the emulator remembers and how it renders them.

One part of EmulatorState (state.py), sharing its lock, clock and change counter.
Only Teams channel messages can be subscribed to (`/teams/{id}/channels/{id}/messages`).
A subscription past its expirationDateTime (by the emulator's clock) is as good as
gone: Graph answers 404 for it and sends it nothing, so every read filters on expiry
rather than relying on a sweeper thread.

Delivery counters live beside the subscriptions but are not saved: like stats.py they
only serve tests, and a reset or restart starts them at zero.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import unquote

from tracecat.emulator.clock import Clock

# Graph's limit for Teams channel messages: 4320 minutes (3 days).
MAX_LIFETIME_SECONDS = 4320 * 60
# Past this, Teams resources insist on a lifecycleNotificationUrl.
LIFECYCLE_URL_REQUIRED_AFTER_SECONDS = 3600
MAX_CLIENT_STATE = 128
TLS_VERSIONS = ("v1_0", "v1_1", "v1_2", "v1_3")
CHANGE_TYPES = ("created", "updated", "deleted")
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
# `/teams/{id}/channels/{id}/messages`, also in Graph's key syntax `teams('id')/channels('id')`.
CHANNEL_MESSAGES = re.compile(
    r"^/?teams(?:/(?P<t1>[^/()']+)|\('(?P<t2>[^']+)'\))"
    r"/channels(?:/(?P<c1>[^/()']+)|\('(?P<c2>[^']+)'\))/messages/?$"
)
_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_channel_messages(resource: str) -> tuple[str, str] | None:
    """(team id, channel id) of a channel-messages resource path, lower-cased; else None."""
    match = CHANNEL_MESSAGES.match(resource.strip())
    if match is None:
        return None
    team = match.group("t1") or match.group("t2")
    channel = unquote(match.group("c1") or match.group("c2"))
    return team.lower(), channel.lower()


def parse_datetime(value: Any) -> float | None:
    """Epoch seconds of an ISO 8601 date-time with a zone (Graph sends 7 fraction digits)."""
    if not isinstance(value, str):
        return None
    text = _FRACTION.sub(r"\1", value.strip()).replace("z", "Z")
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)  # Graph reads a zoneless time as UTC
    return moment.timestamp()


def graph_datetime(timestamp: float) -> str:
    """Graph's rendering of a DateTimeOffset: UTC with seven fraction digits."""
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}0Z"


@dataclass
class Subscription:
    id: str
    resource: str
    team_id: str
    channel_id: str
    application_id: str
    change_type: str
    notification_url: str
    expiration: float
    creator_id: str
    creator_email: str
    client_state: str | None = None
    lifecycle_notification_url: str | None = None
    latest_supported_tls_version: str = "v1_2"
    notification_url_app_id: str | None = None
    # Set by a reauthorizationRequired lifecycle event, cleared by reauthorize or a renewal.
    needs_reauthorization: bool = False

    def resource_json(self) -> dict[str, Any]:
        """The subscription resource as Graph renders it."""
        return {
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_notification_url,
            "expirationDateTime": graph_datetime(self.expiration),
            "creatorId": self.creator_id,
            "includeResourceData": None,
            "latestSupportedTlsVersion": self.latest_supported_tls_version,
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": self.notification_url_app_id,
        }


@dataclass
class DeliveryCounters:
    attempts: int = 0
    delivered: int = 0
    failed: int = 0  # notifications given up on after the last retry
    last_status: str | None = None  # an HTTP status, "timeout" or "error"
    lifecycle_sent: int = 0


@dataclass
class _Entry:
    subscription: Subscription
    counters: DeliveryCounters = field(default_factory=DeliveryCounters)


class SubscriptionStore:
    def __init__(self, lock: threading.RLock, clock: Clock, changed: Callable[[], None]) -> None:
        self._lock = lock
        self._clock = clock
        self._changed = changed  # called under the lock after every change persistence saves
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._entries: dict[str, _Entry] = {}

    def load(self, subscriptions: Iterable[Subscription]) -> None:
        with self._lock:
            self.clear()
            for subscription in subscriptions:
                self._entries[subscription.id] = _Entry(subscription)

    def export(self) -> list[dict[str, Any]]:
        """Every unexpired subscription as plain data, for persistence.py."""
        with self._lock:
            return [asdict(entry.subscription) for entry in self._live()]

    def _live(self) -> list[_Entry]:
        now = self._clock.now()
        return [e for e in self._entries.values() if e.subscription.expiration > now]

    def _entry(self, subscription_id: str) -> _Entry | None:
        entry = self._entries.get(subscription_id.lower())
        if entry is None or entry.subscription.expiration <= self._clock.now():
            return None
        return entry

    # -- reads: copies, so callers never race a renewal ---------------------------------

    def get(self, subscription_id: str) -> Subscription | None:
        with self._lock:
            entry = self._entry(subscription_id)
            return replace(entry.subscription) if entry else None

    def for_app(self, app_id: str, creator_id: str | None = None) -> list[Subscription]:
        with self._lock:
            return [
                replace(e.subscription)
                for e in self._live()
                if e.subscription.application_id == app_id
                and (creator_id is None or e.subscription.creator_id == creator_id)
            ]

    def watching(self, team_id: str, channel_id: str) -> list[Subscription]:
        """Live subscriptions to the channel's messages that want `created` notifications."""
        with self._lock:
            return [
                replace(e.subscription)
                for e in self._live()
                if (e.subscription.team_id, e.subscription.channel_id)
                == (team_id.lower(), channel_id.lower())
                and "created" in e.subscription.change_type.split(",")
            ]

    def report(self) -> list[dict[str, Any]]:
        """GET /_emulator/subscriptions: each live subscription with its delivery counters."""
        with self._lock:
            return [
                {
                    **e.subscription.resource_json(),
                    "needsReauthorization": e.subscription.needs_reauthorization,
                    "delivery": asdict(e.counters),
                }
                for e in self._live()
            ]

    # -- changes -----------------------------------------------------------------------------

    def add(self, subscription: Subscription) -> None:
        with self._lock:
            self._entries[subscription.id] = _Entry(subscription)
            self._changed()

    def renew(self, subscription_id: str, expiration: float) -> Subscription | None:
        with self._lock:
            entry = self._entry(subscription_id)
            if entry is None:
                return None
            entry.subscription.expiration = expiration
            entry.subscription.needs_reauthorization = False
            self._changed()
            return replace(entry.subscription)

    def set_reauthorization(self, subscription_id: str, needed: bool) -> bool:
        with self._lock:
            entry = self._entry(subscription_id)
            if entry is None:
                return False
            entry.subscription.needs_reauthorization = needed
            self._changed()
            return True

    def remove(self, subscription_id: str) -> Subscription | None:
        with self._lock:
            entry = self._entry(subscription_id)
            if entry is None:
                return None
            del self._entries[entry.subscription.id]
            self._changed()
            return entry.subscription

    def is_live(self, subscription_id: str) -> bool:
        with self._lock:
            return self._entry(subscription_id) is not None

    def record_attempt(self, subscription_id: str, outcome: str) -> None:
        with self._lock:
            entry = self._entries.get(subscription_id)
            if entry is not None:
                entry.counters.attempts += 1
                entry.counters.last_status = outcome

    def record_result(self, subscription_id: str, *, delivered: bool) -> None:
        with self._lock:
            entry = self._entries.get(subscription_id)
            if entry is not None:
                if delivered:
                    entry.counters.delivered += 1
                else:
                    entry.counters.failed += 1

    def record_lifecycle(self, subscription_id: str) -> None:
        with self._lock:
            entry = self._entries.get(subscription_id)
            if entry is not None:
                entry.counters.lifecycle_sent += 1
