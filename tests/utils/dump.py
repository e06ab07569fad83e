"""Every byte a dump of the database would hold, for tests that no secret is stored in clear."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import asyncpg

from tracecat.db import Base


def raw_dump(database_url: str) -> bytes:
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        # The database file and its write-ahead log: recent writes may be in either. Read by
        # another process: closing any descriptor of the file here would drop the POSIX locks
        # this process' SQLite connections hold on it.
        files = sorted(str(p) for p in path.parent.glob(path.name + "*"))
        return subprocess.run(["cat", *files], capture_output=True, check=True).stdout

    async def dump() -> bytes:
        connection = await asyncpg.connect(database_url.replace("postgresql://", "postgres://"))
        try:
            chunks = []
            for table in Base.metadata.sorted_tables:
                for row in await connection.fetch(f'SELECT * FROM "{table.name}"'):
                    chunks.append(repr(tuple(row)).encode())
                    chunks.extend(
                        bytes(v) for v in row.values() if isinstance(v, bytes | memoryview)
                    )
            return b"\n".join(chunks)
        finally:
            await connection.close()

    return asyncio.run(dump())
