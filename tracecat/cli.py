"""The `tracecat-integrations` command line."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from tracecat.config import Settings, SettingsError, get_settings
from tracecat.exceptions import TracecatError
from tracecat.http_limits import server_options
from tracecat.urls import redact_url, url_error_reason

T = TypeVar("T")

# Typer's rich tracebacks print every local variable by default in some versions: settings,
# URLs and keys among them. A bug's traceback still shows, without them.
_TYPER_OPTIONS: dict[str, Any] = {"no_args_is_help": True, "pretty_exceptions_show_locals": False}
app = typer.Typer(help="Per-user Microsoft Teams integrations over OAuth 2.0.", **_TYPER_OPTIONS)
db_app = typer.Typer(help="Database schema.", **_TYPER_OPTIONS)
users_app = typer.Typer(help="Users and their API keys.", **_TYPER_OPTIONS)
keys_app = typer.Typer(help="Encryption keys for secrets at rest.", **_TYPER_OPTIONS)
audit_app = typer.Typer(help="The audit log of security events.", **_TYPER_OPTIONS)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")


def _fail(message: str, code: int = 1) -> NoReturn:
    # One line whatever the message holds (a driver's text may span several).
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        _fail(str(exc), 2)


def _with_database(operation: Callable[[Any], Awaitable[T]]) -> T:
    """Bring the schema up to date, then run `operation(session)` and report errors in a line:
    2 for configuration (settings, an unreachable database), 1 for what was asked."""
    from sqlalchemy.exc import (
        DBAPIError,
        IntegrityError,
        InterfaceError,
        OperationalError,
        SQLAlchemyError,
    )
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    from tracecat.db import Database, upgrade_schema

    settings = _settings()
    url = settings.database_url_or_default
    try:
        upgrade_schema(url)

        async def run() -> T:
            database = Database.from_settings(settings)
            try:
                async with database.session() as session:
                    return await operation(session)
            finally:
                await database.dispose()

        return asyncio.run(run())
    except (SettingsError, TracecatError) as exc:
        _fail(str(exc), 2 if isinstance(exc, SettingsError) else 1)
    except IntegrityError as exc:
        _fail(f"conflicts with what is stored: {url_error_reason(exc, url)}")
    except (OperationalError, InterfaceError, PoolTimeoutError, OSError) as exc:
        # The schema was just upgraded, so the database went away or turned us down.
        _fail(f"DATABASE_URL: {redact_url(url)}: {url_error_reason(exc, url)}", 2)
    except DBAPIError as exc:
        if exc.connection_invalidated:
            _fail(f"DATABASE_URL: {redact_url(url)}: {url_error_reason(exc, url)}", 2)
        # A value the database would not take (asyncpg's DataErrors arrive as DBAPIError).
        _fail(f"the database refused the request: {url_error_reason(exc, url)}")
    except SQLAlchemyError as exc:
        _fail(f"the database refused the request: {url_error_reason(exc, url)}")


def _check_redis(url: str) -> None:
    """Fail at start, in one line, instead of on the first send (the pacer needs Redis)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    # ValueError: redis-py's URL parsing; its text may quote pieces of the URL.
    except (redis.RedisError, OSError, ValueError) as exc:
        raise SettingsError(
            f"REDIS_URL: cannot use {redact_url(url)}: {url_error_reason(exc, url)}"
        ) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    emulator: Annotated[
        bool, typer.Option("--emulator", help="Use the built-in offline Microsoft emulator.")
    ] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Processes serving the API (each runs the background jobs).")
    ] = 1,
) -> None:
    """Run the API (and, with --emulator, a local stand-in for Microsoft)."""
    import uvicorn

    from tracecat.app import create_app
    from tracecat.crypto import Keyring
    from tracecat.db import upgrade_schema
    from tracecat.logs import configure_logging

    settings = _settings()
    configure_logging(settings.tracecat_log_level)
    # Every check that can fail runs before the emulator starts, so a failure is the only
    # line on stderr (the emulator's server logs its own start and stop).
    try:
        Keyring.from_settings(settings)
        if not emulator:
            settings.require_microsoft_app()
        typer.echo("Bringing the database schema up to date ...")
        upgrade_schema(settings.database_url_or_default)
        if settings.redis_url:
            _check_redis(settings.redis_url)
    except SettingsError as exc:
        _fail(str(exc), 2)
    server = None
    if emulator:
        from tracecat.emulator.server import EmulatorServer

        server = EmulatorServer(settings.data_dir, persist=True)
        server.start()
        settings = settings.model_copy(
            update={
                "microsoft_authority_host": server.authority_host,
                "microsoft_graph_url": server.graph_url,
                "microsoft_ca_bundle": server.ca_bundle,
                "microsoft_client_id": server.client_id,
                "microsoft_client_secret": server.client_secret,
            }
        )
    public_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    where = f"http://{public_host}:{port}"
    update: dict[str, object] = {"microsoft_redirect_uri": settings.redirect_uri(public_host, port)}
    if emulator:
        # The emulator notifies this server, and a newcomer's receiver is local: unless set,
        # Microsoft reaches us at our own address and webhook targets may be on loopback.
        if settings.tracecat_public_url is None:
            update["tracecat_public_url"] = where
        if "microsoft_extra_scopes" not in settings.model_fields_set:
            # Reading channels makes subscriptions work at first try (demo data only).
            update["microsoft_extra_scopes"] = ["ChannelMessage.Read.All"]
        if "tracecat_webhook_allowed_networks" not in settings.model_fields_set:
            update["tracecat_webhook_allowed_networks"] = [
                ipaddress.ip_network("127.0.0.0/8"),
                ipaddress.ip_network("::1/128"),
            ]
    settings = settings.model_copy(update=update)
    if server:
        typer.echo(f"Microsoft emulator: login and Graph at {server.authority_host} (offline)")
    typer.echo(
        f"Open {where}/ and paste an API key from `tracecat-integrations users create EMAIL`."
    )
    # The app writes its own access log (tracecat.middleware), the same with or without
    # the in-process emulator, whose uvicorn would silence the shared `uvicorn.access`.
    options: dict[str, Any] = {"host": host, "port": port, "log_config": None, "access_log": False}
    # uvicorn stops gracefully on SIGTERM, then raises the signal again for its old handler:
    # with the default one the process would die there, before the log lines still queued
    # are written (atexit). This handler exits with the shell's code for SIGTERM, 143.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        if workers == 1:
            uvicorn.run(create_app(settings), **options, **server_options())
        else:
            # Worker processes build the app themselves, from the environment: what was
            # resolved here (the emulator's addresses, the redirect URI) goes there too.
            os.environ.update(settings_environment(settings, {*update, *EMULATOR_FIELDS}))
            uvicorn.run(
                "tracecat.cli:worker_app",
                factory=True,
                workers=workers,
                **options,
                **server_options(),
            )
    finally:
        if server:
            server.stop()


EMULATOR_FIELDS = (
    "microsoft_authority_host",
    "microsoft_graph_url",
    "microsoft_ca_bundle",
    "microsoft_client_id",
    "microsoft_client_secret",
)


def settings_environment(settings: Settings, fields: set[str]) -> dict[str, str]:
    """Settings as the environment variables that would give them (lists comma-separated)."""
    environment = {}
    for name in fields:
        value = getattr(settings, name)
        if value is None:
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        environment[name.upper()] = text
    return environment


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def worker_app() -> Any:
    """The app of one `serve --workers N` process (uvicorn imports it by name)."""
    from tracecat.app import create_app
    from tracecat.logs import configure_logging

    settings = _settings()
    configure_logging(settings.tracecat_log_level)
    return create_app(settings)


@app.command("emulator")
def run_emulator_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTPS port (login token endpoint, Graph).")] = 8443,
    http_port: Annotated[int, typer.Option(help="Plain HTTP port (browser sign-in page).")] = 8080,
) -> None:
    """Run only the Microsoft emulator, for other processes to share."""
    from tracecat.emulator.server import run_emulator

    run_emulator(_settings().data_dir, host, port, http_port)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration (alembic upgrade head)."""
    from tracecat.db import upgrade_schema

    try:
        upgrade_schema(_settings().database_url_or_default)
    except SettingsError as exc:
        _fail(str(exc), 2)
    typer.echo("Database schema is up to date.")


@users_app.command("create")
def users_create(email: str) -> None:
    """Create a user and print its API key (shown once; only its hash is stored)."""
    from tracecat.auth.service import UserService, normalize_email

    # Checked before the database is opened: a bad address needs no schema upgrade.
    try:
        normalize_email(email)
    except TracecatError as exc:
        _fail(str(exc))
    issued = _with_database(lambda session: UserService(session).create_user(email))
    typer.echo("Keep this API key now: it is not shown again.", err=True)
    typer.echo(json.dumps(issued.as_json()))


@users_app.command("list")
def users_list() -> None:
    """List users and their keys (prefixes only)."""
    from tracecat.auth.service import UserService

    users = _with_database(lambda session: UserService(session).list_users())
    for user in users:
        active = [k.prefix + "…" for k in user.api_keys if k.revoked_at is None]
        typer.echo(f"{user.id}  {user.email}  keys: {', '.join(active) or 'none'}")


@users_app.command("rotate-key")
def users_rotate_key(email: str) -> None:
    """Revoke the user's keys and print a new one."""
    from tracecat.auth.service import UserService

    issued = _with_database(lambda session: UserService(session).rotate_key(email))
    typer.echo("Previous keys are revoked. Keep this API key now: it is not shown again.", err=True)
    typer.echo(json.dumps(issued.as_json()))


@users_app.command("revoke-keys")
def users_revoke_keys(email: str) -> None:
    """Revoke every API key of the user."""
    from tracecat.auth.service import UserService

    count = _with_database(lambda session: UserService(session).revoke_keys(email))
    typer.echo(f"Revoked {count} key(s) of {email}.")


@users_app.command("delete")
def users_delete(email: str) -> None:
    """Delete a user with its keys and integrations."""
    from tracecat.auth.service import UserService

    _with_database(lambda session: UserService(session).delete_user(email))
    typer.echo(f"Deleted {email}.")


@audit_app.command("list")
def audit_list(
    user: Annotated[str | None, typer.Option(help="Only this user's events (email).")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only events at or after this ISO date or date-time (UTC unless given)."),
    ] = None,
) -> None:
    """Print security events newest first, one JSON object per line."""
    from tracecat.audit.schemas import AuditEventResponse
    from tracecat.audit.service import list_all
    from tracecat.auth.service import UserService

    # Checked before the database is opened, like an email to create.
    since_at = _parse_since(since) if since is not None else None

    async def read(session: Any) -> list[Any]:
        user_id = (await UserService(session).get_by_email(user)).id if user else None
        return await list_all(session, user_id, since_at)

    for row in _with_database(read):
        typer.echo(AuditEventResponse.from_row(row).model_dump_json())


def _parse_since(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        _fail("--since: not an ISO date or date-time: use e.g. 2026-12-01 or 2026-12-01T09:30Z")
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a new encryption key for TRACECAT_ENCRYPTION_KEYS."""
    from tracecat.crypto import generate_key

    typer.echo(generate_key())


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt every stored secret with the first key of TRACECAT_ENCRYPTION_KEYS."""
    from tracecat.crypto import Keyring
    from tracecat.db import reencrypt_all

    settings = _settings()
    if not settings.tracecat_encryption_keys:
        _fail("TRACECAT_ENCRYPTION_KEYS is not set: put the new key first, then the old ones", 2)
    try:
        keyring = Keyring.from_settings(settings)
        count = _with_database(lambda session: reencrypt_all(session.bind, keyring))
    except SettingsError as exc:
        _fail(str(exc), 2)
    typer.echo(f"Re-encrypted {count} secret(s) with the first key; older keys can now be removed.")


def main() -> None:  # pragma: no cover - for `python -m tracecat.cli`
    app(prog_name="tracecat-integrations")


if __name__ == "__main__":  # pragma: no cover
    main()
