"""Whether a usage or summary answer covers a metric's partial range: a
backfill of that metric that was cancelled or has not finished, whose range
overlaps the answered window (docs/api.md, "Usage"; docs/backfill.md).

A backfill reads the records from `--from` (by record time; `earliest`: from
the start of the log) up to where the live workers started the metric, which
is before the backfill row was created. An event's own time is within
TALLY_MAX_LATENESS before and TALLY_MAX_FUTURE_SKEW after its record's, so
the periods the backfill may have left short lie in
`[from - max_lateness, created_at + max_future_skew)`.

Read first: callers read the span BEFORE the values it marks, in its own
snapshot. A backfill that finishes after this read leaves at worst a marker
on values that were complete when read, never partial values without one;
read after them, a backfill finishing in between left a partial answer
unmarked (issue-14 review, finding 3).
"""

from __future__ import annotations

from dataclasses import dataclass

from tally.contracts.value import PartialRange
from tally.store.backfill import partial_ranges
from tally.store.pool import Connection


@dataclass(frozen=True, slots=True)
class PartialSpan:
    """The marker, and the instants (POSIX seconds) it applies to; start None: from the start."""

    marker: PartialRange
    start: float | None
    end: float

    def overlaps(self, start: int, end: int) -> bool:
        """Whether `[start, end)` holds any instant of the span."""
        return end > (self.start if self.start is not None else float("-inf")) and start < self.end


async def partial_span(
    connection: Connection, uid: str, max_lateness: float, max_future_skew: float
) -> PartialSpan | None:
    """The span of `uid`'s unfinished or cancelled backfill, if it has one."""
    # One snapshot: the marker and its row are the same backfill's.
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        marker = (await partial_ranges(connection, [uid])).get(uid)
        if marker is None:
            return None
        row = await connection.fetchrow(
            "SELECT from_time, created_at FROM tally.backfills WHERE metric_uid = $1", uid
        )
    if row is None:  # not within one snapshot; for the type
        return None
    since = row["from_time"]
    return PartialSpan(
        marker,
        None if since is None else since.timestamp() - max_lateness,
        row["created_at"].timestamp() + max_future_skew,
    )
