"""Keeping the emulator's state in a JSON file, so a restarted emulator keeps its users signed in.

The only place that knows the file's layout: `snapshot()` turns what must outlive a
restart (users, grants, revocation marks, memberships, messages, apps, config,
change-notification subscriptions) into
plain JSON-ready data and `restore()` brings it back. Authorization codes, faults,
counters and the clock offset are left out: codes live minutes and the rest only
serves tests.

Requests only bump the state's version; a background thread notices and writes a
snapshot at most every FLUSH_INTERVAL_SECONDS, and once more on stop. The disk is
never touched on the request path, except for removing the file on a reset.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tracecat.emulator.config import EmulatorConfig
from tracecat.emulator.files import write_private
from tracecat.emulator.identity_store import (
    AppRegistration,
    DirectoryUser,
    IssuedAccessToken,
    RefreshGrant,
)
from tracecat.emulator.state import EmulatorState
from tracecat.emulator.subscriptions import Subscription
from tracecat.emulator.teams_store import StoredMessage

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_SECONDS = 0.5
STATE_FILE = "state.json"
# Bumped whenever the snapshot's layout changes; an older file is then ignored.
SNAPSHOT_FORMAT = 1


def snapshot(state: EmulatorState) -> tuple[int, dict[str, Any]]:
    """The persistent part as plain JSON-ready data, with the version it reflects.

    The result shares no mutable object with the live state (message resources
    are never changed once stored), so it can be serialized outside the lock.
    """
    identity, teams = state.identity, state.teams
    with state.lock:
        data = {
            "format": SNAPSHOT_FORMAT,
            "config": state.config.to_dict(),
            "apps": [app.public() for app in identity.apps.values()],
            "users": [asdict(user) for user in identity.users.values()],
            "refresh_tokens": [
                {**asdict(grant), "scopes": list(grant.scopes)}
                for grant in identity.refresh_grants.values()
            ],
            # Kept so revocation compares the exact issue time, not the whole-second iat.
            "access_tokens": [asdict(record) for record in identity.access_tokens.values()],
            "revoked_jtis": sorted(identity.revoked_jtis),
            "members": {team: sorted(emails) for team, emails in teams.members.items()},
            # In the order they were posted, so replies follow their root.
            "messages": [
                {
                    "id": message.id,
                    "team_id": message.team_id,
                    "channel_id": message.channel_id,
                    "reply_to_id": message.reply_to_id,
                    "sender_email": message.sender_email,
                    "resource": message.resource,
                }
                for message in teams.all_messages
            ],
            "last_message_ms": teams.last_message_ms,
            "subscriptions": state.subscriptions.export(),
        }
        return state.version, data


def restore(state: EmulatorState, data: Any) -> None:
    """Replace the persistent part with a snapshot() result.

    Raise ValueError (or KeyError, TypeError, AttributeError) on a malformed snapshot, leaving
    the state as it was: everything is parsed before anything is replaced.
    """
    if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
        raise ValueError("not an emulator state snapshot of a known format")
    config = EmulatorConfig().patched(data["config"])
    apps: dict[str, AppRegistration] = {}
    for fields_ in data["apps"]:
        app = AppRegistration(**{**fields_, "scopes": tuple(fields_["scopes"])})
        apps[app.client_id] = app
    users = {u.email: u for u in (DirectoryUser(**fields_) for fields_ in data["users"])}
    refresh: dict[str, RefreshGrant] = {}
    for fields_ in data["refresh_tokens"]:
        grant = RefreshGrant(**{**fields_, "scopes": tuple(fields_["scopes"])})
        refresh[grant.token] = grant
    access = {r.jti: r for r in (IssuedAccessToken(**f) for f in data["access_tokens"])}
    revoked_jtis = {str(jti) for jti in data["revoked_jtis"]}
    members: defaultdict[str, set[str]] = defaultdict(set)
    for team_id, emails in data["members"].items():
        members[team_id] = {str(email) for email in emails}
    messages = [StoredMessage(**fields_) for fields_ in data["messages"]]
    roots: set[tuple[str, str]] = set()
    for message in messages:
        if message.reply_to_id is None:
            roots.add((message.channel_id, message.id))
        elif (message.channel_id, message.reply_to_id) not in roots:
            raise ValueError(f"reply {message.id} comes before its root message")
    last_message_ms = int(data["last_message_ms"])
    # Absent from files written before subscriptions existed: same format, none saved.
    subscriptions = [Subscription(**fields_) for fields_ in data.get("subscriptions", [])]
    with state.lock:
        state.clear()
        state.replace_config(config)
        identity = state.identity
        identity.apps.update(apps)
        identity.users = users
        identity.refresh_grants = refresh
        identity.access_tokens = access
        identity.revoked_jtis = revoked_jtis
        state.teams.load(members, messages, last_message_ms)
        state.subscriptions.load(subscriptions)
        state.changed()


class StatePersister:
    """Load `path` into `state` once, then save it whenever it changed, until stop()."""

    def __init__(self, state: EmulatorState, path: Path) -> None:
        self.state = state
        self.path = path
        # Orders writes against removal; never held while taking the state lock.
        self._file_lock = threading.Lock()
        # The highest version on disk, or known to need nothing on disk (a reset).
        self._saved_version = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> None:
        """Restore the saved state if there is any; a bad file is reported and ignored."""
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            data = None
        except (OSError, ValueError) as exc:
            logger.warning("Emulator state in %s is unreadable, starting empty: %s", self.path, exc)
            data = None
        if data is not None:
            try:
                restore(self.state, data)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                logger.warning(
                    "Emulator state in %s is not usable, starting empty: %r", self.path, exc
                )
        # What was just loaded (or the empty state) needs no immediate rewrite.
        self._saved_version = self.state.version
        self.state.on_reset = self.clear

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="microsoft-emulator-state", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the background writer and save whatever it has not saved yet."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def flush(self) -> None:
        """Write a snapshot if the state changed since the last one; failures only warn."""
        if self.state.version <= self._saved_version:
            return
        version, data = snapshot(self.state)
        # Serialized outside both locks: requests only wait for the snapshot itself.
        payload = json.dumps(data, separators=(",", ":")).encode()
        with self._file_lock:
            # A reset after this snapshot was taken has already removed the file; an older
            # snapshot must not bring the forgotten state back.
            if version <= self._saved_version:
                return
            try:
                write_private(self.path, payload)
            except OSError as exc:
                logger.warning("Could not save the emulator state to %s: %s", self.path, exc)
                return
            self._saved_version = version

    def clear(self, version: int) -> None:
        """Forget the saved state: the state was reset, leaving it at `version`."""
        with self._file_lock:
            if self._saved_version >= version:
                return  # the file already holds what came after the reset
            self._saved_version = version
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("Could not remove the emulator state %s: %s", self.path, exc)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_SECONDS):
            self.flush()
