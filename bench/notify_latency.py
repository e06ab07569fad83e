"""Change notifications end to end: a Teams message to a signed webhook at a local target.

(1) N messages from someone else are posted through the emulator's control API, at a steady
    rate, into K subscribed channels; each one's latency runs from just before that POST to
    the moment the target has the signed webhook (matched by `data.message.id`), and each
    signature is checked with `standardwebhooks` and the subscription's secret.
(2) Lost (posted, never received) and duplicated (one webhook-id received twice) webhooks.
(3) Graph-shaped change notifications fired straight at our
    `POST /webhooks/microsoft/notifications`, paced (default 200/s for 5 s), on a subscription
    of their own: the time of each 202.
(4) `serve` SIGKILLed halfway through another run of messages, restarted on the same database
    and data dir: lost, duplicates, and how long until the last webhook arrived.

Run from the repository root: `python -m bench.notify_latency --help`.
"""

from __future__ import annotations

import argparse

import httpx

from bench.common import (
    log,
    print_table,
    run_main,
)
from bench.notify_inbound import inbound
from bench.notify_kill import killed
from bench.notify_support import (
    E2E_GOAL_MS,
    Figures,
    Rows,
    Setup,
    Subscribed,
    emulator_answer_times,
    machine_load,
    notify_stack,
    p50_p99_max,
    pick_channels,
    post_messages,
    subscribe,
    verdict,
    wait_drained,
    wait_for_all,
)
from bench.notify_target import (
    ms,
    no_collector_pauses,
    percentile,
    tally,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--messages", type=int, default=200, help="part 1 (default 200)")
    parser.add_argument("--channels", type=int, default=3, help="subscribed, 1-4 (default 3)")
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s (default 20)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="after the last post, for part 1 (30 s)"
    )
    parser.add_argument("--inbound-rate", type=float, default=200.0, help="notifications/s")
    parser.add_argument("--inbound-seconds", type=float, default=5.0)
    parser.add_argument(
        "--kill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="part 4: SIGKILL serve halfway through --kill-messages (default on)",
    )
    parser.add_argument("--kill-messages", type=int, default=100)
    parser.add_argument(
        "--kill-at",
        choices=("webhook", "post"),
        default="webhook",
        help="kill while the target holds message #N/2's webhook (default), or just before "
        "posting it",
    )
    args = parser.parse_args()
    if args.messages < 1 or args.kill_messages < 2 or not 1 <= args.channels <= 4:
        parser.error("--messages >= 1, --kill-messages >= 2, --channels in 1..4")
    if min(args.rate, args.inbound_rate, args.inbound_seconds, args.timeout) <= 0:
        parser.error("rates, --inbound-seconds and --timeout must be positive")
    return args


def end_to_end(
    setup: Setup, subscriptions: list[Subscribed], args: argparse.Namespace
) -> tuple[Rows, Figures]:
    """Parts 1 and 2."""
    teams = len({s.team_id for s in subscriptions})
    log(f"part 1: {args.messages} messages at {args.rate:g}/s; {machine_load()}")
    with no_collector_pauses():
        first = post_messages(setup, subscriptions, args.messages, args.rate, "e2e")
        wait_for_all(setup, {p.message_id for p in first.posted}, first.last_post + args.timeout)
    e2e = tally(first, setup.target.snapshot())
    answers = emulator_answer_times(setup)
    p99 = percentile(e2e.latencies, 99)
    rows: Rows = [
        (
            "e2e layout",
            f"{args.messages} msgs at {args.rate:g}/s over {len(subscriptions)} channels in "
            f"{teams} teams, {args.database}",
        ),
        (
            "e2e posting behind schedule max",
            f"{ms(first.behind_max)} ms (control POSTs failed: {first.failed_posts})",
        ),
        (
            "e2e latency p50/p99/max ms",
            f"{p50_p99_max(e2e.latencies)} "
            f"(goal p99 < {E2E_GOAL_MS:.0f}: {verdict(p99 * 1000 < E2E_GOAL_MS)})",
        ),
        (
            "e2e our 202 to the emulator p50/p99 ms",
            f"{ms(percentile(answers, 50))}/{ms(percentile(answers, 99))} "
            f"(timed by the emulator, its last {len(answers)})",
        ),
        ("e2e invalid signatures", f"{e2e.invalid_signatures} (goal 0)"),
        ("e2e lost", f"{len(e2e.lost)} (goal 0; not received {args.timeout:g}s after the last)"),
        ("e2e duplicates", f"{e2e.duplicates} (goal 0; a webhook-id received again)"),
    ]
    figures: Figures = {
        "e2e_p50_ms": ms(percentile(e2e.latencies, 50)),
        "e2e_p99_ms": ms(p99),
        "e2e_max_ms": ms(max(e2e.latencies, default=float("nan"))),
        "invalid_signatures": e2e.invalid_signatures,
        "lost": len(e2e.lost),
        "duplicates": e2e.duplicates,
    }
    if wait_drained(setup) is None:
        log("part 1's notifications were still not all processed")
    return rows, figures


def run(args: argparse.Namespace) -> None:
    with notify_stack(args) as setup, httpx.Client(timeout=30.0) as client:
        channels = pick_channels(client, setup, args.channels + 1)
        subscriptions = [subscribe(client, setup, t, c) for t, c in channels[: args.channels]]
        inbound_subscription = subscribe(client, setup, *channels[args.channels])
        teams = len({s.team_id for s in subscriptions})
        log(f"{len(subscriptions)} channel(s) in {teams} team(s) subscribed, +1 for part 3")
        rows, figures = end_to_end(setup, subscriptions, args)
        more_rows, more_figures = inbound(setup, inbound_subscription, args)
        rows, figures = rows + more_rows, figures | more_figures
        if args.kill:
            more_rows, more_figures = killed(setup, subscriptions, args)
            rows, figures = rows + more_rows, figures | more_figures
        log(f"done; {machine_load()}")
        print_table(rows, figures)


def main() -> None:
    run(parse_args())


if __name__ == "__main__":
    run_main(main)
