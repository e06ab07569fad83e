"""Runtime knobs of the emulator, changed by tests through PATCH /_emulator/config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

RotationPolicy = Literal["lenient", "strict"]
# AADSTS50173: grant revoked; AADSTS700082: refresh token expired due to inactivity.
REVOKED_ERROR_CODES = (50173, 700082)


@dataclass
class PageSizes:
    """Items per Graph page when the client does not ask for `$top`.

    joinedTeams and channels are small on purpose so that the 3 demo teams and
    their channels need more than one page; messages default to Graph's 20.
    """

    joined_teams: int = 2
    channels: int = 2
    messages: int = 20
    replies: int = 20


@dataclass
class Throttling:
    """Teams service limits per app, as Microsoft publishes them."""

    enabled: bool = True
    channel_messages_per_second: int = 1
    team_requests_per_second: int = 4
    tenant_requests_per_second: int = 50


@dataclass
class Notifications:
    """How change notifications (notifier.py) reach a subscriber's endpoint.

    Graph retries a failed delivery for up to 4 hours; the emulator compresses that to one
    first try plus one retry after each of `retry_delays` seconds, so tests can prove their
    endpoint survives a failure without waiting hours.
    """

    retry_delays: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0])
    # Graph gives the validation handshake and each delivery 10 s; lower it to test timeouts.
    timeout_seconds: float = 10.0
    # Graph may deliver a notification more than once: while true, every one is sent twice.
    duplicate: bool = False


@dataclass
class EmulatorConfig:
    access_token_lifetime: int = 3599
    authorization_code_lifetime: int = 600
    refresh_token_rotation: RotationPolicy = "lenient"
    revoked_error_code: int = 50173
    page_sizes: PageSizes = field(default_factory=PageSizes)
    throttling: Throttling = field(default_factory=Throttling)
    notifications: Notifications = field(default_factory=Notifications)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def patched(self, patch: dict[str, Any]) -> EmulatorConfig:
        """Return a copy with `patch` applied; raise ValueError naming the bad field."""
        merged = self.to_dict()
        _merge(merged, patch, "")
        config = EmulatorConfig(
            **{
                **merged,
                "page_sizes": PageSizes(**merged["page_sizes"]),
                "throttling": Throttling(**merged["throttling"]),
                "notifications": Notifications(**merged["notifications"]),
            }
        )
        config._validate()
        return config

    def _validate(self) -> None:
        if self.refresh_token_rotation not in ("lenient", "strict"):
            raise ValueError("refresh_token_rotation must be 'lenient' or 'strict'")
        if self.revoked_error_code not in REVOKED_ERROR_CODES:
            raise ValueError(f"revoked_error_code must be one of {list(REVOKED_ERROR_CODES)}")
        if self.access_token_lifetime < 1 or self.authorization_code_lifetime < 1:
            raise ValueError("lifetimes must be at least 1 second")
        for item in fields(PageSizes):
            if getattr(self.page_sizes, item.name) < 1:
                raise ValueError(f"page_sizes.{item.name} must be at least 1")
        for item in fields(Throttling):
            if item.name != "enabled" and getattr(self.throttling, item.name) < 1:
                raise ValueError(f"throttling.{item.name} must be at least 1")
        delays = self.notifications.retry_delays
        if len(delays) > 20 or not all(_number(d) and 0 <= d <= 3600 for d in delays):
            raise ValueError("notifications.retry_delays must be at most 20 numbers in [0, 3600]")
        if not 0 < self.notifications.timeout_seconds <= 60:
            raise ValueError("notifications.timeout_seconds must be in (0, 60]")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _merge(target: dict[str, Any], patch: dict[str, Any], prefix: str) -> None:
    if not isinstance(patch, dict):
        raise ValueError(f"{prefix or 'config'} must be an object")
    for key, value in patch.items():
        name = f"{prefix}{key}"
        if key not in target:
            raise ValueError(f"unknown config field {name!r}")
        current = target[key]
        if isinstance(current, dict):
            _merge(current, value, f"{name}.")
        elif isinstance(current, float) and _number(value):
            target[key] = float(value)  # 10 for a float field means 10.0
        elif isinstance(current, bool) != isinstance(value, bool) or not isinstance(
            value, type(current)
        ):
            raise ValueError(f"{name} must be of type {type(current).__name__}")
        else:
            target[key] = value
