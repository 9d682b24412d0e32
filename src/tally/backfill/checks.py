"""What a backfill refuses, checked before it reads (docs/backfill.md).

`check_metric` is what `tally backfill` and `POST /backfills` refuse at once
(no such metric, deleted, EXTERNAL, refused by the workers, older than
migration 0008). The retention checks need Kafka and run in the backfill
process: `retention_refusals` for the log start, `members_refusal` for a
UNIQUE metric whose members retention would delete.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Literal

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from tally.backfill.plan import LogStart, iso, retention_refusal
from tally.contracts.metric import AggregationType, UsageMetric
from tally.core.metrics import is_external
from tally.store import backfill as store
from tally.store.definitions import metric_by_uid
from tally.store.pool import Connection
from tally.worker.definitions import runnable

Kind = Literal["not_found", "conflict"]


class BackfillRefused(Exception):
    """The backfill cannot start (or resume) as asked; the message says why and
    what can. `kind`: not_found (no such metric) or conflict (anything else)."""

    def __init__(self, message: str, kind: Kind = "conflict") -> None:
        super().__init__(message)
        self.kind: Kind = kind


async def check_metric(connection: Connection, uid: str) -> UsageMetric:
    """The metric to backfill; BackfillRefused if a backfill of it is refused
    whatever the log holds."""
    metric = await metric_by_uid(connection, uid)
    if metric is None:
        raise BackfillRefused(
            f"no metric {uid!r}: create it first (tally metrics apply)", "not_found"
        )
    if metric.deleted_at is not None:
        raise BackfillRefused(f"metric {uid!r} is deleted; a deleted metric is not backfilled")
    if is_external(metric):
        raise BackfillRefused(
            f"metric {uid!r} is EXTERNAL: its values come from the API, not from"
            " events, so there is nothing to backfill"
        )
    runs, refused = runnable([metric])
    if not runs:
        reason = refused[0] if refused else None
        raise BackfillRefused(
            f"the live workers refuse metric {uid!r}"
            + ("" if reason is None else f" ({reason.reason}: {reason.detail})")
            + "; fix its definition first"
        )
    if await store.predates_starts(connection, uid):
        raise BackfillRefused(
            f"metric {uid!r} existed before migration 0008: workers counted it live"
            " before they recorded where they started it, so a backfill would count those"
            " records twice. Create it under a new uid and backfill that"
        )
    return metric


async def log_starts(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, LogStart]:
    """Each partition's first retained offset and the time of its first record."""
    begins = await consumer.beginning_offsets(tps)
    firsts = await consumer.offsets_for_times({tp: 0 for tp in tps})
    return {
        tp: LogStart(
            begins[tp],
            None if firsts.get(tp) is None else firsts[tp].timestamp / 1000,
        )
        for tp in tps
    }


def retention_refusals(
    starts: Mapping[TopicPartition, LogStart],
    needed: Mapping[TopicPartition, float | None],
    window: float,
    what: str,
    before: str = "--from",
) -> str | None:
    """Why the retained log does not reach, on each partition of `needed`, the
    record time it must still read from (None: the whole partition), or None."""
    reasons = [
        reason
        for tp, when in needed.items()
        if (
            reason := retention_refusal(
                f"{tp.topic}[{tp.partition}]", starts[tp], when, window, before
            )
        )
    ]
    if not reasons:
        return None
    return f"the retained log no longer reaches {what}:\n  " + "\n  ".join(reasons)


def members_refusal(
    metric: UsageMetric, oldest: float | None, member_retention: float, max_lateness: float
) -> str | None:
    """A UNIQUE backfill must not write members of periods the worker's
    retention deletes: a later flush would insert and count them again
    (review item 10). `oldest`: the time of the oldest record it has still to
    count (None: none known); its events may be `max_lateness` older."""
    if (
        metric.aggregation_type is not AggregationType.UNIQUE
        or member_retention <= 0
        or oldest is None
    ):
        return None
    limit = time.time() - member_retention + max_lateness
    if oldest >= limit:
        return None
    return (
        f"metric {metric.uid!r} is UNIQUE and this backfill would count records from"
        f" {iso(oldest)}: members of periods that old are deleted by retention"
        f" (TALLY_MEMBER_RETENTION), so they could be counted twice. Use --from"
        f" {iso(math.ceil(limit))} or later"
    )
