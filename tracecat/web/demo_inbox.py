"""What the demo receiver (`demo_receiver.py`) was sent: in memory, owned by the app's
resources, the newest webhooks first and at most `KEPT` of them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime

KEPT = 50


@dataclass(frozen=True)
class Received:
    at: datetime
    headers: dict[str, str]  # the three Standard Webhooks headers
    body: bytes


class DemoInbox:
    """The receiver's memory: the newest webhooks first, at most `KEPT`."""

    def __init__(self) -> None:
        self._kept: deque[Received] = deque(maxlen=KEPT)

    def keep(self, received: Received) -> None:
        self._kept.appendleft(received)

    def newest_first(self) -> list[Received]:
        return list(self._kept)
