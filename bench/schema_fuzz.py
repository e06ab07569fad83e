"""A long schemathesis run: what tests/test_schema.py does in 90 s, for as long as you like.

Starts `serve --emulator` in a temporary data directory (generous rate limits, so the fuzzer
reaches the logic behind them), connects a user and runs `st run` against the live schema
with the checks the test uses: no 5xx, no undocumented status, no answer that breaks the
schema. Prints schemathesis's own summary, then `key=value` figures.

Run from the repository root: `python -m bench.schema_fuzz [--seconds 600] [--seed 7]`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.common import (
    HOST,
    connect_user,
    create_user,
    log,
    print_table,
    run_main,
    spawn,
    wait_until_ready,
)
from tests.test_schema import CHECKS
from tests.utils.server import clean_environment, free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600, help="time budget of the run")
    parser.add_argument("--seed", type=int, default=None, help="random unless given")
    args = parser.parse_args()
    with ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tracecat-fuzz-")))
        env = clean_environment(
            TRACECAT_DATA_DIR=str(work_dir / "data"),
            TRACECAT_RATE_LIMIT="100000000/minute",
            TRACECAT_LOG_LEVEL="WARNING",
        )
        port = free_port()
        url = f"http://{HOST}:{port}"
        serve = ["serve", "--emulator", "--host", HOST, "--port", str(port)]
        process = spawn(stack, "serve", serve, env, work_dir)
        wait_until_ready(process, f"{url}/healthz")
        user = create_user(env, "fuzz@example.com")
        connect_user(url, user, "alice@contoso.example")
        log(f"fuzzing {url} for {args.seconds} s")
        command = [
            str(Path(sys.executable).parent / "st"),
            "run",
            f"{url}/openapi.json",
            "--checks",
            CHECKS,
            "--max-time",
            str(args.seconds),
            "--header",
            f"Authorization: Bearer {user.api_key}",
            *(["--seed", str(args.seed)] if args.seed is not None else []),
        ]
        run = subprocess.run(command, cwd=work_dir, check=False)
        process.check_alive()
    print_table(
        [("seconds", args.seconds), ("schemathesis exit", run.returncode)],
        {"seconds": args.seconds, "failures": int(run.returncode != 0)},
    )
    sys.exit(run.returncode)


if __name__ == "__main__":
    run_main(main)
