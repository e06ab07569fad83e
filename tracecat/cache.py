"""What a process read recently, so hot requests need no database round trip.

Entries live TRACECAT_CACHE_SECONDS. A write this process makes drops the user's entries at
once; a write made elsewhere (another instance, the CLI revoking a key) is seen within the
TTL. TTL 0 turns the cache off.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from typing import Any

from cachetools import TTLCache


class ReadCache:
    def __init__(self, ttl_seconds: float, maxsize: int = 50_000) -> None:
        self._entries: TTLCache[Hashable, Any] | None = (
            TTLCache(maxsize, ttl_seconds) if ttl_seconds > 0 else None
        )

    def get(self, kind: str, key: Hashable) -> Any:
        return None if self._entries is None else self._entries.get((kind, key))

    def put(self, kind: str, key: Hashable, value: Any) -> None:
        if self._entries is not None:
            self._entries[(kind, key)] = value

    def forget_user(self, user_id: uuid.UUID) -> None:
        """Drop what is cached about one user's connections (not their API keys)."""
        if self._entries is not None:
            for kind in ("grant", "views"):
                self._entries.pop((kind, user_id), None)


NO_CACHE = ReadCache(0)
