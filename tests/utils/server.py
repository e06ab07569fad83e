"""Real servers for tests: the app under uvicorn in a thread, or `serve` as a process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tracecat.http_limits import server_options


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(
        self, app: Any, port: int | None = None, options: dict[str, Any] | None = None
    ) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,  # the app logs its own access lines
            lifespan="on",
            # The same HTTP limits and proxy trust as `serve`, unless a test changes them.
            **(options or server_options()),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


# The emulator's control API takes only JSON (no cross-site form posts), bodyless POSTs included.
CONTROL_HEADERS = {"Content-Type": "application/json"}

CLI = str(Path(sys.executable).parent / "tracecat-integrations")
# Settings the test machine may have: a served process gets only what a test gives it.
OWN_VARIABLES = ("MICROSOFT_", "TRACECAT_", "DATABASE_URL", "REDIS_URL")


def clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_VARIABLES)}
    return {**env, **extra}


class ServeProcess:
    """`tracecat-integrations serve` as a real process, as a user starts it."""

    def __init__(self, env: dict[str, str], *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = clean_environment(**env)
        self._process = subprocess.Popen(
            [CLI, "serve", "--port", str(self.port), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 30) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self._process.stdout.read() if self._process.stdout else ""

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown code runs."""
        self._process.kill()
        self._process.wait(timeout=15)

    def terminate(self) -> None:
        """SIGTERM, as an orchestrator stops a container: in-flight work may finish."""
        self._process.terminate()

    def wait(self, timeout: float = 40) -> int:
        return self._process.wait(timeout=timeout)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:  # the graceful shutdown gives work in flight up to 20 s
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
