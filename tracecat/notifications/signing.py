"""Standard Webhooks signing (https://www.standardwebhooks.com), with the spec's own library.

Each subscription has a secret `whsec_<base64>`. Rotating it keeps the previous one signing
for `ROTATION_OVERLAP`, so a receiver that still has the old secret keeps verifying while it
switches: `webhook-signature` then holds two `v1,<base64 HMAC>` entries, space-separated,
and `standardwebhooks.Webhook(secret).verify(body, headers)` accepts either.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from standardwebhooks import Webhook

ROTATION_OVERLAP = timedelta(hours=24)
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A new signing secret, shown to the user once when it is made or rotated."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def rotated(current: str, now: datetime) -> tuple[str, str, datetime]:
    """(new secret, previous secret, when the previous one stops signing): the three columns
    to write (`secret`, `previous_secret`, `previous_secret_expires_at`)."""
    return new_secret(), current, now + ROTATION_OVERLAP


def signing_secrets(
    secret: str,
    previous_secret: str | None,
    previous_secret_expires_at: datetime | None,
    now: datetime,
) -> list[str]:
    """The secrets that sign at `now`: the current one, plus the previous one during the
    overlap after a rotation."""
    if previous_secret and previous_secret_expires_at and now < previous_secret_expires_at:
        return [secret, previous_secret]
    return [secret]


def webhook_headers(
    webhook_id: str, body: str, secrets_: Sequence[str], now: datetime
) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` (the attempt's time) and `webhook-signature` for
    `body`, the exact text sent (UTF-8)."""
    timestamp = now.astimezone(UTC)
    signatures = " ".join(Webhook(s).sign(webhook_id, timestamp, body) for s in secrets_)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signatures,
        "Content-Type": "application/json",
    }
