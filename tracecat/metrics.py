"""Prometheus counters, defined once per process (prometheus_client refuses duplicates).

Labels never carry a token, a user or a message: only methods, statuses and reasons.
"""

from __future__ import annotations

from prometheus_client import Counter

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
