"""The `tracecat-integrations` command line, run as a user runs it: a real process."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken

from tests.conftest import Api, truncate_all
from tests.utils.flows import connect
from tests.utils.server import CLI, clean_environment
from tracecat.auth.service import authenticate
from tracecat.db import Database
from tracecat.exceptions import AuthenticationError


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=clean_environment(**env), capture_output=True, text=True, timeout=timeout
    )


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
