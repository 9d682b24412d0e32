"""`tally.bench writepath`, parts 2 and 3: a live workload through the real
core, and the commit settings (see `tally.bench.writepath`)."""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate, islice
from typing import TYPE_CHECKING

import asyncpg
import orjson

from tally.bench.writepath_baseline import write_flush_baseline
from tally.bench.writepath_shapes import Shape, flush_deltas, make_shape, prefill_sql
from tally.contracts.metric import parse_metric
from tally.core.engine import Core, Deltas, aggregate, new_core
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tally.store.flush import PartitionFlush, load_partition, write_flush
from tally.store.member_cache import MemberCache, MemberKey
from tally.store.migrate import migrate
from tally.store.pool import connect
from tally.synthetic import (
    EVENT_TYPE_WEIGHTS,
    EVENT_TYPES,
    PLANS,
    REGIONS,
    Workload,
    _customer_weights,
    _properties,
    metric_definitions,
)

if TYPE_CHECKING:
    from tally.bench.writepath import Databases

INTERVAL = 5  # seconds between flushes: TALLY_FLUSH_INTERVAL's default
LIVE_START = 1_795_046_400.0 + 9.5 * 3600  # 2026-11-19 09:30 UTC, in every period of the day


def live_events(rate: int, flush: int, seed: int = 11) -> list[bytes]:
    """One flush interval of `tally.synthetic`'s workload (same customers,
    skew, event types and properties), every event timed in that interval."""
    workload = Workload(seed=seed)
    rng = random.Random(seed * 1_000_003 + flush)
    nested = random.Random(seed * 1_000_003 + flush + 1)  # keeps rng's sequence
    customers = [f"cust_{n:05d}" for n in range(workload.customers)]
    customer_cum = list(accumulate(_customer_weights(workload.customers)))
    type_cum = list(accumulate(EVENT_TYPE_WEIGHTS))
    end = LIVE_START + (flush + 1) * INTERVAL
    found = []
    for n in range(rate * INTERVAL):
        customer = rng.choices(customers, cum_weights=customer_cum)[0]
        event_type = rng.choices(EVENT_TYPES, cum_weights=type_cum)[0]
        moment = datetime.fromtimestamp(end - rng.random() * INTERVAL, UTC)
        document = {
            "id": f"evt_{seed}_{flush}_{n}",
            "eventType": event_type,
            "customerId": customer,
            "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "properties": _properties(rng, nested, event_type, customer, workload),
        }
        found.append(orjson.dumps(document))
    return found


def aggregate_all(core: Core, values: list[bytes], now: float) -> Deltas:
    """The core's Deltas of `values`, every one of them accepted."""
    deltas = aggregate(core, values, now, DecodeLimits())
    if deltas.events != len(values):
        raise AssertionError(f"{len(values) - deltas.events} of {len(values)} events refused")
    return deltas


def live_deltas(rate: int, flush: int, core: Core) -> Deltas:
    now = LIVE_START + (flush + 1) * INTERVAL + 1
    return aggregate_all(core, live_events(rate, flush), now)


def synthetic_core() -> Core:
    return new_core(MetricIndex([parse_metric(d) for d in metric_definitions(10)]))


@dataclass
class LiveRunner:
    name: str
    connection: asyncpg.Connection
    pid: int
    cache: MemberCache | bool | None  # False: the store's path without a cache
    offset: int = -1
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    async def flush(self, deltas: Deltas, events: int) -> None:
        from tally.bench.writepath import backend_cpu

        part = PartitionFlush("live", 0, self.offset, self.offset + events, None, records=events)
        c0, w0 = backend_cpu(self.pid), time.perf_counter()
        if self.cache is None:
            result = await write_flush_baseline(self.connection, [part], deltas, "bench")
        else:
            cache = self.cache if isinstance(self.cache, MemberCache) else None
            result = await write_flush(self.connection, [part], deltas, "bench", members=cache)
        self.wall.append(time.perf_counter() - w0)
        self.cpu.append(backend_cpu(self.pid) - c0)
        self.skipped.append(result.members_skipped)
        self.offset += events


def universe_events(seed: int = 13) -> Iterator[bytes]:
    """The day so far, in 800,000 events: every customer's every user calling
    the API from every region and logging in once, and a few events of each
    other type per customer, in the ten minutes before the live stream."""
    workload = Workload(seed=seed)
    rng = random.Random(seed)
    nested = random.Random(seed + 1)  # keeps rng's sequence
    n = 0
    for c in range(workload.customers):
        customer = f"cust_{c:05d}"
        kinds: list[tuple[str, dict[str, object]]] = []
        for u in range(workload.users_per_customer):
            user = f"user{u}@{customer}.example.com"
            kinds += [("api_call", {"user": user, "region": region}) for region in REGIONS]
            kinds.append(("login", {"email": user}))
        for event_type, count in (("message_sent", 30), ("transfer", 10), ("storage_snapshot", 5)):
            kinds += [(event_type, {})] * count
        kinds += [("seat_change", {"plan": plan}) for plan in PLANS]
        for event_type, fixed in kinds:
            moment = datetime.fromtimestamp(LIVE_START - rng.random() * 600, UTC)
            properties = {**_properties(rng, nested, event_type, customer, workload), **fixed}
            n += 1
            yield orjson.dumps(
                {
                    "id": f"warm_{n}",
                    "eventType": event_type,
                    "customerId": customer,
                    "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "properties": properties,
                }
            )


def cache_bytes(cache: MemberCache) -> int:
    """The cache's own memory: its dict, keys, sets and member strings."""
    known = cache._known
    total = sys.getsizeof(known)
    for key, entry in known.items():
        total += sys.getsizeof(key) + sys.getsizeof(entry) + sys.getsizeof(entry.members)
        total += sum(map(sys.getsizeof, entry.members))
    return total


def copied(cache: MemberCache) -> MemberCache:
    twin = MemberCache(cache.max_members, cache.horizon, cache.clock)
    rollups: dict[MemberKey, list[str]] = {}
    for key, member in cache.known():
        rollups.setdefault(key, []).append(member)
    twin.remember(twin.offer((key, cache._known[key].end, ms) for key, ms in rollups.items()))
    return twin


async def warm_template(databases: Databases) -> tuple[str, MemberCache]:
    """A database holding the day so far (`universe_events`), and the cache
    of the worker that wrote it."""
    core = synthetic_core()
    dsn = await databases.create("live_template")
    template = databases.names[-1]
    connection = await connect(dsn)
    await migrate(connection)
    offset, _ = await load_partition(connection, "live", 0, None)
    cache = MemberCache(max_members=4_000_000, clock=lambda: LIVE_START)
    started = time.perf_counter()
    universe, events = universe_events(), 0
    while chunk := list(islice(universe, 400_000)):  # flushes of 400,000 events
        deltas = aggregate_all(core, chunk, LIVE_START + 1)
        part = PartitionFlush("live", 0, offset, offset + deltas.events, None, deltas.events)
        await write_flush(connection, [part], deltas, "bench", members=cache)
        offset += deltas.events
        events += deltas.events
        del chunk, deltas
    await connection.execute("VACUUM ANALYZE")
    await connection.close()
    print()
    print(
        f"live workload: the day so far ({events:,} events: every customer's users in every"
        f" region) written in {time.perf_counter() - started:.0f} s; the writer's cache holds"
        f" {len(cache):,} members in {cache.rollups:,} rollups,"
        f" {cache_bytes(cache) / len(cache):.0f} bytes per member",
        flush=True,
    )
    return template, cache


async def live(
    databases: Databases, rate: int, flushes: int, template: str, warm: MemberCache
) -> None:
    from tally.bench.writepath import digest

    core = synthetic_core()
    runners: list[LiveRunner] = []
    for name, cache in (
        ("current", None),
        ("store, no member cache", False),
        ("store + member cache", copied(warm)),
    ):
        connection = await connect(await databases.create(f"live{rate}_{len(runners)}", template))
        offset = int(await connection.fetchval("SELECT next_offset FROM tally.partition_offsets"))
        pid = int(await connection.fetchval("SELECT pg_backend_pid()"))
        runners.append(LiveRunner(name, connection, pid, cache, offset))
    print(
        f"{rate:,} events/s, a flush every {INTERVAL} s ({rate * INTERVAL:,} events),"
        f" {flushes} flushes; 10 metrics",
        flush=True,
    )
    shape: list[tuple[int, int, float]] = []
    for n in range(flushes):
        started = time.process_time()
        deltas = live_deltas(rate, n, core)
        members = deltas.members
        shape.append((len(deltas), members, time.process_time() - started))
        for runner in runners if n % 2 == 0 else reversed(runners):
            await runner.flush(deltas, rate * INTERVAL)
        del deltas
    events = rate * INTERVAL * flushes
    for n, (rollups, members, seconds) in enumerate(shape):
        print(
            f"  flush {n}: {rollups:,} rollups ({rollups / (rate * INTERVAL):.2f} per event),"
            f" {members:,} members ({members / (rate * INTERVAL):.2f} per event);"
            f" events made and aggregated in {seconds:.1f} s"
        )
    print(
        f"{'path':<24} {'PG CPU s / M events':>20} {'x current':>9} {'wall ms / flush':>16}"
        f" {'x current':>9} {'members skipped':>16}"
    )
    ref = sum(runners[0].cpu)
    ref_wall = statistics.median(runners[0].wall)
    for runner in runners:
        cpu, wall = sum(runner.cpu), statistics.median(runner.wall)
        skipped = sum(runner.skipped)
        print(
            f"{runner.name:<24} {cpu / events * 1e6:>20.2f} {cpu / ref:>9.2f}"
            f" {wall * 1000:>16.0f} {wall / ref_wall:>9.2f}"
            f" {skipped:>8,} ({skipped / sum(s[1] for s in shape):.0%})"
        )
    # The code before this work knows COUNT, SUM and UNIQUE only: it is
    # compared on those metrics' rows; the store's paths on every row.
    old_kinds = [
        d["uid"]
        for d in metric_definitions(10)
        if d["aggregationType"] in ("COUNT", "SUM", "UNIQUE")
    ]
    old_rows = {await digest(r.connection, uids=old_kinds) for r in runners}
    store_rows = {await digest(r.connection) for r in runners[1:]}
    for runner in runners:
        await runner.connection.close()
    await databases.drop(len(runners))
    same = len(old_rows) == 1 and len(store_rows) == 1
    print(
        "all paths wrote the same rows (the code before this work: on its COUNT, SUM and"
        f" UNIQUE metrics): {'yes' if same else 'NO'}"
    )


SETTINGS = {
    "synchronous_commit on": "SET synchronous_commit = on; SET commit_delay = 0",
    "synchronous_commit off": "SET synchronous_commit = off; SET commit_delay = 0",
    "commit_delay 1 ms": "SET synchronous_commit = on; SET commit_delay = 1000; SET commit_siblings = 1",
}


@dataclass
class Writer:
    connection: asyncpg.Connection
    pid: int
    shape: Shape
    rng: random.Random
    offset: int = -1
    cache: MemberCache = field(default_factory=lambda: MemberCache(clock=lambda: LIVE_START))


async def commits(databases: Databases, window: float = 3.0, rounds: int = 3) -> None:
    """Flushes back to back for `window` seconds under each setting, in turns."""
    from tally.bench.writepath import backend_cpu

    dsn = await databases.create("commits")
    setup = await connect(dsn)
    await migrate(setup)
    writers = []
    for w in range(4):
        shape = make_shape(f"_w{w}")  # metrics of its own: uids and event types
        for metric in shape.metrics:
            for sql, args in prefill_sql(metric, 2_000, 10):
                await setup.execute(sql, *args)
        connection = await connect(dsn)
        offset, _ = await load_partition(connection, "commits", w, None)
        pid = int(await connection.fetchval("SELECT pg_backend_pid()"))
        writers.append(Writer(connection, pid, shape, random.Random(w), offset))
    await setup.execute("VACUUM ANALYZE")
    await setup.close()
    print()
    print(f"commit settings: flushes back to back, {rounds} windows of {window:g} s per setting")
    results: dict[tuple[str, int, int], list[tuple[float, float]]] = {}

    async def run(writer: Writer, partition: int, size: int, key: tuple[str, int, int]) -> None:
        end = time.perf_counter() + window
        while time.perf_counter() < end:
            deltas = flush_deltas(writer.shape, size, 5, writer.rng)
            part = PartitionFlush("commits", partition, writer.offset, writer.offset + 1, None)
            c0, w0 = backend_cpu(writer.pid), time.perf_counter()
            await write_flush(writer.connection, [part], deltas, "bench", members=writer.cache)
            sample = (time.perf_counter() - w0, backend_cpu(writer.pid) - c0)
            results.setdefault(key, []).append(sample)
            writer.offset += 1

    for r in range(rounds):
        for size, count in ((2_000, 1), (50_000, 1), (2_000, 4)):
            names = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
            for name in names:
                for writer in writers[:count]:
                    await writer.connection.execute(SETTINGS[name])
                await asyncio.gather(
                    *(run(w, p, size, (name, size, count)) for p, w in enumerate(writers[:count]))
                )
    print(
        f"{'setting':<24} {'rollups':>8} {'writers':>7} {'flushes/s':>9} {'wall p50 ms':>11}"
        f" {'x on':>5} {'PG ms/flush':>11}"
    )
    for size, count in ((2_000, 1), (50_000, 1), (2_000, 4)):
        ref = statistics.median(s[0] for s in results[("synchronous_commit on", size, count)])
        for name in SETTINGS:
            xs = results[(name, size, count)]
            p50 = statistics.median(s[0] for s in xs)
            print(
                f"{name:<24} {size:>8,} {count:>7} {len(xs) / (rounds * window):>9.1f}"
                f" {p50 * 1000:>11.1f} {p50 / ref:>5.2f}"
                f" {sum(s[1] for s in xs) / len(xs) * 1000:>11.1f}"
            )
    for writer in writers:
        await writer.connection.close()
