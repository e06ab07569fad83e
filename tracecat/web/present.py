"""What the pages say: states, times and errors in words a person reads (no logic in
templates: they only show what these functions decided)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from urllib.parse import quote, urlencode

from tracecat.auth.integrations.schemas import StatusResponse
from tracecat.exceptions import (
    ForbiddenError,
    GraphError,
    NotConnectedError,
    ReauthorizationRequiredError,
    TracecatError,
)
from tracecat.graph.resources import ChatMessage

READ_SCOPE = "ChannelMessage.Read.All"
ADD_READ_SCOPE = (
    f"Reading a channel's messages needs the {READ_SCOPE} permission: set "
    f"MICROSOFT_EXTRA_SCOPES={READ_SCOPE}, restart the service, then press Reconnect on the "
    "Connection page."
)


@dataclass(frozen=True)
class ConnectionState:
    label: str  # what the badge says
    tone: str  # the badge's colour class: ok, warn, bad, off (never the only signal)
    advice: str | None = None
    banner: str | None = None  # a problem that needs the person to act


def connection_state(status: StatusResponse) -> ConnectionState:
    if status.status == "reauthorization_required":
        return ConnectionState(
            "Reauthorization required",
            "bad",
            banner="Microsoft no longer accepts this connection (the grant was revoked, "
            "expired or its password changed). Press Reconnect to sign in again.",
        )
    if status.status == "not_connected":
        return ConnectionState(
            "Not connected", "off", advice="Press Connect to connect your Microsoft account."
        )
    if status.status == "expired" or status.refresh_failures:
        return ConnectionState(
            "Expiring soon",
            "warn",
            advice="Renewing the access token failed for a passing reason (Microsoft or the "
            "network); it is retried on its own. Reconnect if this lasts.",
        )
    return ConnectionState("Connected", "ok")


def relative_time(moment: datetime | None, now: datetime) -> str:
    """'in 52 minutes', '3 hours ago', 'just now'; 'never' for None."""
    if moment is None:
        return "never"
    seconds = (moment - now).total_seconds()
    span = abs(seconds)
    if span < 45:
        return "just now"
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if span >= size:
            count = round(span / size)
            words = f"{count} {unit}{'' if count == 1 else 's'}"
            return f"in {words}" if seconds > 0 else f"{words} ago"
    return "just now"  # pragma: no cover - span >= 45 s always matched a unit


def error_in_words(error: TracecatError) -> str:
    """One or two sentences for a person, from an error the services raised."""
    if isinstance(error, NotConnectedError):
        return "Microsoft Teams is not connected yet: press Connect on the Connection page."
    if isinstance(error, ReauthorizationRequiredError):
        return (
            "Microsoft no longer accepts this connection: press Reconnect on the Connection page."
        )
    if isinstance(error, GraphError):
        return _graph_error_in_words(error)
    if isinstance(error, ForbiddenError) and READ_SCOPE in str(error.detail):
        return ADD_READ_SCOPE
    detail = error.detail if isinstance(error.detail, str) else str(error)
    return detail[:1].upper() + detail[1:] + ("" if detail.endswith(".") else ".")


def _graph_error_in_words(error: GraphError) -> str:
    said = f" Microsoft said: “{error.message}”" if error.message else ""
    if error.status_code == 429 or error.status_code == 503:
        wait = (error.headers or {}).get("Retry-After")
        when = f"in {wait} seconds" if wait else "in a moment"
        return f"Microsoft Teams is busy and asked us to slow down: try again {when}.{said}"
    if error.status_code == 403:
        return f"Microsoft refused: your account may not post in this channel.{said}"
    if error.status_code == 404:
        return f"Microsoft Teams did not find it: the team or channel may be gone.{said}"
    if error.status_code == 400:
        return f"Microsoft Teams refused the message as it is.{said}"
    return f"Microsoft Teams answered with an error ({error.status_code}).{said}"


def teams_message_link(team_id: str, channel_id: str, message_id: str) -> str:
    """Teams' documented deep link to a channel message, for when Graph's `webUrl` cannot
    be read back (the message's thread is the message itself)."""
    channel, message = quote(channel_id, safe=""), quote(message_id, safe="")
    query = urlencode({"groupId": team_id, "parentMessageId": message_id})
    return f"https://teams.microsoft.com/l/message/{channel}/{message}?{query}"


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def plain_text(content: str) -> str:
    """A message body (text or Teams HTML) as the words it shows; templates escape it."""
    parser = _Text()
    parser.feed(content)
    parser.close()
    return " ".join("".join(parser.parts).split())


def message_line(message: ChatMessage, now: datetime) -> dict[str, str]:
    sender = message.from_ and (message.from_.user or message.from_.application)
    at = message.created_date_time
    text = plain_text(message.body.content or "")
    if not text and message.attachments:
        text = "(an Adaptive Card)"
    return {
        "sender": (sender and sender.display_name) or "someone",
        "at": at.isoformat() if at else "",
        "when": relative_time(at, now),
        "text": text,
    }
