"""What a running app owns: opened once by its lifespan, closed by it, nothing global.

The database (with its keyring: there is no process-wide one), the read cache, the Graph
connection pool and send pacer, the MSAL provider, the audit log, the integration service
built on them (on the app's clock: tests inject one), and the background jobs. A new
capability adds its parts here, so shutdown closes everything in one place.
"""

from __future__ import annotations

from tracecat.audit.service import AuditLog
from tracecat.auth.integrations.microsoft import MicrosoftOAuthProvider
from tracecat.auth.integrations.service import IntegrationService
from tracecat.cache import ReadCache
from tracecat.clock import SYSTEM_CLOCK, Clock
from tracecat.config import Settings
from tracecat.crypto import Keyring
from tracecat.db import Database
from tracecat.graph.pacing import pacer_from_settings
from tracecat.graph.transport import GraphPool
from tracecat.http_limits import GRACEFUL_SHUTDOWN_SECONDS
from tracecat.jobs import Job, JobRunner
from tracecat.notifications.catch_up import CatchUp
from tracecat.notifications.delivery import DeliveryWorker
from tracecat.notifications.maintenance import SubscriptionMaintenance
from tracecat.notifications.processing import NotificationProcessor
from tracecat.ratelimit import Exceeded, RateLimits
from tracecat.readiness import Readiness
from tracecat.web.demo_inbox import DemoInbox
from tracecat.web.sessions import WebSessions

# Jobs that new work can wake at once in this process (other instances poll).
PROCESSING_JOB = "notification-processing"
DELIVERY_JOB = "webhook-delivery"
LIFECYCLE_JOB = "subscription-lifecycle"
AUDIT_PRUNE_JOB = "audit-prune"
AUDIT_PRUNE_SECONDS = 3600


class AppResources:
    def __init__(self, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self.keyring = Keyring.from_settings(settings)
        self.database = Database.from_settings(settings, self.keyring)
        self.cache = ReadCache(settings.tracecat_cache_seconds)
        self.graph_pool = GraphPool(settings)
        # One budget for every send of this app (in Redis, shared by instances, if REDIS_URL).
        self.pacer = pacer_from_settings(settings)
        self.provider = MicrosoftOAuthProvider(settings)
        # Security events, recorded by the services below (and the rate limiter).
        self.audit = AuditLog(
            self.database, clock, retention_days=settings.tracecat_audit_retention_days
        )
        self.integrations = IntegrationService(
            self.database,
            settings,
            self.provider,
            self.cache,
            graph_pool=self.graph_pool,
            pacer=self.pacer,
            clock=clock,
            audit=self.audit,
        )
        self.web_sessions = WebSessions(self.database, clock)
        self.readiness = Readiness(settings, self.database)
        self.rate_limits = RateLimits(settings, on_exceeded=self._rate_limit_exceeded)
        self.demo_inbox = DemoInbox()  # served only with the emulator
        # Change notifications: what Microsoft sent is turned into webhooks in the outbox,
        # which the worker delivers. Both poll with one cheap read when idle.
        self.notifications = NotificationProcessor(
            self.database, self.integrations, clock, on_enqueued=self.deliveries_due
        )
        self.deliveries = DeliveryWorker.from_settings(self.database, settings, clock=clock)
        self.jobs = JobRunner()
        if settings.tracecat_refresh_interval_seconds > 0:
            interval = settings.tracecat_refresh_interval_seconds
            self.jobs.add(Job("token-sweep", interval, self.integrations.refresh_due))
        self.jobs.add(Job(PROCESSING_JOB, 1, self.notifications.run_once))
        self.jobs.add(Job(DELIVERY_JOB, 1, self.deliveries.run_once))
        # Subscriptions outlive Graph's 3 days only if renewed; lifecycle events are acted on;
        # what notifications missed (downtime, a parked grant) is read back from the channel.
        self.catch_up = CatchUp(self.database, self.integrations, clock)
        self.maintenance = SubscriptionMaintenance(
            self.database, self.integrations, clock, self.catch_up
        )
        if settings.tracecat_refresh_interval_seconds > 0:
            # The loop that keeps tokens fresh keeps subscriptions alive too (issue 10).
            interval = settings.tracecat_refresh_interval_seconds
            self.jobs.add(Job("subscription-renewal", interval, self.maintenance.run_once))
        self.jobs.add(Job(LIFECYCLE_JOB, 2, self.maintenance.process_lifecycle))
        # Events older than TRACECAT_AUDIT_RETENTION_DAYS go; by the app's clock (tests move it).
        self.jobs.add(Job(AUDIT_PRUNE_JOB, AUDIT_PRUNE_SECONDS, self.audit.prune))
        if settings.tracecat_resync_interval_seconds > 0:
            interval = settings.tracecat_resync_interval_seconds
            self.jobs.add(Job("notification-catch-up", interval, self.catch_up.run_once))

    def notifications_kept(self, lifecycle: bool) -> None:
        """Microsoft's notifications were just stored: act on them now, not at the next tick."""
        self.jobs.wake(LIFECYCLE_JOB if lifecycle else PROCESSING_JOB)

    async def _rate_limit_exceeded(self, exceeded: Exceeded) -> None:
        await self.audit.rate_limit_exceeded(
            user_id=exceeded.user_id, client_address=exceeded.address, limit=exceeded.limit
        )

    def deliveries_due(self) -> None:
        self.jobs.wake(DELIVERY_JOB)

    def start(self) -> None:
        self.jobs.start()

    async def aclose(self) -> None:
        """Stop the jobs first (they use everything else), then close in reverse order."""
        await self.jobs.stop(grace=GRACEFUL_SHUTDOWN_SECONDS)
        await self.deliveries.aclose()
        self.provider.close()
        await self.pacer.aclose()
        await self.graph_pool.aclose()
        await self.readiness.aclose()
        await self.database.dispose()
