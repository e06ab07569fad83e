"""The audit of API keys made at the command line, and `audit list` itself, run as a person
runs them (see `tests/test_cli.py`). Both databases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.audit.support import events
from tests.conftest import Api
from tests.test_cli import run_cli
from tests.utils.flows import ApiUser

EMAIL = "analyst@example.com"


def _audit_list(env: dict[str, str], *options: str) -> list[dict[str, Any]]:
    result = run_cli("audit", "list", *options, env=env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _key(result: Any) -> str:
    return json.loads(result.stdout.strip().splitlines()[-1])["api_key"]


def test_key_changes_are_recorded_and_listed(cli_env: dict[str, str]) -> None:
    first = _key(run_cli("users", "create", EMAIL, env=cli_env))
    second = _key(run_cli("users", "rotate-key", EMAIL, env=cli_env))
    assert run_cli("users", "revoke-keys", EMAIL, env=cli_env).returncode == 0
    assert run_cli("users", "revoke-keys", EMAIL, env=cli_env).returncode == 0  # none left
    assert _key(run_cli("users", "create", "other@example.com", env=cli_env))

    mine = _audit_list(cli_env, "--user", EMAIL.upper())
    assert [(e["event"], e["detail"]) for e in mine] == [
        ("api_key.revoked", "1 key(s) revoked"),
        ("api_key.rotated", f"1 key(s) revoked, new key {second[:8]}…"),
        ("api_key.created", f"key {first[:8]}…"),
    ]
    for event in mine:
        assert (event["actor"], event["client_address"], event["subject"]) == ("cli", None, EMAIL)
    every = _audit_list(cli_env)
    assert [e["subject"] for e in every] == ["other@example.com", EMAIL, EMAIL, EMAIL]
    listed = run_cli("audit", "list", env=cli_env).stdout
    assert first not in listed and second not in listed


def test_since_and_a_deleted_users_events(cli_env: dict[str, str]) -> None:
    assert run_cli("users", "create", EMAIL, env=cli_env).returncode == 0
    today = datetime.now(UTC).date()
    assert len(_audit_list(cli_env, "--since", today.isoformat())) == 1
    assert len(_audit_list(cli_env, "--since", f"{today}T00:00:00+00:00")) == 1
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    assert _audit_list(cli_env, "--since", tomorrow.strftime("%Y-%m-%dT%H:%M")) == []

    # Events outlive their user: the id goes, the email stays.
    assert run_cli("users", "delete", EMAIL, env=cli_env).returncode == 0
    (event,) = _audit_list(cli_env)
    assert (event["event"], event["user_id"], event["subject"]) == ("api_key.created", None, EMAIL)


def test_bad_input_is_one_line(cli_env: dict[str, str]) -> None:
    for options, expected in [
        (("--user", "nobody@example.com"), "no user with email nobody@example.com"),
        (("--since", "yesterday"), "--since: not an ISO date"),
        (("--since", "2026-13-01"), "--since: not an ISO date"),
    ]:
        result = run_cli("audit", "list", *options, env=cli_env)
        assert result.returncode == 1, (options, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (options, result.stderr)
        assert result.stdout == ""


def test_the_user_sees_what_the_cli_did(api: Api) -> None:
    user: ApiUser = api.user(EMAIL)
    env = {"DATABASE_URL": api.database_url, "TRACECAT_DATA_DIR": str(api.settings.data_dir)}
    rotated = run_cli("users", "rotate-key", EMAIL, env=env)
    user.api_key = _key(rotated)
    found = events(api.url, user)
    assert [e["event"] for e in found] == ["api_key.rotated", "api_key.created"]
    assert found[0]["actor"] == "cli" and found[0]["client_address"] is None
