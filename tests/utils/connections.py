"""TCP connections to a server, as the kernel sees them (Linux /proc/net/tcp), so that a
test checks how a client opens, reuses and closes connections without looking inside it."""

from __future__ import annotations

ESTABLISHED = "01"  # the connection state column of /proc/net/tcp
_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def _client_sockets(port: int) -> dict[int, str]:
    """Local port -> TCP state of every socket on this machine whose remote port is `port`."""
    sockets: dict[int, str] = {}
    for table in _TABLES:
        try:
            with open(table) as rows:
                next(rows)  # the header
                for row in rows:
                    fields = row.split()
                    local, remote, state = fields[1], fields[2], fields[3]
                    if int(remote.rsplit(":", 1)[1], 16) == port:
                        sockets[int(local.rsplit(":", 1)[1], 16)] = state
        except FileNotFoundError:  # no IPv6 on this machine
            continue
    return sockets


class ConnectionWatch:
    """Client connections to `port` made after the watch was created.

    A shared server (the session's emulator) may still hold idle connections of earlier
    tests, and those may close at any moment: only connections from local ports not seen at
    creation count. A closed connection stays visible for a while (TIME_WAIT), so `opened`
    also counts connections that are already closed again.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._before = set(_client_sockets(port))

    def _new(self) -> dict[int, str]:
        return {p: s for p, s in _client_sockets(self.port).items() if p not in self._before}

    def opened(self) -> int:
        """Connections opened since the watch began, open or closed by now."""
        return len(self._new())

    def open(self) -> int:
        """Of those, the ones still established."""
        return sum(state == ESTABLISHED for state in self._new().values())
