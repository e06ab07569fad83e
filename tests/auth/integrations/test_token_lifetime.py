"""Token expiry is judged at the time it is given: the app's clock, not whatever the real
time is when a check happens to run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.utils.time_travel import MovableClock
from tracecat.auth.integrations.models import (
    MICROSOFT_TEAMS,
    GrantState,
    IntegrationStatus,
    IntegrationView,
)
from tracecat.clock import SYSTEM_CLOCK, Clock

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def view(
    expires_in: float, refreshed_ago: float | None = None, clock: Clock = SYSTEM_CLOCK
) -> IntegrationView:
    """A connection without a refresh token, its times relative to NOW."""
    return IntegrationView(
        provider=MICROSOFT_TEAMS,
        status=GrantState.ACTIVE,
        expires_at=NOW + timedelta(seconds=expires_in),
        scope="User.Read",
        provider_metadata={},
        has_refresh_token=False,
        last_refreshed_at=None if refreshed_ago is None else NOW - timedelta(seconds=refreshed_ago),
        refresh_failures=0,
        clock=clock,
    )


def test_checks_use_the_time_they_are_given() -> None:
    token = view(expires_in=200, refreshed_ago=10)
    assert token.needs_refresh(300, NOW) and not token.needs_refresh(100, NOW)
    assert not token.is_expired_at(NOW) and token.is_expired_at(NOW + timedelta(seconds=200))
    assert token.just_refreshed(30, NOW)
    assert not token.just_refreshed(30, NOW + timedelta(seconds=25))  # 35 s ago by then
    assert not token.just_refreshed(300, NOW + timedelta(seconds=250))  # expired by then
    assert not view(expires_in=200).just_refreshed(30, NOW)  # connected, never refreshed


def test_a_view_is_judged_on_the_clock_of_the_app_that_read_it() -> None:
    clock = MovableClock()
    real_now = datetime.now(UTC)
    fresh = view(expires_in=(real_now - NOW).total_seconds() + 3600, clock=clock)
    assert not fresh.is_expired and fresh.public_status == IntegrationStatus.CONNECTED
    clock.advance(2 * 3600)
    assert fresh.is_expired and fresh.public_status == IntegrationStatus.EXPIRED


def test_the_system_clock_is_aware_utc() -> None:
    now = SYSTEM_CLOCK.now()
    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)
