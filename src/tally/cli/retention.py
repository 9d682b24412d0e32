"""`tally retention run [--dry-run]`: one retention pass now, for operators.

The workers run one every `TALLY_RETENTION_INTERVAL`; this is the same pass
(`tally.store.retention`), under the same lock, with the same settings.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from tally.cli.options import UserError, settings_from
from tally.core.dedup import BUCKET_SECONDS
from tally.store.migrate import migrate
from tally.store.pool import create_pool
from tally.telemetry import logs
from tally.worker.retention import RetentionTask

# What a pass reads; max_lateness and dedup_window must be the fleet's.
FIELDS = [
    "member_retention",
    "max_lateness",
    "dedup_window",
    "retention_batch_size",
    "retention_pause",
]
# The flags `tally run` needs on top of its own (max_lateness and dedup_window).
WORKER_FIELDS = [
    "member_retention",
    "retention_interval",
    "retention_batch_size",
    "retention_pause",
]


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    logs.setup(settings.log_level, settings.log_format == "json")
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as connection:
            await migrate(connection)
        report = await RetentionTask(pool, settings).run_once(dry_run=args.dry_run)
    finally:
        await pool.close()
    if not report.ran:
        raise UserError(
            "another process holds the retention lock (a worker's pass is under way):"
            " nothing done; try again later"
        )
    verb = "would delete" if args.dry_run else "deleted"
    if report.member_cutoff is None:
        print("UNIQUE members: kept forever (TALLY_MEMBER_RETENTION=0)")
    else:
        units = ", ".join(f"{unit} {count:,}" for unit, count in report.members.items())
        print(
            f"UNIQUE members of periods that ended by {_when(report.member_cutoff)}:"
            f" {verb} {report.members_total:,}{f' ({units})' if units else ''}"
        )
    if report.segment_cutoff is None:
        print("dedup segments: left alone (TALLY_DEDUP_WINDOW=0)")
    else:
        print(
            f"dedup segments of hours before {_when(report.segment_cutoff * BUCKET_SECONDS)}:"
            f" {verb} {report.segments:,}"
        )
    if not args.dry_run:
        print(f"{len(report.batches)} batches in {report.seconds:.1f} s")
    return 0
