"""Does retention slow flushes? Flush latency with and without a pass deleting
beside them, measured side by side in one run, and the table sizes.

`TALLY_DATABASE_URL=... python -m tally.bench retention [MEMBERS] [WINDOW_SECONDS]`

- A database of its own, migrated, is filled with MEMBERS UNIQUE members
  (default 4,000,000): one metric's day periods over the last 365 days, 400
  customers, the same number of members in each rollup, written in time
  order as flushes write them, with their rows in `tally.metric_values`.
  With the default 125-day retention, about two thirds of them are old. It
  also holds old dedup segments of 100 idle partitions, and live ones.
- Flushes are the real flush transaction (`tally.store.flush.write_flush`):
  one partition's compare-and-set, then 1,000 customers' day and month
  rollups of a UNIQUE metric for today, 8 members each of which 1 is new
  (16,000 member rows offered, 2,000 inserted, 2,000 values upserted), back
  to back on one connection: a worker under full load.
- Windows of WINDOW_SECONDS (default 5) alternate. First with and without
  the retention index (dropped and built again between windows, 7 windows),
  to show what the index costs a flush. Then 16 windows with the index,
  retention off and on: a real pass (`tally.store.retention.run_pass`,
  batches of 10,000) on a second connection, held at its next pause while
  retention is off. The "on" windows take turns between the default 0.5 s
  pause and a 0.1 s one. Each variant's p50 and p99 come from all its
  windows.
- Sizes (`pg_total_relation_size`) before the pass, after it, after VACUUM,
  and after inserting as many new members again as the pass deleted, to
  show that the freed space is reused. Members are counted apart for the
  filled history and for what the flushes added meanwhile.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import orjson

from tally.config import Settings
from tally.contracts.metric import parse_metric
from tally.core.engine import Deltas, aggregate, new_core
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tally.store.flush import PartitionFlush, load_partition, write_flush
from tally.store.migrate import migrate
from tally.store.pool import connect
from tally.store.retention import (
    _BEFORE_ALL,
    _DELETE_MEMBERS,
    _NEXT_PERIOD,
    PassReport,
    Policy,
    run_pass,
)

DAY = 86400
HISTORY_DAYS = 365
CUSTOMERS = 400
FLUSH_CUSTOMERS = 1000
FLUSH_MEMBERS = 8  # per rollup and flush
FLUSH_NEW = 1  # of which new
_LIVE = {
    "uid": "live",
    "name": "live",
    "eventType": "live",
    "aggregationType": "UNIQUE",
    "aggregationProperty": "user",
    "timeUnits": ["day", "month"],
}
_CORE = new_core(MetricIndex([parse_metric(_LIVE)]))
_WIDE = DecodeLimits(max_lateness_seconds=1e12, max_future_seconds=1e12)
IDLE_PARTITIONS = 100
IDLE_HOURS = 48
ON_WINDOWS = 6  # of each "on" variant, each followed by an "off" window
POLICY = Policy.from_settings(Settings())  # the defaults: 125 d, 1 d, 10,000 rows, 0.5 s
PAUSES = (POLICY.pause, 0.1)  # of the two "on" variants: the default, and a faster one
INDEX_DDL = "CREATE INDEX unique_members_period ON tally.unique_members (time_unit, period_start, metric_uid)"


@dataclass
class Sizes:
    label: str
    history: int  # members of the filled history
    flushed: int  # members the bench's flushes (and the refill) added
    members_bytes: int
    members_heap: int
    period_index: int
    segments: int
    segments_bytes: int


@dataclass
class Flusher:
    connection: asyncpg.Connection
    start: int  # today's period start
    month: tuple[int, int]
    offset: int
    n: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def deltas(self) -> Deltas:
        """Every customer's day and month rollup of the UNIQUE metric `live`,
        FLUSH_MEMBERS members each, FLUSH_NEW of them new, through the core."""
        first = self.n * FLUSH_NEW
        stamp = datetime.fromtimestamp(self.start + 3600, UTC).isoformat()
        values = [
            orjson.dumps(
                {
                    "id": f"{self.n}-{c}-{k}",
                    "eventType": "live",
                    "customerId": f"live-{c:05d}",
                    "timestamp": stamp,
                    "properties": {"user": f"user-{c}-{k}"},
                }
            )
            for c in range(FLUSH_CUSTOMERS)
            for k in range(first, first + FLUSH_MEMBERS)
        ]
        return aggregate(_CORE, values, self.start + 7200, _WIDE)

    async def flush(self, label: str) -> None:
        deltas = self.deltas()
        partition = PartitionFlush("bench", 0, self.offset, self.offset + 1, None, records=1)
        started = time.perf_counter()
        await write_flush(self.connection, [partition], deltas, "bench")
        self.latencies.setdefault(label, []).append(time.perf_counter() - started)
        self.offset += 1
        self.n += 1


class Gate:
    """Lets the retention pass run only while open; it parks at its pauses,
    which last `pause` seconds."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.parked = asyncio.Event()
        self.pause = POLICY.pause

    async def between(self) -> bool:
        self.parked.set()
        await self.open.wait()
        self.parked.clear()
        await asyncio.sleep(self.pause)
        return True

    async def close(self, retention: asyncio.Task[PassReport] | None) -> None:
        self.open.clear()
        if retention is not None and not retention.done():
            parked = asyncio.create_task(self.parked.wait())
            await asyncio.wait([parked, retention], return_when=asyncio.FIRST_COMPLETED)
            parked.cancel()


async def _sizes(connection: asyncpg.Connection, label: str) -> Sizes:
    row = await connection.fetchrow(
        "SELECT (SELECT count(*) FROM tally.unique_members WHERE metric_uid = 'old_users') AS history,"
        " (SELECT count(*) FROM tally.unique_members WHERE metric_uid <> 'old_users') AS flushed,"
        " pg_total_relation_size('tally.unique_members') AS members_bytes,"
        " pg_relation_size('tally.unique_members') AS members_heap,"
        " coalesce(pg_relation_size(to_regclass('tally.unique_members_period')), 0) AS period_index,"
        " (SELECT count(*) FROM tally.dedup_segments) AS segments,"
        " pg_total_relation_size('tally.dedup_segments') AS segments_bytes"
    )
    assert row is not None
    return Sizes(label, *(int(v) for v in row.values()))


async def _fill(connection: asyncpg.Connection, members: int, today: datetime, now: float) -> int:
    per_rollup = max(1, round(members / (HISTORY_DAYS * CUSTOMERS)))
    for back in range(HISTORY_DAYS, 0, -1):  # oldest first: the heap in time order
        day = today - timedelta(days=back)
        await connection.execute(
            "INSERT INTO tally.unique_members"
            " SELECT 'old_users', 'customer-' || lpad(c::text, 4, '0'), 'day', $1, '', 'user-' || u"
            " FROM generate_series(1, $2) AS c, generate_series(1, $3) AS u",
            day,
            CUSTOMERS,
            per_rollup,
        )
        await connection.execute(
            "INSERT INTO tally.metric_values"
            " SELECT 'old_users', 'customer-' || lpad(c::text, 4, '0'), '', 'day', $1::timestamptz,"
            " $1::timestamptz + interval '1 day', $3::int8, $3::int8, $1::timestamptz + interval '1 day'"
            " FROM generate_series(1, $2) AS c",
            day,
            CUSTOMERS,
            per_rollup,
        )
    ids = bytes(16 * 100)
    for partition in range(1, IDLE_PARTITIONS + 1):  # idle for days
        await connection.executemany(
            "INSERT INTO tally.dedup_segments (topic, partition, bucket, id_count, ids)"
            " VALUES ('bench', $1, $2, 100, $3)",
            [(partition, int(now // 3600) - 72 - h, ids) for h in range(IDLE_HOURS)],
        )
    await connection.executemany(  # the live partition's last day: kept
        "INSERT INTO tally.dedup_segments (topic, partition, bucket, id_count, ids)"
        " VALUES ('bench', 0, $1, 100, $2)",
        [(int(now // 3600) - h, ids) for h in range(24)],
    )
    return per_rollup


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(seconds) * 1000, [50, 99])
    return float(p50), float(p99)


async def run_retention_bench(dsn: str, members: int, window: float) -> None:
    database = f"tally_bench_retention_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    own = urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))
    try:
        await _bench(own, members, window)
    finally:
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def _bench(dsn: str, members: int, window: float) -> None:
    main = await connect(dsn)
    flushing = await connect(dsn)
    deleting = await connect(dsn)
    await migrate(main)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    now = time.time()
    print(
        f"retention bench: {members:,} UNIQUE members over {HISTORY_DAYS} days x {CUSTOMERS}"
        f" customers; flushes of {FLUSH_CUSTOMERS * 2:,} rollups and"
        f" {FLUSH_CUSTOMERS * 2 * FLUSH_MEMBERS:,} members ({FLUSH_CUSTOMERS * 2 * FLUSH_NEW:,} new);"
        f" windows of {window:g} s",
        flush=True,
    )
    started = time.perf_counter()
    per_rollup = await _fill(main, members, today, now)
    await main.execute("VACUUM ANALYZE tally.unique_members")
    await main.execute("VACUUM ANALYZE tally.metric_values")
    await main.execute("VACUUM ANALYZE tally.dedup_segments")
    print(f"filled in {time.perf_counter() - started:.0f} s ({per_rollup} members per rollup)")
    month_start = today.replace(day=1)
    month_end = (month_start + timedelta(days=32)).replace(day=1)
    offset, _ = await load_partition(flushing, "bench", 0, None)
    flusher = Flusher(
        flushing,
        int(today.timestamp()),
        (int(month_start.timestamp()), int(month_end.timestamp())),
        offset,
    )
    for _ in range(5):
        await flusher.flush("warm-up")

    sizes = [await _sizes(main, "before the pass")]
    due = POLICY.member_cutoff(now)
    assert due is not None
    old = int(
        await main.fetchval(
            "SELECT count(*) FROM tally.unique_members WHERE period_start + interval '1 day'"
            " <= to_timestamp($1)",
            due,
        )
    )
    print(f"old members (period ended by now - 125 d): {old:,}")

    # What the index costs a flush, and what it saves a pass.
    probe_with = await _probe(main, now)
    probe_without = (float("nan"), float("nan"))
    builds: list[float] = []
    for label in ["with index", "no index"] * 3 + ["with index"]:
        if label == "no index":
            await main.execute("DROP INDEX tally.unique_members_period")
        elif flusher.latencies.get("no index"):
            started = time.perf_counter()
            await main.execute(INDEX_DDL)
            builds.append(time.perf_counter() - started)
            await main.execute("ANALYZE tally.unique_members")
        if label == "no index" and "no index" not in flusher.latencies:  # once: it is slow
            probe_without = await _probe(main, now)
        await _window(flusher, label, window)

    # Retention off and on, side by side.
    gate = Gate()
    retention: asyncio.Task[PassReport] | None = None
    deleted_on: dict[str, int] = {}
    on_labels = [f"retention on, {pause:g} s pause" for pause in PAUSES]
    for i in range(4 * ON_WINDOWS):
        on = i % 2 == 1
        label = on_labels[i // 2 % 2] if on else "retention off"
        if on:
            before = await _history(main)
            gate.pause = PAUSES[on_labels.index(label)]
            gate.open.set()
            if retention is None:
                retention = asyncio.create_task(
                    run_pass(deleting, POLICY, now, between_batches=gate.between)
                )
        await _window(flusher, label, window)
        if on:
            await gate.close(retention)
            deleted_on[label] = deleted_on.get(label, 0) + before - await _history(main)
    still_running = retention is not None and not retention.done()
    gate.open.set()
    assert retention is not None
    report = await retention
    sizes.append(await _sizes(main, "after the pass"))
    await main.execute("VACUUM tally.unique_members")
    await main.execute("VACUUM tally.dedup_segments")
    sizes.append(await _sizes(main, "after VACUUM"))
    started = time.perf_counter()
    refill = report.members_total // (CUSTOMERS * per_rollup)
    for back in range(refill):  # as many new members as the pass deleted
        await main.execute(
            "INSERT INTO tally.unique_members"
            " SELECT 'refill', 'customer-' || lpad(c::text, 4, '0'), 'day', $1, '', 'user-' || u"
            " FROM generate_series(1, $2) AS c, generate_series(1, $3) AS u",
            today + timedelta(days=back + 1),
            CUSTOMERS,
            per_rollup,
        )
    sizes.append(await _sizes(main, f"+{refill * CUSTOMERS * per_rollup:,} new members"))

    batch_ms = [b.seconds * 1000 for b in report.batches if b.table == "unique_members"]
    print()
    print(
        f"retention pass: {report.members_total:,} members and {report.segments:,} dedup segments"
        f" deleted in {len(report.batches)} batches; member batch p50"
        f" {np.percentile(batch_ms, 50):.0f} ms, p99 {np.percentile(batch_ms, 99):.0f} ms;"
        f" ({'still deleting in the last window' if still_running else 'done before the last window'})"
    )
    for label, deleted in deleted_on.items():
        print(f"  {label}: {deleted / (ON_WINDOWS * window):,.0f} members deleted/s")
    print(
        f"finding the first old period and deleting one batch: with the index"
        f" {probe_with[0]:.1f} ms + {probe_with[1]:.0f} ms, without {probe_without[0]:.0f} ms"
        f" + {probe_without[1]:.0f} ms; building the index: "
        + ", ".join(f"{b:.1f} s" for b in builds)
    )
    print()
    print(f"{'flush latency':<30} {'flushes':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for label in ["no index", "with index", "retention off", *on_labels]:
        p50, p99 = _percentiles(flusher.latencies[label])
        print(f"{label:<30} {len(flusher.latencies[label]):>8} {p50:>8.1f} {p99:>8.1f}")
    for a, b in [
        (on_labels[0], "retention off"),
        (on_labels[1], "retention off"),
        ("with index", "no index"),
    ]:
        pa, pb = _percentiles(flusher.latencies[a]), _percentiles(flusher.latencies[b])
        print(f"ratio {a} / {b}: p50 {pa[0] / pb[0]:.2f}, p99 {pa[1] / pb[1]:.2f}")
    print()
    mib = 2**20
    print(
        f"{'':<26} {'history':>10} {'flushed':>10} {'total MiB':>10} {'heap MiB':>9}"
        f" {'index MiB':>10} {'segments':>9} {'seg. MiB':>9}"
    )
    for s in sizes:
        print(
            f"{s.label:<26} {s.history:>10,} {s.flushed:>10,} {s.members_bytes / mib:>10.0f}"
            f" {s.members_heap / mib:>9.0f} {s.period_index / mib:>10.0f} {s.segments:>9,}"
            f" {s.segments_bytes / mib:>9.1f}"
        )
    print(
        "history: members of the filled periods; flushed: added by the timed flushes and the"
        " refill; index: unique_members_period alone"
    )
    for c in (main, flushing, deleting):
        await c.close()


async def _history(connection: asyncpg.Connection) -> int:
    return int(
        await connection.fetchval(
            "SELECT count(*) FROM tally.unique_members WHERE metric_uid = 'old_users'"
        )
    )


async def _window(flusher: Flusher, label: str, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        await flusher.flush(label)


async def _probe(connection: asyncpg.Connection, now: float) -> tuple[float, float]:
    """ms to find the first old period, and to delete one batch of it (rolled back)."""
    cutoff = POLICY.member_cutoff(now)
    assert cutoff is not None
    started = time.perf_counter()
    period = await connection.fetchrow(_NEXT_PERIOD, "day", cutoff, _BEFORE_ALL, "")
    found = time.perf_counter() - started
    assert period is not None
    transaction = connection.transaction()
    await transaction.start()
    started = time.perf_counter()
    await connection.execute(
        _DELETE_MEMBERS, "day", period["period_start"], period["metric_uid"], cutoff, 10_000
    )
    deleted = time.perf_counter() - started
    await transaction.rollback()
    return found * 1000, deleted * 1000


def main(dsn: str, members: int = 4_000_000, window: float = 5.0) -> None:
    asyncio.run(run_retention_bench(dsn, members, window))
