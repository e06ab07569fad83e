"""URLs that may hold a password (DATABASE_URL, REDIS_URL): their shape is checked when the
settings load, and they are only ever shown through `redact_url` (driver messages through
`url_error_reason`), so no error, log line or answer carries the password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

DATABASE_URL_FORMS = "sqlite:///path or postgresql://user:password@host:port/db"
REDIS_URL_FORMS = (
    "redis://:password@host:port/db, rediss://user:password@host:port/db or unix:///path"
)
DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "postgres"})
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
HIDDEN = "***"

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://(.*)", re.DOTALL)
# One host (a name, IPv4 or [IPv6]) and an optional port; anything else is not shown.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%\-]*)(?::(\d{1,5}))?")
# A user name or query key that cannot be a piece of a password that was split by mistake.
_NAME = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=\-]*")
_QUERY_KEY = re.compile(r"[A-Za-z0-9._\-]+")
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)
# Inside the user info these end it early for one library or another (SQLAlchemy splits at
# the first '@', urllib at the first '/', '?' or '#'), so the password would be misread.
_USERINFO_BREAKERS = "@/?#"


@dataclass(frozen=True)
class _UrlParts:
    scheme: str
    userinfo: str | None
    host: str
    path: str
    query: str | None


def _split(url: str) -> _UrlParts | None:
    """`scheme://[userinfo@]host[/path][?query]`, or None without `scheme://`.

    The user info runs to the LAST '@' (an unencoded '@' in a password is the usual mistake),
    except in an SQLite URL, which holds a path (and a path may contain '@').
    """
    match = _SCHEME.fullmatch(url.strip())
    if match is None:
        return None
    scheme, rest = match[1].lower(), match[2]
    userinfo: str | None = None
    if not (_backend(scheme) == "sqlite" and rest[:1] in ("", "/")):
        before, at, after = rest.rpartition("@")
        if at:
            userinfo, rest = before, after
    rest = rest.partition("#")[0]
    rest, question_mark, query = rest.partition("?")
    host, slash, path = rest.partition("/")
    return _UrlParts(scheme, userinfo, host, slash + path, query if question_mark else None)


def _backend(scheme: str) -> str:
    """`postgresql+asyncpg` -> `postgresql`: the driver suffix does not change the form."""
    return scheme.split("+", 1)[0]


def check_url(url: str, schemes: frozenset[str], forms: str) -> None:
    """Refuse a URL whose password a driver could misread. Messages never quote the URL."""
    parts = _split(url)
    if parts is None:
        raise ValueError(f"cannot parse it (not shown: it may hold a password): use {forms}")
    backend = _backend(parts.scheme)
    if backend not in schemes:
        raise ValueError(f"unsupported scheme {parts.scheme + '://'!r}: use {forms}")
    if parts.userinfo is not None and any(c in parts.userinfo for c in _USERINFO_BREAKERS):
        raise ValueError(
            "percent-encode '@', '/', '?' and '#' in the user name and password "
            "(e.g. '@' as %40): only the '@' before the host may stay"
        )
    if backend == "sqlite" and (parts.userinfo is not None or parts.host):
        raise ValueError(f"an SQLite URL has no host or password: use {forms}")
    host = _HOST.fullmatch(parts.host)
    if host is None or (host[1] is not None and int(host[1]) > 65535):
        raise ValueError(f"cannot parse its host and port: use {forms}")


def redact_url(url: str) -> str:
    """The URL as a person may see it: no password, no query value, no piece of either.

    Anything that does not parse unambiguously is replaced by HIDDEN rather than guessed at.
    """
    parts = _split(url)
    if parts is None:
        return "(not shown: not a URL)"
    if parts.userinfo is not None and any(c in parts.userinfo for c in "/?#"):
        # Then the last '@' may be inside a query value or path: what follows it may be the
        # end of a password.
        return f"{parts.scheme}://{HIDDEN}"
    shown = f"{parts.scheme}://"
    if parts.userinfo is not None:
        user, colon, _ = parts.userinfo.partition(":")
        user = user if _NAME.fullmatch(user) else HIDDEN
        shown += f"{user}:{HIDDEN}@" if colon else f"{user}@"
    shown += parts.host if _HOST.fullmatch(parts.host) else HIDDEN
    shown += parts.path
    if parts.query is not None:
        shown += "?" + "&".join(_redact_parameter(p) for p in parts.query.split("&"))
    return shown


def _redact_parameter(parameter: str) -> str:
    key, equals, _ = parameter.partition("=")
    if not parameter:
        return ""
    return f"{key}={HIDDEN}" if equals and _QUERY_KEY.fullmatch(key) else HIDDEN


def _secrets(url: str) -> set[str]:
    """The password and the query values that may be secret, as written and decoded (drivers
    see the latter). Short values of harmless-looking keys (`db=0`, `ssl=on`) are left out:
    masking every "0" would garble the message without hiding anything."""
    found = {url, url.strip()}
    parts = _split(url)
    if parts is not None:
        if parts.userinfo is not None:
            password = parts.userinfo.partition(":")[2]
            found |= {password, unquote(password)}
        for parameter in (parts.query or "").split("&"):
            key, _, value = parameter.partition("=")
            if _SECRET_KEY.search(key) or len(value) >= 4:
                found |= {value, unquote(value), unquote_plus(value)}
    return {secret for secret in found if secret}


def url_error_reason(exc: BaseException, url: str) -> str:
    """One line saying why `url` failed: the first line of the driver's own message (not the
    wrapper's, which repeats SQL and parameters) with the URL's secrets masked."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    # asyncpg errors adapted by SQLAlchemy read "<class 'asyncpg....'>: message".
    reason = re.sub(r"^<class '[\w.]+'>: ", "", lines[0]) if lines else type(cause).__name__
    reason = reason.replace(url, redact_url(url))
    for secret in sorted(_secrets(url), key=len, reverse=True):
        reason = reason.replace(secret, HIDDEN)
    return reason
