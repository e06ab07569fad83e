"""Running the emulator: an HTTPS and a plain-HTTP listener over one app, in one thread.

HTTPS serves everything MSAL and Graph clients call (MSAL refuses http
authorities). The HTTP listener exists for the person's browser, which does not
trust the emulator's private CA: discovery publishes the authorize endpoint there.

With `persist=True` (the product: `serve --emulator`, `tracecat-integrations
emulator`) users, grants and messages are kept in `<data_dir>/emulator/state.json`
so a restart does not disconnect anyone; tests leave it off and start clean.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from tracecat.emulator.app import create_emulator_app
from tracecat.emulator.certs import ensure_certificates
from tracecat.emulator.constants import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, TENANT_ID
from tracecat.emulator.keys import SigningKey
from tracecat.emulator.persistence import STATE_FILE, StatePersister
from tracecat.emulator.state import EmulatorState

STARTUP_TIMEOUT_SECONDS = 20.0
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this; without it Nagle's algorithm and delayed ACKs
    # add ~40 ms to every keep-alive response, which uvicorn writes in several pieces.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    # A wildcard bind is still reached through loopback from this machine.
    if host in WILDCARD_HOSTS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _uvicorn_config(
    app: FastAPI, ssl_certfile: str | None = None, ssl_keyfile: str | None = None
) -> uvicorn.Config:
    # No logging set-up of its own: uvicorn's would reconfigure the host process' loggers
    # (the app's access log shares the `uvicorn.access` logger).
    return uvicorn.Config(
        app,
        log_config=None,
        log_level=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


class EmulatorServer:
    """Use `start()`/`stop()` or `with EmulatorServer(path) as server:`; port 0 = any free port."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        https_port: int = 0,
        http_port: int = 0,
        persist: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.https_port = https_port
        self.http_port = http_port
        self.client_id = DEMO_CLIENT_ID
        self.client_secret = DEMO_CLIENT_SECRET
        self.tenant_id = TENANT_ID
        self.authority_host = ""
        self.graph_url = ""
        self.http_url = ""
        self.ca_bundle = self.data_dir / "emulator" / "ca.pem"
        self.state = EmulatorState(SigningKey.load_or_create(self.data_dir / "emulator"))
        self._persister: StatePersister | None = None
        if persist:
            self._persister = StatePersister(self.state, self.data_dir / "emulator" / STATE_FILE)
            self._persister.load()
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> EmulatorServer:
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        certs = ensure_certificates(self.data_dir / "emulator")
        self.ca_bundle = certs.ca_cert
        https_sock = _bind(self.host, self.https_port)
        http_sock = _bind(self.host, self.http_port)
        self.https_port = https_sock.getsockname()[1]
        self.http_port = http_sock.getsockname()[1]
        url_host = _url_host(self.host)
        self.authority_host = f"https://{url_host}:{self.https_port}"
        self.graph_url = f"{self.authority_host}/v1.0"
        self.http_url = f"http://{url_host}:{self.http_port}"
        self.state.https_base = self.authority_host
        self.state.http_base = self.http_url

        app = create_emulator_app(self.state)
        https = _uvicorn_config(app, ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.key))
        http = _uvicorn_config(app)
        self._servers = [uvicorn.Server(https), uvicorn.Server(http)]
        self._error = None
        self._thread = threading.Thread(
            target=self._run,
            args=([https_sock, http_sock],),
            name="microsoft-emulator",
            daemon=True,
        )
        self._thread.start()
        if self._persister is not None:
            self._persister.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not all(server.started for server in self._servers):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Microsoft emulator failed to start: {self._error!r}")
            time.sleep(0.01)
        return self

    def _run(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(
                asyncio.gather(
                    *(
                        s.serve(sockets=[sock])
                        for s, sock in zip(self._servers, sockets, strict=True)
                    )
                )
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the thread that called start()
            self._error = exc
        finally:
            for sock in sockets:
                sock.close()
            loop.close()

    def stop(self) -> None:
        self.state.notifier.cancel()  # pending retries die with the server
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
        # After the listeners are down, so the last changes are in the final save.
        if self._persister is not None:
            self._persister.stop()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def run_emulator(
    data_dir: Path, host: str = "127.0.0.1", https_port: int = 0, http_port: int = 0
) -> None:
    """Run in the foreground until Ctrl-C, printing how to point a client at it.

    The state persists: whoever connected through it stays connected across restarts."""
    server = EmulatorServer(
        data_dir, host=host, https_port=https_port, http_port=http_port, persist=True
    )
    server.start()
    print(
        "Microsoft emulator (identity platform v2.0 + Graph v1.0 for Teams) is running.\n"
        f"  HTTPS (token endpoint, Graph): {server.authority_host}\n"
        f"  HTTP  (browser sign-in page):  {server.http_url}\n"
        f"  Control API:                   {server.authority_host}/_emulator\n"
        "\nConfigure a client with:\n"
        f"  MICROSOFT_AUTHORITY_HOST={server.authority_host}\n"
        f"  MICROSOFT_GRAPH_URL={server.graph_url}\n"
        f"  MICROSOFT_CA_BUNDLE={server.ca_bundle}\n"
        f"  MICROSOFT_CLIENT_ID={server.client_id}\n"
        f"  MICROSOFT_CLIENT_SECRET={server.client_secret}\n"
        f"  (tenant {server.tenant_id}; authority {server.authority_host}/common)\n"
        "\nPress Ctrl-C to stop.",
        flush=True,
    )
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
