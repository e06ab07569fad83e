"""Prometheus counters, defined once per process (prometheus_client refuses duplicates).

Labels never carry a token, a user or a message: only methods, statuses and reasons.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

GRAPH_REQUESTS = Counter(
    "tracecat_graph_requests",
    "Microsoft Graph calls by HTTP method and answer status (or transport failure).",
    ["method", "status"],
)
GRAPH_RETRIES = Counter(
    "tracecat_graph_retries",
    "Microsoft Graph calls sent again, by HTTP method and reason.",
    ["method", "reason"],
)
THROTTLE_WAIT_SECONDS = Counter(
    "tracecat_throttle_wait_seconds",
    "Seconds spent waiting before Graph calls: own pacing and Graph's Retry-After.",
    ["source"],
)
REFRESHES = Counter(
    "tracecat_token_refreshes",
    "Token refreshes by outcome: refreshed, reused (a neighbour had just refreshed), "
    "invalid_grant (the user must reconnect), transient (Microsoft failing for now).",
    ["outcome"],
)
REFRESH_SECONDS = Histogram(
    "tracecat_token_refresh_seconds",
    "Time to obtain a usable token when a refresh was due, lock wait included.",
)
NOTIFICATIONS_RECEIVED = Counter(
    "tracecat_notifications_received",
    "Notifications from Microsoft by kind (change, lifecycle) and outcome: accepted, or dropped "
    "as unknown_subscription, bad_client_state or malformed (never relayed).",
    ["kind", "outcome"],
)
