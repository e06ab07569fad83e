"""Part 4 of bench.notify_latency: `serve` SIGKILLed while a target holds a webhook, then
restarted on the same database: lost, duplicates, repeats, and how long recovery took."""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass

from bench.common import (
    log,
)
from bench.notify_support import (
    _PENDING,
    _PENDING_LEASED,
    LEASE_SECONDS,
    Figures,
    Rows,
    Setup,
    Subscribed,
    count,
    emulator_outcomes,
    machine_load,
    marker,
    post_messages,
    start_serve,
    wait_for_all,
    wait_until,
)
from bench.notify_target import (
    Arrival,
    Run,
    Tally,
    no_collector_pauses,
    tally,
)

# --- part 4: SIGKILL -------------------------------------------------------------------------


@dataclass
class Kill:
    run: Run
    tally: Tally
    killed_at: float
    ready_at: float
    leased_after_restart: int
    all_in: float | None  # perf_counter when every message had arrived at least once
    settled: float | None  # perf_counter when nothing was pending in the outbox any more


def kill_run(setup: Setup, subscriptions: list[Subscribed], args: argparse.Namespace) -> Kill:
    """`--kill-at webhook` (default): SIGKILL serve from inside the target, when the webhook
    of message #N/2 arrives and before it is answered, so the killed process certainly held
    a delivery it had claimed, sent and not yet recorded. `--kill-at post`: just before the
    control POST of #N/2, wherever the pipeline then is. Either way it is restarted at once
    on the same port, database and data dir while the posts go on."""
    kill_at = args.kill_messages // 2
    wanted = marker("kill", kill_at).encode()
    moments: dict[str, float] = {}
    restart_errors: list[BaseException] = []
    fired = threading.Lock()

    def restart() -> None:
        try:
            name = f"serve-restarted-{setup.restarts}"
            setup.server = start_serve(setup.exits, setup.env, setup.port, setup.work_dir, name)
            moments["ready"] = time.perf_counter()
        except BaseException as exc:  # reported by the main thread
            restart_errors.append(exc)

    restarter = threading.Thread(target=restart, name="restart", daemon=True)

    def kill(where: str) -> None:
        if not fired.acquire(blocking=False):
            return
        setup.server.popen.kill()  # SIGKILL: no shutdown code runs
        setup.server.popen.wait(10)
        moments["killed"] = time.perf_counter()
        setup.restarts += 1
        log(f"SIGKILLed serve {where}; restarting it on port {setup.port}")
        restarter.start()

    def on_arrival(arrival: Arrival) -> None:
        if wanted in arrival.body:
            kill(f"while the target held the webhook of message #{kill_at}")
            arrival.sender_killed = True

    def before_post(index: int) -> None:
        if index == kill_at:
            kill(f"before posting message #{kill_at}")

    if args.kill_at == "webhook":
        setup.target.on_arrival = on_arrival
    try:
        hook = before_post if args.kill_at == "post" else None
        run = post_messages(setup, subscriptions, args.kill_messages, args.rate, "kill", hook)
        started = wait_until(lambda: "killed" in moments, time.perf_counter() + 30)
    finally:
        setup.target.on_arrival = None
    if started is None:
        raise RuntimeError(f"message #{kill_at}'s webhook never arrived: nothing was killed")
    restarter.join(60)
    if restart_errors or "ready" not in moments:
        raise RuntimeError(f"the restart failed: {restart_errors}")
    killed, ready = moments["killed"], moments["ready"]
    log(f"restarted serve ready {ready - killed:.1f}s after the kill")
    # What the killed process had claimed keeps its lease: nobody sends it before it lapses.
    # Counted once the restart's own work (kept notifications, catch-up) had a moment.
    time.sleep(max(0.0, ready + 3 - time.perf_counter()))
    leased = count(setup, _PENDING_LEASED)
    if leased:
        log(
            f"{leased} delivery(ies) held by the killed process's lease: waiting for it to "
            f"lapse ({LEASE_SECONDS:.0f}s after the claim)"
        )
    ids = {p.message_id for p in run.posted}
    deadline = max(killed + LEASE_SECONDS + 20, run.last_post + args.timeout)
    all_in = wait_for_all(setup, ids, deadline)
    settled = wait_until(lambda: count(setup, _PENDING) == 0, deadline, pause=0.5)
    return Kill(run, tally(run, setup.target.snapshot()), killed, ready, leased, all_in, settled)


def killed(
    setup: Setup, subscriptions: list[Subscribed], args: argparse.Namespace
) -> tuple[Rows, Figures]:
    """Part 4."""
    log(
        f"part 4: {args.kill_messages} messages at {args.rate:g}/s, SIGKILL halfway; "
        f"{machine_load()}"
    )
    outcomes_before = emulator_outcomes(setup)
    with no_collector_pauses():
        kill = kill_run(setup, subscriptions, args)
    failed = sum(
        n
        for outcome, n in (emulator_outcomes(setup) - outcomes_before).items()
        if not outcome.startswith("2")
    )

    def since_kill(moment: float | None) -> str:
        if moment is None:
            return f"NOT within {LEASE_SECONDS + 20:.0f}s"
        return f"{moment - kill.killed_at:.1f}s after the kill"

    where = "target held the webhook of" if args.kill_at == "webhook" else "posting"
    rows: Rows = [
        (
            "kill layout",
            f"{args.kill_messages} msgs at {args.rate:g}/s, SIGKILL while {where} "
            f"#{args.kill_messages // 2}, restart ready {kill.ready_at - kill.killed_at:.1f}s "
            "later",
        ),
        ("kill emulator notifications failed", f"{failed} (Graph-style retries followed)"),
        (
            "kill held by the dead process's lease",
            f"{kill.leased_after_restart} (lease {LEASE_SECONDS:.0f}s"
            + ("; waited for it)" if kill.leased_after_restart else ")"),
        ),
        ("kill every message received", since_kill(kill.all_in)),
        ("kill outbox settled (none pending)", since_kill(kill.settled)),
        ("kill invalid signatures", f"{kill.tally.invalid_signatures} (goal 0)"),
        ("kill lost", f"{len(kill.tally.lost)} (goal 0)"),
        ("kill duplicates", f"{kill.tally.duplicates} (goal 0; after a 2xx its sender got)"),
        (
            "kill repeats after the killed 2xx",
            f"{kill.tally.repeats_after_kill} (same webhook-id; our 2xx reached nobody)",
        ),
        ("kill webhook-ids per message max", f"{kill.tally.ids_per_message_max} (goal 1)"),
    ]
    figures: Figures = {
        "kill_lost": len(kill.tally.lost),
        "kill_duplicates": kill.tally.duplicates,
        "kill_repeats": kill.tally.repeats_after_kill,
        "kill_invalid_signatures": kill.tally.invalid_signatures,
        "kill_leased": kill.leased_after_restart,
        "kill_all_received_s": (
            f"{kill.all_in - kill.killed_at:.1f}" if kill.all_in is not None else "nan"
        ),
        "kill_settled_s": (
            f"{kill.settled - kill.killed_at:.1f}" if kill.settled is not None else "nan"
        ),
    }
    return rows, figures
