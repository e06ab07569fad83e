"""Shared set-up for the benches: the Microsoft emulator and our API as real subprocesses.

Everything listens on 127.0.0.1 only, lives in a temporary directory (and, for PostgreSQL, a
database of its own) and is torn down on exit, including Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from tests.utils.flows import ApiUser, connect

# Inherited settings would point the bench elsewhere: clean_environment drops them.
from tests.utils.server import CONTROL_HEADERS, clean_environment, free_port
from tracecat.crypto import generate_key
from tracecat.emulator.constants import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_USERS

Backend = Literal["sqlite", "postgresql"]

HOST = "127.0.0.1"
POSTGRES_ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
STARTUP_TIMEOUT = 45.0
STOP_TIMEOUT = 10.0

_started = time.monotonic()


def log(message: str) -> None:
    """Progress goes to stderr so stdout holds only the results."""
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


def cli_path() -> str:
    """The CLI next to this interpreter (the venv's), else the one on PATH."""
    candidate = Path(sys.executable).parent / "tracecat-integrations"
    found = str(candidate) if candidate.exists() else shutil.which("tracecat-integrations")
    if not found:
        raise SystemExit("tracecat-integrations is not installed in this environment")
    return found


def print_table(rows: Sequence[tuple[str, Any]], figures: dict[str, Any]) -> None:
    """Results on stdout: a two-column table, then one key=value line for scripts to grep."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(" ".join(f"{key}={value}" for key, value in figures.items()), flush=True)


# --- processes -------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()  # uvicorn shuts down gracefully on SIGTERM
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)


def spawn(
    stack: ExitStack,
    name: str,
    args: list[str],
    env: dict[str, str],
    log_dir: Path,
    program: list[str] | None = None,
) -> Process:
    """Start a subprocess (by default our CLI) whose output goes to a log file; it is stopped
    when `stack` closes."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [*(program or [cli_path()]), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Own session: a terminal's Ctrl-C reaches only us, and we stop children in order.
            start_new_session=True,
        )
    process = Process(name, popen, log_path)
    stack.callback(process.stop)
    return process


def wait_until_ready(process: Process, url: str, verify: ssl.SSLContext | bool = True) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(verify=verify, timeout=2.0) as client:
        while time.monotonic() < deadline:
            process.check_alive()
            try:
                if client.get(url).status_code == 200:
                    return
            except (httpx.TransportError, ssl.SSLError):
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{process.name} was not ready at {url} in time:\n{process.log_tail()}")


# --- the emulator ----------------------------------------------------------------------------


@dataclass
class Emulator:
    https_port: int
    http_port: int
    data_dir: Path

    @property
    def authority_host(self) -> str:
        return f"https://{HOST}:{self.https_port}"

    @property
    def graph_url(self) -> str:
        return f"{self.authority_host}/v1.0"

    @property
    def ca_bundle(self) -> Path:
        # Where EmulatorServer writes its private CA (tracecat/emulator/server.py).
        return self.data_dir / "emulator" / "ca.pem"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def client_env(self) -> dict[str, str]:
        """What our server needs to use this emulator instead of Microsoft."""
        return {
            "MICROSOFT_AUTHORITY_HOST": self.authority_host,
            "MICROSOFT_GRAPH_URL": self.graph_url,
            "MICROSOFT_CA_BUNDLE": str(self.ca_bundle),
            "MICROSOFT_CLIENT_ID": DEMO_CLIENT_ID,
            "MICROSOFT_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        }

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the control API under /_emulator."""
        with httpx.Client(verify=self.ssl_context(), timeout=30.0) as client:
            response = client.request(
                method,
                f"{self.authority_host}/_emulator{path}",
                json=body,
                headers=CONTROL_HEADERS,
            )
        response.raise_for_status()
        return response.json() if response.content else None


def start_emulator(stack: ExitStack, work_dir: Path) -> Emulator:
    data_dir = work_dir / "emulator-data"
    data_dir.mkdir()
    emulator = Emulator(free_port(), free_port(), data_dir)
    env = {**clean_environment(), "TRACECAT_DATA_DIR": str(data_dir)}
    args = ["emulator", "--host", HOST, "--port", str(emulator.https_port)]
    process = spawn(
        stack, "emulator", [*args, "--http-port", str(emulator.http_port)], env, work_dir
    )
    # The CA file appears before the listeners; the TLS check needs it.
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not emulator.ca_bundle.exists():
        process.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the emulator wrote no CA:\n{process.log_tail()}")
        time.sleep(0.05)
    wait_until_ready(process, f"{emulator.authority_host}/_emulator", emulator.ssl_context())
    log(f"emulator up at {emulator.authority_host} (sign-in on http port {emulator.http_port})")
    return emulator


# --- the database ----------------------------------------------------------------------------


def _run_postgres(statement: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def postgres_database(stack: ExitStack) -> str:
    """A fresh database of our own, dropped when `stack` closes; returns its URL."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    _run_postgres(f'CREATE DATABASE "{name}"')
    # FORCE: a server killed mid-request may leave a connection behind.
    stack.callback(_run_postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    log(f"created PostgreSQL database {name}")
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


# --- our server ------------------------------------------------------------------------------


@dataclass
class StackOptions:
    database: Backend = "sqlite"
    instances: int = 1
    users: int = 1
    redis_url: str | None = None


@dataclass
class Stack:
    emulator: Emulator
    server_urls: list[str]
    users: list[ApiUser]
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    # For a bench that starts more processes: cleaned up with the rest, logs beside theirs.
    exits: ExitStack = field(default_factory=ExitStack)
    work_dir: Path = Path(".")

    def check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()


def server_environment(
    emulator: Emulator, work_dir: Path, options: StackOptions, stack: ExitStack
) -> dict[str, str]:
    data_dir = work_dir / "server-data"
    data_dir.mkdir()
    env = {
        **clean_environment(),
        **emulator.client_env(),
        "TRACECAT_DATA_DIR": str(data_dir),
        # One explicit key, so every instance and the CLI decrypt each other's secrets.
        "TRACECAT_ENCRYPTION_KEYS": generate_key(),
        # The benches load one key far past the default 600/minute: measured is the work
        # behind the limit (counted on every request all the same), not its 429s.
        "TRACECAT_RATE_LIMIT": "100000000/minute",
    }
    if options.database == "postgresql":
        env["DATABASE_URL"] = postgres_database(stack)
    if options.redis_url:
        env["REDIS_URL"] = options.redis_url
    return env


def run_cli(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [cli_path(), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"tracecat-integrations {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def create_user(env: dict[str, str], email: str) -> ApiUser:
    """`users create` prints the API key as JSON on its last stdout line."""
    last_line = run_cli(["users", "create", email], env).strip().splitlines()[-1]
    return ApiUser(**json.loads(last_line))


def connect_user(base_url: str, user: ApiUser, ms_email: str) -> None:
    """The browser flow of tests/utils/flows.py: connect, sign in with login_hint, callback."""
    with httpx.Client(timeout=30.0) as browser:
        response = connect(browser, base_url, user, ms_email)
    if response.status_code != 200:
        raise RuntimeError(
            f"connecting {user.email} failed: {response.status_code} {response.text}"
        )


def start_servers(
    stack: ExitStack, env: dict[str, str], instances: int, work_dir: Path
) -> tuple[list[str], list[Process]]:
    # Schema first, once: concurrent `serve` starts would race on the migrations.
    run_cli(["db", "upgrade"], env)
    processes, urls = [], []
    for index in range(instances):
        port = free_port()
        args = ["serve", "--host", HOST, "--port", str(port)]
        processes.append(spawn(stack, f"serve-{index}", args, env, work_dir))
        urls.append(f"http://{HOST}:{port}")
    for process, url in zip(processes, urls, strict=True):
        wait_until_ready(process, f"{url}/healthz")
        log(f"{process.name} up at {url}")
    return urls, processes


@contextmanager
def bench_stack(options: StackOptions) -> Iterator[Stack]:
    """Emulator, database, `serve` instance(s) and connected users; all cleaned up on exit."""
    if options.instances > 1 and options.database != "postgresql":
        raise SystemExit("several instances need --database postgresql (they share one database)")
    with ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tracecat-bench-")))
        emulator = start_emulator(stack, work_dir)
        env = server_environment(emulator, work_dir, options, stack)
        urls, processes = start_servers(stack, env, options.instances, work_dir)
        users = []
        for index in range(options.users):
            user = create_user(env, f"bench-user-{index}@example.com")
            # Any instance can finish the flow: the pending state is in the shared database.
            connect_user(urls[index % len(urls)], user, DEMO_USERS[index % len(DEMO_USERS)])
            users.append(user)
        log(f"{len(users)} user(s) created and connected")
        yield Stack(emulator, urls, users, env, [*processes], exits=stack, work_dir=work_dir)


def run_main(main: Any) -> None:
    """Run `main()` so that SIGTERM, like Ctrl-C, unwinds through the clean-up."""

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        sys.exit(130)
