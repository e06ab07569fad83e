"""Fixtures of the notifications and command-line tests, for the audit of what they do."""

from tests.notifications.conftest import app_database, database, receiver  # noqa: F401
from tests.test_cli import cli_env  # noqa: F401
