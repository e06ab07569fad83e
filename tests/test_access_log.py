"""`serve` writes one access-log line per request, with or without the in-process emulator,
and never a query string (the callback's carries the authorization code)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.utils.server import ServeProcess

# Time, level and logger once, then the request.
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d [\d:,]+ INFO tracecat\.access: "
    r'(?P<client>\S+) "(?P<method>[A-Z]+) (?P<path>\S+)" (?P<status>\d{3}) [\d.]+ms$'
)


@pytest.mark.parametrize("mode", ["--emulator", "registered app"])
def test_one_line_per_request_without_query_strings(mode: str, tmp_path: Path) -> None:
    env = {"TRACECAT_DATA_DIR": str(tmp_path / "data")}
    args: tuple[str, ...] = ("--emulator",)
    if mode == "registered app":
        env |= {"MICROSOFT_CLIENT_ID": "app-id", "MICROSOFT_CLIENT_SECRET": "not-a-real-secret"}
        args = ()
    service = ServeProcess(env, *args).wait_ready()
    try:
        callback = httpx.get(
            f"{service.url}/auth/integrations/microsoft/callback?code=SECRET-CODE&state=s1"
        )
        assert callback.status_code == 400
        assert httpx.get(f"{service.url}/nowhere?q=1").status_code == 404
    finally:
        service.stop()
    output = service.output()
    lines = [m.groupdict() for m in map(LINE.match, output.splitlines()) if m]
    requests = [(line["method"], line["path"], line["status"]) for line in lines]
    assert ("GET", "/auth/integrations/microsoft/callback", "400") in requests
    assert ("GET", "/nowhere", "404") in requests
    assert requests.count(("GET", "/auth/integrations/microsoft/callback", "400")) == 1
    assert "INFO:" not in output  # no line carries a second prefix
    assert "SECRET-CODE" not in output and "?" not in "".join(line["path"] for line in lines)
