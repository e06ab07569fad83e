"""Counters tests read through GET /_emulator/stats; never saved, emptied by a reset.

One part of EmulatorState (state.py), sharing its lock.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict, deque
from typing import Any

GRAPH_LOG_SIZE = 1000
ANSWER_TIMES_KEPT = 100
SUCCESS = "success"  # the outcome of an answered token request; failures count their `error`


class Stats:
    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self.clear()

    def clear(self) -> None:
        with self._lock:
            # Outcomes are "success" or the OAuth `error` of the answer (invalid_grant, ...):
            # an open set, reported as-is, so they stay strings.
            self._token_requests: Counter[tuple[str, str]] = Counter()
            self._token_requests_by_user: Counter[tuple[str, str, str]] = Counter()
            self._refresh_token_uses = 0
            self._graph_requests: Counter[tuple[str, str]] = Counter()
            # The last Graph requests exactly as they arrived, so tests can see every path a
            # client made (dot segments and encodings included), not just the matched route.
            self._graph_log: deque[dict[str, Any]] = deque(maxlen=GRAPH_LOG_SIZE)
            self._throttled = 0
            self._notifications = _empty_notifications()

    def record_token_request(self, grant_type: str, outcome: str, email: str | None) -> None:
        with self._lock:
            self._token_requests[(grant_type, outcome)] += 1
            if email:
                self._token_requests_by_user[(email, grant_type, outcome)] += 1

    def record_refresh_token_use(self) -> None:
        with self._lock:
            self._refresh_token_uses += 1

    def record_graph_request(self, route: str, status: int, method: str, raw_path: str) -> None:
        with self._lock:
            self._graph_requests[(route, str(status))] += 1
            self._graph_log.append({"method": method, "path": raw_path, "status": status})

    def record_throttled(self) -> None:
        with self._lock:
            self._throttled += 1

    def record_validation(self, ok: bool) -> None:
        with self._lock:
            self._notifications["validations"]["ok" if ok else "failed"] += 1

    def record_notification_attempt(
        self, kind: str, outcome: str, seconds: float, *, retry: bool, slow: bool
    ) -> None:
        """One POST to a subscriber; `outcome` is its status, "timeout" or "error"."""
        with self._lock:
            counts = self._notifications[kind]
            counts["sent"] += 1
            counts["retries"] += int(retry)
            counts["slow"] += int(slow)
            counts["by_outcome"][outcome] = counts["by_outcome"].get(outcome, 0) + 1
            counts["max_answer_seconds"] = max(counts["max_answer_seconds"], round(seconds, 3))
            counts["answer_seconds"].append(round(seconds, 3))

    def record_notification_result(self, kind: str, *, delivered: bool) -> None:
        with self._lock:
            self._notifications[kind]["delivered" if delivered else "failed"] += 1

    def report(self, messages_stored: int) -> dict[str, Any]:
        """The GET /_emulator/stats body."""
        with self._lock:
            token_requests: dict[str, dict[str, int]] = defaultdict(dict)
            for (grant, outcome), count in self._token_requests.items():
                token_requests[grant][outcome] = count
            by_user: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
            for (email, grant, outcome), count in self._token_requests_by_user.items():
                by_user[email][grant][outcome] = count
            graph: dict[str, dict[str, int]] = defaultdict(dict)
            for (route, status), count in self._graph_requests.items():
                graph[route][status] = count
            return {
                "token_requests": dict(token_requests),
                "token_requests_by_user": {k: dict(v) for k, v in by_user.items()},
                "refresh_token_uses": self._refresh_token_uses,
                "graph_requests": dict(graph),
                "graph_request_log": list(self._graph_log),
                "throttled": self._throttled,
                "messages_stored": messages_stored,
                "notifications": {
                    "validations": dict(self._notifications["validations"]),
                    **{
                        kind: {**counts, "answer_seconds": list(counts["answer_seconds"])}
                        for kind, counts in self._notifications.items()
                        if kind != "validations"
                    },
                },
            }


def _delivery_counts() -> dict[str, Any]:
    return {
        "sent": 0,  # POSTs made, retries included
        "delivered": 0,  # notifications answered 2xx at some try
        "failed": 0,  # notifications given up on after the last retry
        "retries": 0,
        "slow": 0,  # answers slower than Graph's 3 s
        "by_outcome": {},  # "202", "500", "timeout", "error" -> count
        "max_answer_seconds": 0.0,
        # The last answer times, oldest first.
        "answer_seconds": deque(maxlen=ANSWER_TIMES_KEPT),
    }


def _empty_notifications() -> dict[str, Any]:
    return {
        "validations": {"ok": 0, "failed": 0},
        "change": _delivery_counts(),
        "lifecycle": _delivery_counts(),
    }
