"""Errors of the notifications package, in the tree of `tracecat.exceptions`:

TracecatError
└── TargetRefusedError   422  a webhook URL this service will not call (scheme, userinfo,
                              a private/loopback/... address outside the allowed networks)
"""

from __future__ import annotations

from tracecat.exceptions import TracecatError


class TargetRefusedError(TracecatError):
    """The API answers 422; the delivery worker counts it as a failed attempt (DNS may
    change back), never as a reason to call the address anyway."""

    status_code = 422
