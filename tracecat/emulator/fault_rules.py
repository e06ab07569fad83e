"""Injected faults as data: what kind, which requests, how many times.

The control API (control.py) creates rules; faults.py applies the ones that replace
or delay an answer, graph_paging.py the ones that bend a page's `@odata.nextLink`.
The store is one part of EmulatorState (state.py), sharing its lock.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

TOKEN_PATH = re.compile(r"^/[^/]+/oauth2/v2\.0/token/?$")


class RequestKind(StrEnum):
    """Which API a request is for; "token" and "graph" double as fault targets."""

    TOKEN = "token"  # POST to a token endpoint
    GRAPH = "graph"  # anything under /v1.0
    IDENTITY = "identity"  # the rest of the identity platform: discovery, authorize, keys


def request_kind(method: str, path: str) -> RequestKind | None:
    """None for the control API, which is never faulted."""
    if path == "/v1.0" or path.startswith("/v1.0/"):
        return RequestKind.GRAPH
    if path.startswith("/_emulator"):
        return None
    if method == "POST" and TOKEN_PATH.match(path):
        return RequestKind.TOKEN
    return RequestKind.IDENTITY


class FaultKind(StrEnum):
    ERROR = "error"  # a Microsoft-shaped error answer (the default)
    SLOW = "slow"  # the normal answer, sent delay_seconds late
    NON_JSON = "non_json"  # `body` as `content_type` instead of the answer
    ENDLESS_NEXT_LINK = "endless_next_link"  # a list page always links to one more page
    FOREIGN_NEXT_LINK = "foreign_next_link"  # a list page links to another host

    @property
    def bends_next_link(self) -> bool:
        """Applied by the list route itself (it knows the page), not before routing."""
        return self in (FaultKind.ENDLESS_NEXT_LINK, FaultKind.FOREIGN_NEXT_LINK)


ANSWER_FAULTS = frozenset(kind for kind in FaultKind if not kind.bends_next_link)
NEXT_LINK_FAULTS = frozenset(kind for kind in FaultKind if kind.bends_next_link)


@dataclass
class FaultRule:
    id: str
    kind: FaultKind
    # A RequestKind (every token or every Graph request) or a path prefix.
    target: RequestKind | str
    remaining: int
    method: str | None = None  # only requests with this method; None for any
    status: int | None = None  # ERROR and NON_JSON only
    retry_after: int | None = None  # ERROR and NON_JSON only
    delay_seconds: float = 0.0
    code: str | None = None  # ERROR only
    message: str | None = None  # ERROR only
    body: str | None = None  # NON_JSON only
    content_type: str | None = None  # NON_JSON only
    next_link_base: str | None = None  # FOREIGN_NEXT_LINK only

    def matches(self, kind: RequestKind, method: str, raw_path: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if isinstance(self.target, RequestKind):
            return self.target == kind
        return path.startswith(self.target) or raw_path.startswith(self.target)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "target": str(self.target),
            "method": self.method,
            "status": self.status,
            "count": self.remaining,
            "retry_after": self.retry_after,
            "delay_seconds": self.delay_seconds,
            "code": self.code,
            "message": self.message,
            "body": self.body,
            "content_type": self.content_type,
            "next_link_base": self.next_link_base,
        }


class FaultStore:
    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
            return rule

    def all(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(
        self,
        kinds: Collection[FaultKind],
        request: RequestKind,
        method: str,
        raw_path: str,
        path: str,
    ) -> FaultRule | None:
        """The first rule of one of `kinds` matching the request, spending one of its uses."""
        with self._lock:
            for rule in self._rules:
                if rule.kind in kinds and rule.matches(request, method, raw_path, path):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                    return rule
            return None
