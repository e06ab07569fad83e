"""Everything the emulator remembers, in memory, behind one lock.

The server answers requests on its own thread while tests read and change the
state from theirs, so every public method takes the lock; callers never touch
the private collections directly.

What must outlive a restart (users, grants, revocation marks, memberships,
messages, apps, config) can be exported with `snapshot()` and brought back with
`restore()`; every change to it bumps `version` so a writer knows when to save
(see persistence.py). Authorization codes, faults and counters are left out:
codes live minutes and the rest only serves tests.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from tracecat.emulator.config import EmulatorConfig
from tracecat.emulator.constants import (
    DEMO_APP_NAME,
    DEMO_APP_SCOPES,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    TENANT_DOMAIN,
    TENANT_ID,
)
from tracecat.emulator.demo_data import Team, build_teams
from tracecat.emulator.keys import SigningKey
from tracecat.emulator.throttle import RateLimiter

FaultKind = Literal["token", "graph", "identity"]
# Bumped whenever the snapshot's layout changes; an older file is then ignored.
SNAPSHOT_FORMAT = 1
GRAPH_LOG_SIZE = 1000


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class AppRegistration:
    client_id: str
    client_secret: str
    display_name: str
    redirect_uris: list[str]
    # Entra lets any port on a loopback redirect URI match; the demo app goes
    # further and accepts any loopback redirect so no registration step is needed.
    any_loopback_redirect: bool = False
    scopes: tuple[str, ...] = DEMO_APP_SCOPES

    def accepts_redirect(self, uri: str) -> bool:
        try:
            parts = urlsplit(uri)
            _ = parts.port  # raises on a malformed port
        except ValueError:
            return False
        if parts.fragment or parts.scheme not in ("http", "https"):
            return False
        loopback = is_loopback_host(parts.hostname)
        if self.any_loopback_redirect and loopback:
            return True
        if parts.scheme == "http" and not loopback:
            return False
        for registered in self.redirect_uris:
            if registered == uri:
                return True
            reg = urlsplit(registered)
            if (
                loopback
                and is_loopback_host(reg.hostname)
                and (reg.scheme, reg.hostname, reg.path, reg.query)
                == (parts.scheme, parts.hostname, parts.path, parts.query)
            ):
                return True
        return False

    def public(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "display_name": self.display_name,
            "redirect_uris": list(self.redirect_uris),
            "any_loopback_redirect": self.any_loopback_redirect,
            "scopes": list(self.scopes),
        }


@dataclass
class User:
    email: str
    oid: str
    display_name: str
    given_name: str
    surname: str
    # Refresh and access tokens issued before this instant are revoked.
    tokens_valid_from: float | None = None
    # Access tokens issued before this instant are treated as expired.
    access_tokens_expired_before: float | None = None

    def public(self) -> dict[str, Any]:
        return {"email": self.email, "id": self.oid, "display_name": self.display_name}


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    email: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    issued_at: float
    redeemed: bool = False


@dataclass
class RefreshGrant:
    token: str
    client_id: str
    email: str
    scopes: tuple[str, ...]
    issued_at: float
    used: bool = False


@dataclass
class IssuedAccessToken:
    jti: str
    email: str
    client_id: str
    issued_at: float


@dataclass
class StoredMessage:
    id: str
    team_id: str
    channel_id: str
    reply_to_id: str | None
    sender_email: str
    resource: dict[str, Any]
    replies: list[StoredMessage] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "team_id": self.team_id,
            "channel_id": self.channel_id,
            "reply_to_id": self.reply_to_id,
            "sender": self.sender_email,
            "chat_message": self.resource,
        }


@dataclass
class FaultRule:
    id: str
    target: str
    status: int
    remaining: int
    retry_after: int | None = None
    delay_seconds: float = 0.0
    code: str | None = None
    message: str | None = None

    def matches(self, kind: FaultKind | None, raw_path: str, path: str) -> bool:
        if self.target in ("token", "graph"):
            return self.target == kind
        return path.startswith(self.target) or raw_path.startswith(self.target)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "status": self.status,
            "count": self.remaining,
            "retry_after": self.retry_after,
            "delay_seconds": self.delay_seconds,
            "code": self.code,
            "message": self.message,
        }


class TokenProblem(Exception):
    """Why a presented grant was refused; identity.py turns it into an AADSTS body."""

    def __init__(self, reason: str, record: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.record = record


class EmulatorState:
    def __init__(self, signing_key: SigningKey | None = None) -> None:
        self.signing_key = signing_key or SigningKey.generate()
        self.tenant_id = TENANT_ID
        self.tenant_domain = TENANT_DOMAIN
        # Set by EmulatorServer once ports are known; otherwise URLs follow the request.
        self.https_base: str | None = None
        self.http_base: str | None = None
        self._lock = threading.RLock()
        self._version = 0
        # Called with the new version after every reset, outside the lock, so a
        # persisted copy can be dropped too (POST /_emulator/reset forgets everything).
        self.on_reset: Callable[[int], None] | None = None
        self.reset()

    # -- lifecycle -----------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self._clear()
            self._changed()
            version = self._version
        if self.on_reset is not None:
            self.on_reset(version)

    def _clear(self) -> None:
        with self._lock:
            self._config = EmulatorConfig()
            self._apps: dict[str, AppRegistration] = {
                DEMO_CLIENT_ID: AppRegistration(
                    DEMO_CLIENT_ID,
                    DEMO_CLIENT_SECRET,
                    DEMO_APP_NAME,
                    [],
                    any_loopback_redirect=True,
                )
            }
            self._users: dict[str, User] = {}
            self._codes: dict[str, AuthorizationCode] = {}
            self._refresh: dict[str, RefreshGrant] = {}
            self._access: dict[str, IssuedAccessToken] = {}
            self._revoked_jtis: set[str] = set()
            self._teams: dict[str, Team] = {team.id: team for team in build_teams()}
            self._members: dict[str, set[str]] = defaultdict(set)
            self._messages: dict[str, list[StoredMessage]] = defaultdict(list)
            self._all_messages: list[StoredMessage] = []
            self._last_message_ms = 0
            self._faults: list[FaultRule] = []
            self._limiter = RateLimiter()
            self._token_requests: Counter[tuple[str, str]] = Counter()
            self._token_requests_by_user: Counter[tuple[str, str, str]] = Counter()
            self._refresh_token_uses = 0
            self._graph_requests: Counter[tuple[str, str]] = Counter()
            # The last Graph requests exactly as they arrived, so tests can see every path a
            # client made (dot segments and encodings included), not just the matched route.
            self._graph_log: deque[dict[str, Any]] = deque(maxlen=GRAPH_LOG_SIZE)
            self._throttled = 0

    def _changed(self) -> None:
        """Note a change to what snapshot() exports; callers hold the lock."""
        self._version += 1

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    # -- persistence -------------------------------------------------------------------

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        """The persistent part as plain JSON-ready data, with the version it reflects.

        The result shares no mutable object with the live state (message resources
        are never changed once stored), so it can be serialized outside the lock.
        """
        with self._lock:
            data = {
                "format": SNAPSHOT_FORMAT,
                "config": self._config.to_dict(),
                "apps": [app.public() for app in self._apps.values()],
                "users": [asdict(user) for user in self._users.values()],
                "refresh_tokens": [
                    {**asdict(grant), "scopes": list(grant.scopes)}
                    for grant in self._refresh.values()
                ],
                # Kept so revocation compares the exact issue time, not the whole-second iat.
                "access_tokens": [asdict(record) for record in self._access.values()],
                "revoked_jtis": sorted(self._revoked_jtis),
                "members": {team: sorted(emails) for team, emails in self._members.items()},
                # In the order they were posted, so replies follow their root.
                "messages": [
                    {
                        "id": message.id,
                        "team_id": message.team_id,
                        "channel_id": message.channel_id,
                        "reply_to_id": message.reply_to_id,
                        "sender_email": message.sender_email,
                        "resource": message.resource,
                    }
                    for message in self._all_messages
                ],
                "last_message_ms": self._last_message_ms,
            }
            return self._version, data

    def restore(self, data: dict[str, Any]) -> None:
        """Replace the persistent part with a snapshot() result.

        Raise ValueError (or KeyError, TypeError, AttributeError) on a malformed snapshot, leaving
        the state as it was.
        """
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("not an emulator state snapshot of a known format")
        config = EmulatorConfig().patched(data["config"])
        apps: dict[str, AppRegistration] = {}
        for fields_ in data["apps"]:
            app = AppRegistration(**{**fields_, "scopes": tuple(fields_["scopes"])})
            apps[app.client_id] = app
        users = {user.email: user for user in (User(**fields_) for fields_ in data["users"])}
        refresh: dict[str, RefreshGrant] = {}
        for fields_ in data["refresh_tokens"]:
            grant = RefreshGrant(**{**fields_, "scopes": tuple(fields_["scopes"])})
            refresh[grant.token] = grant
        access = {r.jti: r for r in (IssuedAccessToken(**f) for f in data["access_tokens"])}
        revoked_jtis = {str(jti) for jti in data["revoked_jtis"]}
        members: defaultdict[str, set[str]] = defaultdict(set)
        for team_id, emails in data["members"].items():
            members[team_id] = {str(email) for email in emails}
        messages = [StoredMessage(**fields_) for fields_ in data["messages"]]
        roots: set[tuple[str, str]] = set()
        for message in messages:
            if message.reply_to_id is None:
                roots.add((message.channel_id, message.id))
            elif (message.channel_id, message.reply_to_id) not in roots:
                raise ValueError(f"reply {message.id} comes before its root message")
        last_message_ms = int(data["last_message_ms"])
        with self._lock:
            self._clear()
            self._config = config
            self._apps.update(apps)
            self._users = users
            self._refresh = refresh
            self._access = access
            self._revoked_jtis = revoked_jtis
            self._members = members
            for message in messages:
                self._store_message(message)
            self._last_message_ms = last_message_ms
            self._changed()

    @property
    def config(self) -> EmulatorConfig:
        with self._lock:
            return self._config

    def patch_config(self, patch: dict[str, Any]) -> EmulatorConfig:
        with self._lock:
            self._config = self._config.patched(patch)
            self._changed()
            return self._config

    # -- apps and users ------------------------------------------------------------

    def app(self, client_id: str) -> AppRegistration | None:
        with self._lock:
            return self._apps.get(client_id.lower())

    def register_app(self, app: AppRegistration) -> AppRegistration:
        with self._lock:
            app.client_id = app.client_id.lower()
            self._apps[app.client_id] = app
            self._changed()
            return app

    def sign_in(self, email: str) -> User:
        """Find the user by email, creating them (and their team memberships) on first use."""
        key = email.strip().lower()
        with self._lock:
            user = self._users.get(key)
            if user is None:
                user = describe_user(key)
                self._users[key] = user
                for team in self._teams.values():
                    if team.open_to_all_users:
                        self._members[team.id].add(key)
                self._changed()
            return user

    def user(self, email: str) -> User | None:
        with self._lock:
            return self._users.get(email.strip().lower())

    def users(self) -> list[User]:
        with self._lock:
            return list(self._users.values())

    def revoke_user(self, email: str) -> User | None:
        with self._lock:
            user = self.user(email)
            if user is not None:
                user.tokens_valid_from = time.time()
                self._changed()
            return user

    def expire_user_access_tokens(self, email: str) -> User | None:
        with self._lock:
            user = self.user(email)
            if user is not None:
                user.access_tokens_expired_before = time.time()
                self._changed()
            return user

    # -- authorization codes and refresh tokens ---------------------------------------

    def add_code(self, **fields: Any) -> AuthorizationCode:
        code = AuthorizationCode(code=_opaque("1.AEmu"), issued_at=time.time(), **fields)
        with self._lock:
            self._codes[code.code] = code
        return code

    def redeem_code(self, code: str) -> AuthorizationCode:
        """Mark the code used; raise TokenProblem('unknown'|'redeemed'|'expired')."""
        with self._lock:
            record = self._codes.get(code)
            if record is None:
                raise TokenProblem("unknown")
            if record.redeemed:
                raise TokenProblem("redeemed", record)
            record.redeemed = True
            if time.time() - record.issued_at > self._config.authorization_code_lifetime:
                raise TokenProblem("expired", record)
            return record

    def add_refresh_token(self, client_id: str, email: str, scopes: tuple[str, ...]) -> str:
        grant = RefreshGrant(_opaque("0.AEmu"), client_id, email, scopes, time.time())
        with self._lock:
            self._refresh[grant.token] = grant
            self._changed()
        return grant.token

    def use_refresh_token(self, token: str, client_id: str) -> RefreshGrant:
        """Return the grant, now marked used, or raise TokenProblem with the reason:
        'unknown', 'revoked', 'client' (issued to another app) or 'reused' (strict rotation)."""
        with self._lock:
            self._refresh_token_uses += 1
            grant = self._refresh.get(token)
            if grant is None:
                raise TokenProblem("unknown")
            user = self._users.get(grant.email)
            if user is None or (
                user.tokens_valid_from is not None and grant.issued_at < user.tokens_valid_from
            ):
                raise TokenProblem("revoked", grant)
            if grant.client_id != client_id:
                raise TokenProblem("client", grant)
            if grant.used and self._config.refresh_token_rotation == "strict":
                raise TokenProblem("reused", grant)
            if not grant.used:
                grant.used = True
                self._changed()
            return grant

    # -- access tokens ---------------------------------------------------------------

    def record_access_token(self, jti: str, email: str, client_id: str, issued_at: float) -> None:
        with self._lock:
            self._access[jti] = IssuedAccessToken(jti, email, client_id, issued_at)
            self._changed()

    def access_token_problem(self, jti: str, email: str, iat: float) -> str | None:
        """'revoked' or 'expired' when the control API invalidated the token early."""
        with self._lock:
            record = self._access.get(jti)
            # Tokens minted before a restart are unknown but still properly signed.
            issued_at = record.issued_at if record else iat
            user = self._users.get(email)
            if jti in self._revoked_jtis:
                return "revoked"
            if user is None:
                return None
            if user.tokens_valid_from is not None and issued_at < user.tokens_valid_from:
                return "revoked"
            if (
                user.access_tokens_expired_before is not None
                and issued_at < user.access_tokens_expired_before
            ):
                return "expired"
            return None

    # -- teams and messages ------------------------------------------------------------

    def team(self, team_id: str) -> Team | None:
        with self._lock:
            return self._teams.get(team_id.lower())

    def is_member(self, team_id: str, email: str) -> bool:
        with self._lock:
            return email in self._members.get(team_id.lower(), set())

    def joined_teams(self, email: str) -> list[Team]:
        with self._lock:
            return [t for t in self._teams.values() if email in self._members.get(t.id, set())]

    def next_message_id(self) -> str:
        """Epoch milliseconds like Graph, bumped when two messages share a millisecond."""
        with self._lock:
            self._last_message_ms = max(self._last_message_ms + 1, int(time.time() * 1000))
            return str(self._last_message_ms)

    def add_message(self, message: StoredMessage) -> None:
        with self._lock:
            self._store_message(message)
            self._changed()

    def _store_message(self, message: StoredMessage) -> None:
        with self._lock:
            if message.reply_to_id is None:
                self._messages[message.channel_id].append(message)
            else:
                parent = self.message(message.channel_id, message.reply_to_id)
                if parent is None:
                    raise KeyError(message.reply_to_id)
                parent.replies.append(message)
            self._all_messages.append(message)

    def messages(self, channel_id: str) -> list[StoredMessage]:
        with self._lock:
            return list(self._messages.get(channel_id, []))

    def message(self, channel_id: str, message_id: str) -> StoredMessage | None:
        with self._lock:
            return next((m for m in self._messages.get(channel_id, []) if m.id == message_id), None)

    def all_messages(self) -> list[StoredMessage]:
        with self._lock:
            return list(self._all_messages)

    # -- faults and throttling ---------------------------------------------------------

    def add_fault(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._faults.append(rule)
            return rule

    def faults(self) -> list[FaultRule]:
        with self._lock:
            return list(self._faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def take_fault(self, kind: FaultKind | None, raw_path: str, path: str) -> FaultRule | None:
        with self._lock:
            for rule in self._faults:
                if rule.matches(kind, raw_path, path):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._faults.remove(rule)
                    return rule
            return None

    def admit(self, checks: list[tuple[tuple[str, ...], int]]) -> int | None:
        """Rate-limit one Graph request; return Retry-After seconds if refused."""
        with self._lock:
            if not self._config.throttling.enabled:
                return None
            retry_after = self._limiter.admit(checks, time.monotonic())
            if retry_after is not None:
                self._throttled += 1
            return retry_after

    # -- counters --------------------------------------------------------------------

    def record_token_request(self, grant_type: str, outcome: str, email: str | None) -> None:
        with self._lock:
            self._token_requests[(grant_type, outcome)] += 1
            if email:
                self._token_requests_by_user[(email, grant_type, outcome)] += 1

    def record_graph_request(self, route: str, status: int, method: str, raw_path: str) -> None:
        with self._lock:
            self._graph_requests[(route, str(status))] += 1
            self._graph_log.append({"method": method, "path": raw_path, "status": status})

    def stats(self) -> dict[str, Any]:
        with self._lock:
            token_requests: dict[str, dict[str, int]] = defaultdict(dict)
            for (grant, outcome), count in self._token_requests.items():
                token_requests[grant][outcome] = count
            by_user: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
            for (email, grant, outcome), count in self._token_requests_by_user.items():
                by_user[email][grant][outcome] = count
            graph: dict[str, dict[str, int]] = defaultdict(dict)
            for (route, status), count in self._graph_requests.items():
                graph[route][status] = count
            return {
                "token_requests": dict(token_requests),
                "token_requests_by_user": {k: dict(v) for k, v in by_user.items()},
                "refresh_token_uses": self._refresh_token_uses,
                "graph_requests": dict(graph),
                "graph_request_log": list(self._graph_log),
                "throttled": self._throttled,
                "messages_stored": len(self._all_messages),
            }


def _opaque(prefix: str) -> str:
    return f"{prefix}{secrets.token_urlsafe(48)}"


def describe_user(email: str) -> User:
    """The user an email signs in as, without storing it."""
    local = email.split("@", 1)[0]
    words = [w.capitalize() for w in local.replace("_", ".").replace("-", ".").split(".") if w]
    words = words or [local]
    return User(
        email=email,
        # Derived from the email so a user keeps the same object id across resets.
        oid=str(uuid.uuid5(uuid.UUID(TENANT_ID), f"user/{email}")),
        display_name=" ".join(words),
        given_name=words[0],
        surname=" ".join(words[1:]),
    )
