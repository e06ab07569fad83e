"""The `tracecat-integrations` command line, run as a user runs it: a real process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from tests.conftest import ENCRYPTION_KEY, POSTGRES_ADMIN_URL, Api, truncate_all
from tests.test_config import DATABASE_URLS, REDIS_URLS, SECRET
from tests.utils.flows import connect
from tests.utils.server import CLI, clean_environment
from tests.utils.server import OWN_VARIABLES as OWN
from tracecat.auth.models import ApiKey
from tracecat.auth.service import UserService, authenticate, normalize_email
from tracecat.cli import _with_database
from tracecat.cli import app as cli_app
from tracecat.config import get_settings
from tracecat.db import Database
from tracecat.exceptions import AuthenticationError, BadRequestError

# `serve` and `emulator` set up logging and start servers: they run as the real program.
# Every other command runs in this process through Click's runner, with the same environment
# and the same stdout/stderr split, because a fresh interpreter costs about a second and this
# file runs dozens of commands.
_SUBPROCESS_COMMANDS = ("serve", "emulator")


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """`process=True` forces a real process (from inside another event loop, e.g. Playwright)."""
    if process or args[0] in _SUBPROCESS_COMMANDS:
        return subprocess.run(
            [CLI, *args],
            env=clean_environment(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    # Only what the test gives: the machine's own settings are unset, as clean_environment does.
    unset: dict[str, str | None] = {name: None for name in os.environ if name.startswith(OWN)}
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, list(args), env={**unset, **env})
    finally:
        get_settings.cache_clear()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # A real run would have printed a traceback: that is a failure, never "one line".
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli_env(tmp_path: Path, database_url: str) -> Iterator[dict[str, str]]:
    yield {"TRACECAT_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url}
    truncate_all(database_url)


def _authenticates(database_url: str, api_key: str) -> bool:
    async def check() -> bool:
        database = Database(database_url)
        try:
            await authenticate(database, api_key)
            return True
        except AuthenticationError:
            return False
        finally:
            await database.dispose()

    return asyncio.run(check())


def test_users_create_prints_json_and_stores_only_a_hash(
    cli_env: dict[str, str], database_url: str
) -> None:
    result = run_cli("users", "create", "Analyst@Example.com", env=cli_env)
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(created) == {"id", "email", "api_key"}
    assert created["email"] == "analyst@example.com"
    assert _authenticates(database_url, created["api_key"])

    listed = run_cli("users", "list", env=cli_env)
    assert listed.returncode == 0 and created["id"] in listed.stdout
    assert created["api_key"] not in listed.stdout

    duplicate = run_cli("users", "create", "analyst@example.com", env=cli_env)
    assert duplicate.returncode != 0
    assert "already exists" in duplicate.stderr and len(duplicate.stderr.strip().splitlines()) == 1

    rotated = run_cli("users", "rotate-key", "analyst@example.com", env=cli_env)
    new_key = json.loads(rotated.stdout.strip().splitlines()[-1])["api_key"]
    assert new_key != created["api_key"]
    assert not _authenticates(database_url, created["api_key"])
    assert _authenticates(database_url, new_key)

    assert run_cli("users", "revoke-keys", "analyst@example.com", env=cli_env).returncode == 0
    assert not _authenticates(database_url, new_key)


def test_bad_input_is_one_line_errors(cli_env: dict[str, str]) -> None:
    for args, expected in [
        (("users", "create", "not-an-email"), "not an email"),
        (("users", "rotate-key", "nobody@example.com"), "no user"),
    ]:
        result = run_cli(*args, env=cli_env)
        assert result.returncode != 0
        assert expected in result.stderr and "Traceback" not in result.stderr
    for url in ("mysql://x@y/z", "postgresql://root:hunter2@127.0.0.1:1/nowhere"):
        bad_db = run_cli("db", "upgrade", env={**cli_env, "DATABASE_URL": url})
        assert bad_db.returncode == 2, bad_db.stderr
        assert len(bad_db.stderr.strip().splitlines()) == 1 and "DATABASE_URL" in bad_db.stderr
        assert "hunter2" not in bad_db.stderr


def test_db_upgrade_is_idempotent(cli_env: dict[str, str]) -> None:
    for _ in range(2):
        result = run_cli("db", "upgrade", env=cli_env)
        assert result.returncode == 0, result.stderr


def test_serve_without_app_registration_names_the_variable(tmp_path: Path) -> None:
    result = run_cli("serve", "--port", "0", env={"TRACECAT_DATA_DIR": str(tmp_path)}, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MICROSOFT_CLIENT_ID" in lines[0]


def test_default_storage_is_a_fresh_data_dir(tmp_path: Path) -> None:
    env = {"TRACECAT_DATA_DIR": str(tmp_path / "fresh")}
    result = run_cli("users", "create", "first@example.com", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fresh" / "tracecat.db").is_file()


def test_keys_generate_and_rotate(api: Api, tmp_path: Path) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        assert connect(browser, api.url, user, "alice@contoso.example").status_code == 200
    old_key = api.settings.tracecat_encryption_keys[0]
    generated = run_cli("keys", "generate", env={})
    new_key = generated.stdout.strip()
    Fernet(new_key.encode())  # a usable key
    assert new_key != old_key

    env = {
        "TRACECAT_DATA_DIR": str(tmp_path),
        "DATABASE_URL": api.database_url,
        "TRACECAT_ENCRYPTION_KEYS": f"{new_key},{old_key}",
    }
    rotated = run_cli("keys", "rotate", env=env)
    assert rotated.returncode == 0, rotated.stderr
    assert "Re-encrypted 2 secret" in rotated.stdout  # the access and the refresh token

    ciphertexts = _raw_token_columns(api.database_url)
    assert ciphertexts
    for value in ciphertexts:
        Fernet(new_key.encode()).decrypt(value)
        with pytest.raises(InvalidToken):
            Fernet(old_key.encode()).decrypt(value)

    # With the old key gone, rotating again fails with a message, not a traceback.
    failed = run_cli("keys", "rotate", env={**env, "TRACECAT_ENCRYPTION_KEYS": generate_other()})
    assert failed.returncode != 0 and "cannot be decrypted" in failed.stderr
    assert "Traceback" not in failed.stderr
    # Restore the key the running test server uses.
    run_cli("keys", "rotate", env={**env, "TRACECAT_ENCRYPTION_KEYS": f"{old_key},{new_key}"})


def generate_other() -> str:
    return Fernet.generate_key().decode()


def _raw_token_columns(database_url: str) -> list[bytes]:
    from sqlalchemy import text

    async def read() -> list[bytes]:
        database = Database(database_url)
        try:
            async with database.engine.connect() as connection:
                rows = await connection.execute(
                    text("SELECT access_token, refresh_token FROM user_integrations")
                )
                return [bytes(v) for row in rows for v in row if v is not None]
        finally:
            await database.dispose()

    return asyncio.run(read())


# --- bad DATABASE_URL / REDIS_URL: one line, the variable named, no secret ------------------

_POSTGRES = make_url(POSTGRES_ADMIN_URL)
_REACHABLE = f"{_POSTGRES.host}:{_POSTGRES.port or 5432}"
# Failures only a real server gives: (URL, secrets).
_SERVER_REFUSALS = [
    (f"postgresql://nobody_here:{SECRET}@{_REACHABLE}/{_POSTGRES.database}", [SECRET]),
    (f"postgresql://{_POSTGRES.username}:{SECRET}@{_REACHABLE}/no_such_database", [SECRET]),
    (f"postgresql://{_POSTGRES.username}@{_REACHABLE}/db?password={SECRET}&bogus=1", [SECRET]),
    (f"postgresql://u:{SECRET}@no-such-host.invalid/db", [SECRET]),
]
# Every command reaches the URL its own way; the settings are loaded by all of them.
_MICROSOFT_APP = {"MICROSOFT_CLIENT_ID": "test-client", "MICROSOFT_CLIENT_SECRET": "not-real"}
_REFUSED = f"postgresql://u:{SECRET}@127.0.0.1:1/db"  # well formed, a closed port
_MALFORMED = f"postgresql://u:{SECRET[:3]}@{SECRET[3:]}@127.0.0.1:1/db"
_COMMANDS: list[tuple[tuple[str, ...], str]] = [
    (("db", "upgrade"), _REFUSED),
    (("db", "upgrade"), "sqlite:////dev/null/tracecat.db"),  # its directory cannot be made
    (("users", "create", "analyst@example.com"), _REFUSED),
    (("users", "rotate-key", "analyst@example.com"), _MALFORMED),
    (("keys", "rotate"), _REFUSED),
    (("serve", "--port", "0"), _REFUSED),
    (("serve", "--port", "0", "--emulator"), _REFUSED),
    (("serve", "--port", "0", "--emulator"), _MALFORMED),
    (("emulator", "--port", "0", "--http-port", "0"), _MALFORMED),
]
_SECRET_PIECES = [SECRET[:3], SECRET[3:]]
BAD_URL_RUNS = (
    [
        (("users", "list"), "DATABASE_URL", url, secrets)
        for url, secrets, _ in DATABASE_URLS + [(*case, False) for case in _SERVER_REFUSALS]
    ]
    + [(args, "DATABASE_URL", url, _SECRET_PIECES) for args, url in _COMMANDS]
    + [
        (("serve", "--port", "0", "--emulator"), "REDIS_URL", url, secrets)
        for url, secrets, _ in REDIS_URLS
    ]
    + [
        (("users", "list"), "REDIS_URL", url, secrets)
        for url, secrets, at_load in REDIS_URLS
        if at_load
    ]
)


def _command_id(args: tuple[str, ...]) -> str:
    words = [a.lstrip("-") for a in args if "@" not in a and not a[-1].isdigit()]
    return "-".join(w for w in words if w != "port")


@pytest.mark.parametrize(
    ("args", "variable", "url", "secrets"),
    [
        pytest.param(*run, id=f"{_command_id(run[0])}-{run[1]}-{n}")
        for n, run in enumerate(BAD_URL_RUNS)
    ],
)
def test_bad_url_is_one_line_without_its_secret(
    tmp_path: Path, args: tuple[str, ...], variable: str, url: str, secrets: list[str]
) -> None:
    env = {
        "TRACECAT_DATA_DIR": str(tmp_path),
        "TRACECAT_ENCRYPTION_KEYS": generate_other(),
        **_MICROSOFT_APP,
        variable: url,
    }
    result = run_cli(*args, env=env, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {variable}: "), result.stderr
    for secret in secrets:
        assert secret not in result.stdout and secret not in result.stderr


# --- input over a column's limit: refused alike on both databases ---------------------------

# RFC 5321's 254 characters exactly: a 64-character local part and 63-character labels.
LONGEST_EMAIL = f"{'a' * 64}@{'b' * 63}.{'c' * 63}.{'d' * 57}.com"


def test_overlong_or_malformed_email_is_refused_alike(cli_env: dict[str, str]) -> None:
    assert len(LONGEST_EMAIL) == 254
    for email, expected in [
        (f"x{LONGEST_EMAIL}", "255 characters long: at most 254"),
        ("a" * 400 + "@example.com", "412 characters long: at most 254"),  # over the column
        (f"{'a' * 65}@example.com", "not an email"),
        ("a@b@example.com", "not an email"),
    ]:
        result = run_cli("users", "create", email, env=cli_env)
        assert result.returncode == 1, (email, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (email, result.stderr[-2000:])
        assert result.stdout == ""
    assert run_cli("users", "list", env=cli_env).stdout == ""  # nothing was stored

    created = run_cli("users", "create", LONGEST_EMAIL.upper(), env=cli_env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout.strip().splitlines()[-1])["email"] == LONGEST_EMAIL
    assert run_cli("users", "rotate-key", LONGEST_EMAIL, env=cli_env).returncode == 0


@pytest.mark.parametrize(
    "email",
    [
        f"a@{'b' * 64}.com",  # a label over 63
        "a b@example.com",
        "a\tb@example.com",
        "a..b@example.com",
        ".a@example.com",
        '"a"@example.com',
        "a@example",
        "a@example.123",
        "a@-example.com",
        "a@exa_mple.com",
        "@example.com",
        "not-an-email",
    ],
)
def test_malformed_email_shapes(email: str) -> None:
    with pytest.raises(BadRequestError, match="not an email address"):
        normalize_email(email)


def test_sensible_emails_pass() -> None:
    for email in ("a.b+tag@sub.example.co", "o'neil@example.org", "jörg@bücher.de"):
        assert normalize_email(f"  {email.upper()} ") == email


@pytest.fixture
def in_process_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> Iterator[str]:
    """The CLI's settings pointed at the test database, for calling its helpers directly."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("TRACECAT_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()
    truncate_all(database_url)


def _one_line_failure(operation: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(typer.Exit) as raised:
        _with_database(operation)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return raised.value.exit_code, lines[0]


def test_database_errors_are_one_line(
    in_process_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What edge validation misses still reaches a person as a line, not a traceback."""

    async def orphan_key(session: Any) -> None:
        session.add(ApiKey(user_id=uuid.uuid4(), key_hash="0" * 64, prefix="tci_0000"))
        await session.commit()

    code, line = _one_line_failure(orphan_key, capsys)
    assert code == 1 and line.startswith("error: conflicts with what is stored: ")

    async def overlong_prefix(session: Any) -> None:
        user_id = (await session.execute(text("SELECT id FROM users"))).scalar()
        session.add(ApiKey(user_id=user_id, key_hash="1" * 64, prefix="p" * 17))
        await session.commit()

    # The 580-line traceback of issue 8 (SQLite does not enforce lengths: nothing to check).
    if in_process_env.startswith("postgresql"):
        _with_database(lambda session: UserService(session).create_user("a@example.com"))
        code, line = _one_line_failure(overlong_prefix, capsys)
        assert code == 1 and line.startswith("error: the database refused the request: ")
        assert line.endswith("value too long for type character varying(16)")


def test_users_delete_removes_the_user_keys_and_connections(api: Api) -> None:
    user = api.user("leaver@example.com")
    with api.browser() as browser:
        assert connect(browser, api.url, user, "alice@contoso.example").status_code == 200
    env = {
        "DATABASE_URL": api.database_url,
        "TRACECAT_DATA_DIR": str(api.settings.data_dir),
        "TRACECAT_ENCRYPTION_KEYS": ENCRYPTION_KEY,
    }
    deleted = run_cli("users", "delete", "leaver@example.com", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert "Deleted leaver@example.com" in deleted.stdout
    assert not _authenticates(api.database_url, user.api_key)
    assert _raw_token_columns(api.database_url) == []  # the connection went with the user
    listed = run_cli("users", "list", env=env)
    assert "leaver@example.com" not in listed.stdout
    again = run_cli("users", "delete", "leaver@example.com", env=env)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "leaver@example.com" in again.stderr
