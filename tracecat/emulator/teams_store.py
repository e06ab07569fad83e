"""What the Teams side of Graph remembers: the tenant's teams, who is in them, messages.

One part of EmulatorState (state.py), sharing its lock, clock and change counter.
The collections are plain attributes so persistence.py can export and replace them;
anyone touching them directly holds the state's lock.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tracecat.emulator.clock import Clock
from tracecat.emulator.demo_data import EmulatedTeam, build_teams


@dataclass
class StoredMessage:
    id: str
    team_id: str
    channel_id: str
    reply_to_id: str | None
    sender_email: str
    resource: dict[str, Any]
    replies: list[StoredMessage] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "team_id": self.team_id,
            "channel_id": self.channel_id,
            "reply_to_id": self.reply_to_id,
            "sender": self.sender_email,
            "chat_message": self.resource,
        }


class TeamsStore:
    def __init__(self, lock: threading.RLock, clock: Clock, changed: Callable[[], None]) -> None:
        self._lock = lock
        self._clock = clock
        # Called (under the lock) after every change that persistence.py saves.
        self._changed = changed
        self.clear()

    def clear(self) -> None:
        with self._lock:
            # Built from fixed names, so they are the same after a reset or restart.
            self.teams: dict[str, EmulatedTeam] = {team.id: team for team in build_teams()}
            self.members: defaultdict[str, set[str]] = defaultdict(set)
            # Root messages per channel; replies hang off their root.
            self._channel_messages: defaultdict[str, list[StoredMessage]] = defaultdict(list)
            # Every message and reply in the order posted (what persistence.py saves).
            self.all_messages: list[StoredMessage] = []
            self.last_message_ms = 0

    def load(
        self, members: dict[str, set[str]], messages: Iterable[StoredMessage], last_ms: int
    ) -> None:
        """Replace memberships and messages (a restore); replies must follow their root."""
        with self._lock:
            self.clear()
            self.members.update(members)
            for message in messages:
                self._store(message)
            self.last_message_ms = last_ms

    # -- teams -------------------------------------------------------------------------

    def team(self, team_id: str) -> EmulatedTeam | None:
        with self._lock:
            return self.teams.get(team_id.lower())

    def is_member(self, team_id: str, email: str) -> bool:
        with self._lock:
            return email in self.members.get(team_id.lower(), set())

    def joined_teams(self, email: str) -> list[EmulatedTeam]:
        with self._lock:
            return [t for t in self.teams.values() if email in self.members.get(t.id, set())]

    def join_open_teams(self, email: str) -> None:
        """What a new user gets: membership of every team open to all users."""
        with self._lock:
            for team in self.teams.values():
                if team.open_to_all_users:
                    self.members[team.id].add(email)
            self._changed()

    # -- messages ----------------------------------------------------------------------

    def next_message_id(self) -> str:
        """Epoch milliseconds like Graph, bumped when two messages share a millisecond."""
        with self._lock:
            now_ms = int(self._clock.now() * 1000)
            self.last_message_ms = max(self.last_message_ms + 1, now_ms)
            return str(self.last_message_ms)

    def add_message(self, message: StoredMessage) -> None:
        with self._lock:
            self._store(message)
            self._changed()

    def _store(self, message: StoredMessage) -> None:
        with self._lock:
            if message.reply_to_id is None:
                self._channel_messages[message.channel_id].append(message)
            else:
                parent = self.message(message.channel_id, message.reply_to_id)
                if parent is None:
                    raise KeyError(message.reply_to_id)
                parent.replies.append(message)
            self.all_messages.append(message)

    def messages(self, channel_id: str) -> list[StoredMessage]:
        """The channel's root messages, oldest first."""
        with self._lock:
            return list(self._channel_messages.get(channel_id, []))

    def message(self, channel_id: str, message_id: str) -> StoredMessage | None:
        with self._lock:
            roots = self._channel_messages.get(channel_id, [])
            return next((m for m in roots if m.id == message_id), None)

    def every_message(self) -> list[StoredMessage]:
        with self._lock:
            return list(self.all_messages)
