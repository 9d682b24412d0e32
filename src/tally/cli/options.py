"""What the `tally` commands share: field groups, the user's errors, settings.

`cli/main.py` imports the command modules to build its parser; they import
what they share from here, never `cli/main`, so the two do not import each
other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any

from tally.config import load_settings

KAFKA = ["kafka_bootstrap"]
DATABASE = ["database_url"]
LOGGING = ["log_format", "log_level"]
WORKER = [
    "topic",
    "group",
    "dlq_topic",
    "create_topics",
    "topic_partitions",
    "flush_interval",
    "max_batch",
    "max_pending_events",
    "max_pending_rollups",
    "dedup_window",
    "max_lateness",
    "max_future_skew",
    "max_event_bytes",
    "session_timeout",
    "revoke_policy",
    "definitions_poll_interval",
    "telemetry_host",
    "telemetry_port",
    "ready_flush_age",
    "retry_max_backoff",
    "shutdown_timeout",
    "flush_timeout",
    "load_timeout",
    "stall_timeout",
    "permanent_attempts",
    "stop_linger",
    "member_cache",
    "member_retention",
    "retention_interval",
    "retention_batch_size",
    "retention_pause",
    "worker_id",
]
API = [
    "api_host",
    "api_port",
    "api_tokens",
    "database_timeout",
    "lock_timeout",
    "backfill_database_url",
]
# What POST /events reads: the topic, and the worker's decode limits.
INGEST = ["kafka_bootstrap", "topic", "max_event_bytes", "max_lateness", "max_future_skew"]


class UserError(Exception):
    """Something the user can fix; printed as one line, exit status 2."""


Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def settings_from(args: argparse.Namespace) -> Any:
    return load_settings(args, fields=args.fields)
