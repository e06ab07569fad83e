"""Waiting for something another thread or process does, with a deadline instead of a guess."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05) -> T:
    """Call `check` until it returns something truthy and return that; fail after `timeout`.

    The deadline is generous on purpose: a passing test returns as soon as the condition
    holds, so only a failing one waits it out.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still {result!r} after {timeout} s")
        time.sleep(interval)
