"""Everything the emulator remembers, in memory, behind one lock.

The server answers requests on its own thread while tests read and change the
state from theirs. EmulatorState owns the one lock and the clock and composes
the parts, each of which takes that same lock in every public method:

    state.identity   apps, users, codes, refresh grants, access tokens (identity_store.py)
    state.teams      teams, memberships, messages (teams_store.py)
    state.faults     injected fault rules (fault_rules.py)
    state.stats      counters and the Graph request log (stats.py)
    state.subscriptions  change-notification subscriptions (subscriptions.py)

state.notifier (notifier.py) is not state but the outbound side: it posts change and
lifecycle notifications from its own threads, never under the lock.

One lock rather than one per part, because some changes span parts (a first
sign-in creates the user and their memberships) and a snapshot must see all of
them at one instant. Every change persistence.py saves bumps `version`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from tracecat.emulator.clock import Clock
from tracecat.emulator.config import EmulatorConfig
from tracecat.emulator.constants import TENANT_DOMAIN, TENANT_ID
from tracecat.emulator.fault_rules import FaultStore
from tracecat.emulator.identity_store import DirectoryUser, IdentityStore, describe_user
from tracecat.emulator.keys import SigningKey
from tracecat.emulator.notifier import Notifier
from tracecat.emulator.stats import Stats
from tracecat.emulator.subscriptions import SubscriptionStore
from tracecat.emulator.teams_store import StoredMessage, TeamsStore
from tracecat.emulator.throttle import RateLimiter

# Importable from here as before (tests use it to predict display names).
__all__ = ["EmulatorState", "describe_user"]


class EmulatorState:
    def __init__(self, signing_key: SigningKey | None = None) -> None:
        self.signing_key = signing_key or SigningKey.generate()
        self.tenant_id = TENANT_ID
        self.tenant_domain = TENANT_DOMAIN
        # Set by EmulatorServer once ports are known; otherwise URLs follow the request.
        self.https_base: str | None = None
        self.http_base: str | None = None
        self.lock = threading.RLock()
        self.clock = Clock()
        self._version = 0
        self._config = EmulatorConfig()
        self._limiter = RateLimiter()
        self.identity = IdentityStore(self.lock, self.clock, self.changed, lambda: self._config)
        self.teams = TeamsStore(self.lock, self.clock, self.changed)
        self.faults = FaultStore(self.lock)
        self.stats = Stats(self.lock)
        self.subscriptions = SubscriptionStore(self.lock, self.clock, self.changed)
        self.notifier = Notifier(self)
        # Called with the new version after every reset, outside the lock, so a
        # persisted copy can be dropped too (POST /_emulator/reset forgets everything).
        self.on_reset: Callable[[int], None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.clear()
            self.changed()
            version = self._version
        if self.on_reset is not None:
            self.on_reset(version)

    def clear(self) -> None:
        """Back to a fresh emulator, without telling on_reset (a restore calls this too)."""
        with self.lock:
            self._config = EmulatorConfig()
            self.clock.reset()
            self._limiter = RateLimiter()
            self.identity.clear()
            self.teams.clear()
            self.faults.clear()
            self.stats.clear()
            self.subscriptions.clear()
        # Retries pending from before must not reach whoever subscribes next.
        self.notifier.cancel()

    def changed(self) -> None:
        """Note a change to what persistence.py saves; callers hold the lock."""
        self._version += 1

    @property
    def version(self) -> int:
        with self.lock:
            return self._version

    # -- time ------------------------------------------------------------------------

    def now(self) -> float:
        """The emulator's time, epoch seconds: what every expiry and timestamp reads."""
        return self.clock.now()

    def advance_clock(self, seconds: float) -> float:
        """Move the emulator's time forward; return the total offset from real time."""
        with self.lock:
            return self.clock.advance(seconds)

    # -- config ------------------------------------------------------------------------

    @property
    def config(self) -> EmulatorConfig:
        with self.lock:
            return self._config

    def patch_config(self, patch: dict[str, Any]) -> EmulatorConfig:
        with self.lock:
            self._config = self._config.patched(patch)
            self.changed()
            return self._config

    def replace_config(self, config: EmulatorConfig) -> None:
        with self.lock:
            self._config = config
            self.changed()

    # -- spanning the parts ----------------------------------------------------------------

    def sign_in(self, email: str) -> DirectoryUser:
        """Find the user by email, creating them (and their team memberships) on first use."""
        with self.lock:
            user, created = self.identity.ensure_user(email)
            if created:
                self.teams.join_open_teams(user.email)
            return user

    def store_message(self, message: StoredMessage) -> None:
        """Keep a new message or reply and notify the subscriptions watching its channel.

        The notifications go out from their own threads: the caller is not held up."""
        self.teams.add_message(message)
        self.notifier.message_created(message)

    def admit(self, checks: Sequence[tuple[tuple[str, ...], int]]) -> int | None:
        """Rate-limit one Graph request; return Retry-After seconds if refused."""
        with self.lock:
            if not self._config.throttling.enabled:
                return None
            retry_after = self._limiter.admit(checks, self.clock.monotonic())
            if retry_after is not None:
                self.stats.record_throttled()
            return retry_after

    def stats_report(self) -> dict[str, Any]:
        with self.lock:
            return self.stats.report(messages_stored=len(self.teams.all_messages))
