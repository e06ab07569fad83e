"""Sending webhooks: one attempt (`deliver`) and the worker a background `Job` runs.

Outcomes of an attempt:
- 2xx: `delivered`.
- 410 Gone: the delivery fails and the subscription is disabled (every pending delivery of
  it fails too); `DeliveryResult.subscription_disabled` tells the caller to delete Graph's
  subscription.
- anything else (another status, a timeout, a connection error, a refused target): one more
  attempt, again after the next pause of `TRACECAT_WEBHOOK_RETRY_SECONDS`, `failed` once the
  schedule is spent.

Wiring (in AppResources)::

    worker = DeliveryWorker.from_settings(database, settings, clock=clock)
    jobs.add(Job("webhook-delivery", 2, worker.run_once))
    ...
    await worker.aclose()   # closes the HTTP client it made
"""

from __future__ import annotations

import asyncio
import logging
import math
import random as random_module
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

import httpx

from tracecat.clock import SYSTEM_CLOCK, Clock
from tracecat.config import Settings
from tracecat.db import Database
from tracecat.notifications import outbox
from tracecat.notifications.errors import TargetRefusedError
from tracecat.notifications.outbox import ClaimedDelivery
from tracecat.notifications.signing import signing_secrets, webhook_headers
from tracecat.notifications.targets import (
    IPNetwork,
    Resolver,
    check_target,
    pinned_request,
    resolve_host,
)

logger = logging.getLogger(__name__)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    GONE = "gone"


@dataclass(frozen=True)
class DeliveryResult:
    id: str
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    # True once per subscription: the caller deletes Graph's subscription.
    subscription_disabled: bool = False


@dataclass(frozen=True)
class DeliveryPolicy:
    retry_seconds: Sequence[float]
    allowed_networks: Sequence[IPNetwork] = ()
    # One attempt, DNS included; the lease below is derived from it.
    timeout_seconds: float = 15.0
    batch_size: int = 50
    concurrency: int = 10
    jitter: float = 0.1

    @property
    def lease(self) -> timedelta:
        """Long enough for a whole batch: deliveries wait their turn for a slot, each turn
        at most one timeout, plus a margin for the database writes. A lease that lapsed
        mid-send would let a second worker send the same webhook."""
        turns = math.ceil(self.batch_size / self.concurrency)
        return timedelta(seconds=self.timeout_seconds * turns + 30)

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            retry_seconds=tuple(settings.tracecat_webhook_retry_seconds),
            allowed_networks=tuple(settings.tracecat_webhook_allowed_networks),
        )


def new_client() -> httpx.AsyncClient:
    """The client webhooks go out on: no redirects (a 3xx to an internal address would
    bypass the target checks; it counts as a failure) and no proxy from the environment (the
    connection must go to the checked address)."""
    return httpx.AsyncClient(follow_redirects=False, trust_env=False)


async def _send(
    client: httpx.AsyncClient,
    claim: ClaimedDelivery,
    policy: DeliveryPolicy,
    clock: Clock,
    resolve: Resolver,
) -> int:
    """One POST to the checked address; the response status. The body is not read."""
    target = await check_target(claim.target_url, policy.allowed_networks, resolve)
    now = clock.now()
    secrets = signing_secrets(
        claim.secret, claim.previous_secret, claim.previous_secret_expires_at, now
    )
    headers = webhook_headers(claim.id, claim.payload, secrets, now)
    request = pinned_request(
        client, target, content=claim.payload.encode(), headers=headers, timeout=None
    )
    response = await client.send(request, stream=True)
    await response.aclose()
    return response.status_code


def _describe(exc: BaseException, claim: ClaimedDelivery) -> str:
    """A short, secret-free reason. httpx messages may quote the URL (as given, or pinned to
    its IP), and a target URL often carries a token, so any URL is cut out."""
    if isinstance(exc, TargetRefusedError):
        return str(exc)
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timed out"
    text = _URL.sub("<target>", str(exc).replace(claim.target_url, "<target>"))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def deliver(
    database: Database,
    claim: ClaimedDelivery,
    *,
    client: httpx.AsyncClient,
    policy: DeliveryPolicy,
    clock: Clock = SYSTEM_CLOCK,
    resolve: Resolver = resolve_host,
    random: Callable[[], float] = random_module.random,
) -> DeliveryResult:
    """Send one claimed delivery and commit its outcome (see the module docstring)."""
    status_code: int | None = None
    try:
        async with asyncio.timeout(policy.timeout_seconds):
            status_code = await _send(client, claim, policy, clock, resolve)
    except Exception as exc:
        # Whatever went wrong on the way out (the target, DNS, TLS, a malformed response)
        # is one failed attempt: letting it escape would leave the delivery to be retried
        # forever when its lease lapses, with no attempt counted.
        error = _describe(exc, claim)
    else:
        if 200 <= status_code < 300:
            await outbox.record_delivered(database, claim, status_code, clock.now())
            return DeliveryResult(claim.id, Outcome.DELIVERED, status_code)
        if status_code == 410:
            disabled = await outbox.record_gone(database, claim, clock.now(), status_code)
            return DeliveryResult(claim.id, Outcome.GONE, status_code, outbox.GONE_ERROR, disabled)
        error = f"the target answered HTTP {status_code}"
    now = clock.now()
    retry_at = outbox.next_attempt_at(
        claim.attempts + 1, policy.retry_seconds, now, random, policy.jitter
    )
    await outbox.record_failure(
        database, claim, status_code=status_code, error=error, retry_at=retry_at
    )
    outcome = Outcome.RETRY if retry_at else Outcome.FAILED
    return DeliveryResult(claim.id, outcome, status_code, outbox.short_error(error))


@dataclass
class DeliveryWorker:
    """One pass (`run_once`) claims the due deliveries, sends them concurrently (at most
    `policy.concurrency` at a time) and commits each outcome as it comes. Several workers,
    in one process or many, share the outbox safely (see `outbox.claim_due`)."""

    database: Database
    client: httpx.AsyncClient
    policy: DeliveryPolicy
    clock: Clock = SYSTEM_CLOCK
    resolve: Resolver = resolve_host
    random: Callable[[], float] = random_module.random
    # Called with the claim (its subscription_id) when a target answered 410 (e.g. to delete Graph's
    # subscription); its failure is logged, the outcome is already committed.
    on_disabled: Callable[[ClaimedDelivery], Awaitable[None]] | None = None
    _owns_client: bool = field(default=False, repr=False)

    @classmethod
    def from_settings(
        cls,
        database: Database,
        settings: Settings,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> DeliveryWorker:
        return cls(
            database,
            client or new_client(),
            DeliveryPolicy.from_settings(settings),
            clock=clock,
            _owns_client=client is None,
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def run_once(self) -> list[DeliveryResult]:
        claims = await outbox.claim_due(
            self.database, self.clock.now(), self.policy.batch_size, self.policy.lease
        )
        if not claims:
            return []
        slots = asyncio.Semaphore(self.policy.concurrency)

        async def one(claim: ClaimedDelivery) -> DeliveryResult:
            async with slots:
                result = await deliver(
                    self.database,
                    claim,
                    client=self.client,
                    policy=self.policy,
                    clock=self.clock,
                    resolve=self.resolve,
                    random=self.random,
                )
            if result.subscription_disabled and self.on_disabled is not None:
                try:
                    await self.on_disabled(claim)
                except Exception:
                    logger.exception(
                        "After a 410, handling subscription %s failed", claim.subscription_id
                    )
            return result

        # A failure to record one outcome (a database blip) must not drop the others: that
        # delivery's lease lapses and it is retried.
        results = await asyncio.gather(*(one(c) for c in claims), return_exceptions=True)
        done = [r for r in results if isinstance(r, DeliveryResult)]
        for error in (r for r in results if isinstance(r, BaseException)):
            if not isinstance(error, Exception):
                raise error
            logger.error("Recording a webhook delivery failed: %s", error)
        return done
