"""Errors that reach users, each carrying its HTTP status and a message that says what to do.

TracecatError
├── BadRequestError               400  bad input
│   └── SignInError               400  a sign-in callback that cannot complete (forged,
│                                      expired, replayed or cross-browser state, declined)
├── AuthenticationError           401  missing or unknown API key
├── ReauthorizationRequiredError  401  Microsoft refused the grant: reconnect
├── ForbiddenError                403  e.g. a scope the user never granted
├── NotFoundError                 404  unknown user, team, ...
│   └── NotConnectedError         404  no Microsoft connection: how to make one
├── ConflictError                 409
├── SettingsError                 500  a setting is missing or wrong (one line naming it)
├── DecryptionError               503  a stored secret cannot be decrypted with the keys given
├── UpstreamError                 502  Microsoft answered something we cannot use
├── ProviderUnavailableError      503  Microsoft is unreachable or failing for now (Retry-After)
│   └── TransientProviderError    503  Microsoft's login failed for now; the grant is intact
└── GraphError                    Graph's own status, code, message and request id
    └── DeliveryUnknownError      504  a send timed out: it may or may not have been posted

No message ever contains a token, a key or the client secret.
"""

from __future__ import annotations

import uuid
from typing import Any

CONNECT_HINT = "connect again at GET /auth/integrations/microsoft/connect"
START_AGAIN = "Go back to the connect page and press Connect to start again."


class TracecatError(Exception):
    status_code = 500
    headers: dict[str, str] | None = None

    def __init__(self, detail: Any) -> None:
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail


class BadRequestError(TracecatError):
    status_code = 400


class SignInError(BadRequestError):
    """A sign-in callback that cannot complete. The callback is a page in a person's browser,
    so besides the API's `detail` it says what happened and what to do in plain words.
    `reason` is the same as a short code for the audit log (`unknown_state`, `access_denied`,
    ...); `user_id` the user whose flow it was, when known."""

    def __init__(
        self,
        detail: str,
        *,
        what: str,
        advice: str = START_AGAIN,
        reason: str = "refused",
        user_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__(detail)
        self.what = what
        self.advice = advice
        self.reason = reason
        self.user_id = user_id


class AuthenticationError(TracecatError):
    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class SignInRequiredError(AuthenticationError):
    """A page of the web UI without a live session: the browser is sent to sign in."""

    def __init__(self) -> None:
        super().__init__("sign in with your API key first")


class ReauthorizationRequiredError(TracecatError):
    status_code = 401

    def __init__(self, reason: str) -> None:
        super().__init__(f"Microsoft no longer accepts this connection ({reason}): {CONNECT_HINT}")
        self.reason = reason


class ForbiddenError(TracecatError):
    status_code = 403


class NotFoundError(TracecatError):
    status_code = 404


class NotConnectedError(NotFoundError):
    def __init__(self) -> None:
        super().__init__(f"Microsoft Teams is not connected: {CONNECT_HINT}")


class ConflictError(TracecatError):
    status_code = 409


class PayloadTooLargeError(TracecatError):
    status_code = 413


class RateLimitedError(TracecatError):
    status_code = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class SettingsError(TracecatError):
    """A setting is missing or wrong; the message names the variable and is one line (the
    command line prints it and exits 2)."""


class DecryptionError(TracecatError):
    """A stored secret cannot be decrypted with any configured key. Over HTTP the detail only
    says so; the server log names the fix (the message)."""

    status_code = 503


class UpstreamError(TracecatError):
    status_code = 502


class ProviderUnavailableError(TracecatError):
    status_code = 503

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class TransientProviderError(ProviderUnavailableError):
    """Microsoft's login could not answer now (5xx, timeout, 429); the grant is intact."""


class GraphError(TracecatError):
    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        request_id: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__({"code": code, "message": message, "request_id": request_id})
        self.status_code = status_code
        self.code = code
        self.message = message
        self.request_id = request_id
        if retry_after is not None:
            self.headers = {"Retry-After": str(retry_after)}


class DeliveryUnknownError(GraphError):
    def __init__(self, reason: str) -> None:
        super().__init__(
            504,
            "DeliveryUnknown",
            f"{reason}: the message may or may not have been posted, so it was not resent. "
            "Check the channel before sending it again.",
        )
