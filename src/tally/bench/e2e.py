"""`tally bench`: Tally end to end against the consume ceiling and the peers.

Two workloads, each a topic of seeded synthetic events (`tally.synthetic`):

- **backfill**: event times shuffled over three days ending at a fixed
  `BENCH_END`, a backlog replayed in no time order. Produced once and reused.
- **live**: a producer's stream. Event times are spread, in increasing
  order, over the `LIVE_SPAN_SECONDS` before the moment the topic is
  produced, so each partition holds its events in event-time order, except
  for a late tail of `LATE_SHARE` of the events up to `LATE_SECONDS` late.
  It is the same for a seed apart from that shift of time, so the exactness
  check holds; it is produced again by every run, and deleted after.

Each scenario runs a real `tally run` process against a fresh database, timed
from its first partition assignment until PostgreSQL holds the end offsets of
every partition. The consume ceiling and the peers run on the same topic in
the same invocation (`tally.bench.peers`). Then, over the live workload,
freshness at half each scenario's measured rate (`tally.bench.freshness`),
and scale-out: one worker against two on the same topic and database.
Results are ratios: the machine is noisy, a ratio measured in one run is not.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tally.bench.checks import check_exact, check_peer, full_report, sample_customers
from tally.bench.freshness import FreshnessResult, run_freshness
from tally.bench.peers import (
    PEER_JOB_METRICS,
    RunResult,
    run_ceiling,
    run_quixstreams,
    run_sql_route,
)
from tally.bench.workers import (
    PARTITIONS,
    Fleet,
    TransactionGate,
    backend_cpu,
    create_topic,
    delete_topics,
    durable_counts,
    end_offsets,
    flush_interval,
    fresh_database,
    machine_busy_seconds,
    settled_scrape,
    wait_offsets,
    with_dead_letters,
    worker_env,
)
from tally.synthetic import Workload, events, metric_definitions, model_definitions

BENCH_END = 1_795_000_000.0  # fixed event-time end, so the backfill is the same every run
BACKFILL_SPAN_SECONDS = 3 * 86400.0
LIVE_SPAN_SECONDS = 15 * 60.0
LATE_SHARE = 0.01
LATE_SECONDS = 6 * 3600.0
WORKLOADS = ("backfill", "live")
SCALE_OUT_SCENARIO = "10 metrics, dedup on"


def count_sum_only(count: int) -> list[dict[str, Any]]:
    return [d for d in metric_definitions(count * 3) if d["aggregationType"] != "UNIQUE"][:count]


def unique_heavy() -> list[dict[str, Any]]:
    """Six UNIQUE metrics (users, emails, endpoints...) plus two COUNTs."""
    base: dict[str, Any] = {"name": "u", "aggregationType": "UNIQUE", "timeUnits": ["day", "month"]}
    uniques: list[dict[str, Any]] = [
        {
            **base,
            "uid": "u_api_users",
            "eventType": "api_call",
            "aggregationProperty": "user",
            "caseSensitive": False,
        },
        {
            **base,
            "uid": "u_api_endpoints",
            "eventType": "api_call",
            "aggregationProperty": "endpoint",
        },
        {
            **base,
            "uid": "u_users_by_region",
            "eventType": "api_call",
            "aggregationProperty": "user",
            "metricType": "GROUPED",
            "groupingProperty": "region",
        },
        {
            **base,
            "uid": "u_logins",
            "eventType": "login",
            "aggregationProperty": "email",
            "caseSensitive": False,
        },
        {**base, "uid": "u_senders", "eventType": "message_sent", "aggregationProperty": "user"},
        {
            **base,
            "uid": "u_countries",
            "eventType": "message_sent",
            "aggregationProperty": "recipient_country",
        },
    ]
    return uniques + metric_definitions(2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    metrics: list[dict[str, Any]]
    dedup: bool = True


def scenarios() -> dict[str, Scenario]:
    found = [
        Scenario(name="peer job (2 metrics), dedup on", metrics=list(PEER_JOB_METRICS)),
        Scenario(name="1 metric, dedup on", metrics=metric_definitions(1)),
        Scenario(name="10 metrics, dedup on", metrics=metric_definitions(10)),
        Scenario(name="10 metrics, dedup off", metrics=metric_definitions(10), dedup=False),
        Scenario(name="10 metrics COUNT/SUM only, dedup on", metrics=count_sum_only(10)),
        Scenario(name="UNIQUE-heavy (8 metrics), dedup on", metrics=unique_heavy()),
        Scenario(name="50 metrics, dedup on", metrics=metric_definitions(50)),
        Scenario(
            name="10 metrics MAX/MIN/AVG/LATEST, paths, several keys, dedup on",
            metrics=model_definitions(),
        ),
    ]
    return {s.name: s for s in found}


# -- the workloads ------------------------------------------------------------------------


def workload(name: str, seed: int, anchor: float = BENCH_END) -> Workload:
    """The workload `name`; `anchor` is a live workload's end (the wall clock at production)."""
    if name == "backfill":
        return Workload(seed=seed, end=BENCH_END, span_seconds=BACKFILL_SPAN_SECONDS)
    if name == "live":
        return Workload(
            seed=seed,
            end=anchor,
            span_seconds=LIVE_SPAN_SECONDS,
            ordered=True,
            late_share=LATE_SHARE,
            late_seconds=LATE_SECONDS,
        )
    raise ValueError(f"unknown workload {name!r}; one of {WORKLOADS}")


@dataclass(frozen=True, slots=True)
class Loaded:
    name: str  # "backfill" | "live"
    topic: str
    workload: Workload
    count: int
    temporary: bool  # deleted when the bench ends


async def _produce(bootstrap: str, topic: str, chosen: Workload, count: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1 << 20, acks="all"
    )
    await producer.start()
    try:
        # In order, through one producer: each partition gets its events in the
        # order they are generated (a live workload's event-time order).
        for document in events(chosen, count):
            await producer.send(topic, orjson.dumps(document), key=document["customerId"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def preload(bootstrap: str, count: int, seed: int) -> str:
    """The backfill topic holding `count` seeded events; produced once, reused after."""
    # v2: the workload gained nested properties (issue 13); older topics lack them.
    topic = f"tally-bench-v2-s{seed}-n{count}"
    await create_topic(bootstrap, topic)
    if sum((await end_offsets(bootstrap, topic)).values()) == count:
        return topic
    await create_topic(bootstrap, topic, replace=True)
    await _produce(bootstrap, topic, workload("backfill", seed), count)
    return topic


async def load(bootstrap: str, name: str, count: int, seed: int) -> Loaded:
    if name == "backfill":
        topic = await preload(bootstrap, count, seed)
        return Loaded(name, topic, workload(name, seed), count, temporary=False)
    anchor = float(int(time.time()))  # whole seconds: the shift is the only difference
    chosen = workload(name, seed, anchor)
    topic = f"tally-bench-live-s{seed}-n{count}-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic, replace=True)
    await _produce(bootstrap, topic, chosen, count)
    return Loaded(name, topic, chosen, count, temporary=True)


def workload_values(count: int, seed: int, chosen: Workload | None = None) -> list[bytes]:
    return [orjson.dumps(d) for d in events(chosen or workload("backfill", seed), count)]


# -- one Tally run ----------------------------------------------------------------


async def run_tally(
    bootstrap: str,
    topic: str,
    count: int,
    admin_dsn: str,
    scenario: Scenario,
    keep: Callable[[str], Awaitable[Any]] | None = None,
    *,
    workers: int = 1,
    live: bool = False,
    gate: TransactionGate | None = None,
) -> RunResult:
    """`workers` worker processes of one group over the whole topic, one database;
    `keep(dsn)` runs before the database is dropped.

    Without a `gate`, the clock starts at the first "partition ready" of any
    worker. With one (`gate.topic` is then the topic), the workers first
    settle on a balanced assignment over the gate's uncommitted events, and
    the clock, and the CPU counts, start when it commits them.
    """
    async with fresh_database(admin_dsn, scenario.metrics) as (name, dsn):
        ends = await end_offsets(bootstrap, topic) if gate is None else {}
        group = f"bench-{uuid.uuid4().hex[:8]}"
        env = worker_env(bootstrap, dsn, topic, group, dedup=scenario.dedup, live=live)
        fleet = Fleet(env, workers).start()
        cpu_before = database_before = 0.0
        try:
            ports, started = await fleet.wait_ready()
            machine_before = machine_busy_seconds()
            if gate is not None:
                await fleet.wait_balanced()
                cpu_before = fleet.cpu_seconds()
                database_before = await backend_cpu(dsn, name)
                assigned_before = fleet.assignments()
                started = time.monotonic()
                machine_before = machine_busy_seconds()
                ends = await gate.release()
            await wait_offsets(dsn, topic, ends, fleet)
            seconds = time.monotonic() - started
            machine = machine_busy_seconds() - machine_before
            cpu, rss = fleet.cpu_seconds() - cpu_before, fleet.peak_rss()
            database_cpu = await backend_cpu(dsn, name) - database_before
            totals = await asyncio.to_thread(settled_scrape, ports)
            assignments = fleet.assignments() - (assigned_before if gate is not None else 0)
        finally:
            await fleet.stop()
        counts = await durable_counts(dsn, topic)
        if counts["records"] != count or counts["dead_letters"]:
            raise AssertionError(f"{scenario.name}: {count} events, but stored {counts}")
        if keep is not None:
            await keep(dsn)
    return RunResult(
        name=f"Tally: {scenario.name}" + (f", {workers} workers" if workers > 1 else ""),
        events=count,
        seconds=seconds,
        cpu_seconds=cpu,
        peak_rss_bytes=rss,
        rows=int(counts["rows"]),
        detail={
            # The PostgreSQL backends' own CPU (the server runs on this machine):
            # what the database spent on this run, next to the worker's.
            "db_backend_cpu_seconds": database_cpu,
            # Every process's on the machine over the timed run, the broker's too:
            # with `seconds`, how many of the machine's cores the run kept busy.
            "machine_cpu_seconds": machine,
            "flush_in_flight_share": totals.get("tally_flush_duration_seconds_sum", 0.0)
            / seconds
            / workers,
            "flushes": totals.get("tally_flushes_total", 0.0),
            "rollup_upserts": totals.get("tally_rollup_rows_written_total", 0.0),
            "workers": float(workers),
            # "partitions assigned" lines; with a gate, only those after its release
            # (0: no rebalance while the clock ran)
            "assignments": float(assignments),
        },
        results=None,
    )


async def _gated(bootstrap: str, loaded: Loaded) -> TransactionGate:
    """The workload's events again, in a topic of their own, held back by a transaction."""
    gate = TransactionGate(bootstrap, f"tally-bench-gate-{uuid.uuid4().hex[:10]}")
    try:
        await gate.fill(
            (d["customerId"].encode(), orjson.dumps(d))
            for d in events(loaded.workload, loaded.count)
        )
    except BaseException:
        await gate.close()
        raise
    return gate


async def _run_checked(
    bootstrap: str,
    dsn: str,
    loaded: Loaded,
    scenario: Scenario,
    workers: int,
    values: list[bytes],
    customers: set[str],
    check: bool,
    say: Callable[[str], None],
    gate: TransactionGate | None = None,
) -> RunResult:
    """One run, its values compared with the reference (when `check`) before its database goes."""

    async def keep(database: str) -> None:
        if check:
            compared = await check_exact(
                database, scenario.metrics, values, customers, scenario.dedup
            )
            say(f"  exact: {compared:,} rollups of {len(customers)} customers equal the reference")

    done = await run_tally(
        bootstrap,
        loaded.topic if gate is None else gate.topic,
        loaded.count,
        dsn,
        scenario,
        keep,
        workers=workers,
        live=loaded.name == "live",
        gate=gate,
    )
    say(f"  {done.events / done.seconds:,.0f} events/s")
    return done


# -- the whole bench ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScaleOut:
    workload: str
    scenario: str
    one: RunResult
    two: RunResult


@dataclass(slots=True)
class BenchReport:
    count: int
    seed: int
    flush_interval: str
    runs: dict[str, list[RunResult]] = field(default_factory=dict)  # by workload
    freshness: list[FreshnessResult] = field(default_factory=list)
    scale_out: list[ScaleOut] = field(default_factory=list)
    load_average: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at start and end
    wall_seconds: float = 0.0


async def bench(
    bootstrap: str,
    dsn: str,
    *,
    count: int,
    seed: int,
    chosen: Sequence[str],
    peers: bool,
    check: bool,
    check_share: float,
    workloads: Sequence[str] = WORKLOADS,
    freshness: bool = True,
    freshness_seconds: float = 30.0,
    freshness_warmup: float = 10.0,
    freshness_scenarios: Sequence[str] | None = None,
    scale_out: bool = True,
    scale_out_scenario: str = SCALE_OUT_SCENARIO,
    scale_out_workloads: Sequence[str] = WORKLOADS,
    say: Callable[[str], None] = print,
) -> BenchReport:
    began = time.monotonic()
    result = BenchReport(count, seed, flush_interval(), load_average=(os.getloadavg()[0], 0.0))
    table_of = scenarios()
    live_rates: dict[str, float] = {}
    for name in workloads:
        say(f"{name}: producing {count:,} events (seed {seed}) ...")
        loaded = await load(bootstrap, name, count, seed)
        try:
            values = workload_values(count, seed, loaded.workload) if check else []
            customers = sample_customers(values, check_share) if check else set()

            def run(
                scenario: Scenario,
                workers: int,
                gate: TransactionGate | None = None,
                loaded: Loaded = loaded,
                values: list[bytes] = values,
                customers: set[str] = customers,
            ) -> Awaitable[RunResult]:
                return _run_checked(
                    bootstrap, dsn, loaded, scenario, workers, values, customers, check, say, gate
                )

            runs = result.runs.setdefault(name, [])
            for scenario_name in chosen:
                say(f"{name}: running Tally: {scenario_name} ...")
                runs.append(await run(table_of[scenario_name], 1))
                if name == "live":
                    live_rates[scenario_name] = runs[-1].events / runs[-1].seconds
            if peers:
                for runner in (run_ceiling, run_quixstreams, run_sql_route):
                    say(f"{name}: running {runner.__name__.removeprefix('run_')} ...")
                    args = (
                        (bootstrap, loaded.topic, count)
                        if runner is run_ceiling
                        else (bootstrap, loaded.topic, count, dsn)
                    )
                    peer = await asyncio.to_thread(runner, *args)
                    if check and peer.results is not None:
                        check_peer(peer, values, customers)
                        say(
                            f"  exact: {peer.name} equals the reference for"
                            f" {len(customers)} customers"
                        )
                    say(f"  {peer.events / peer.seconds:,.0f} events/s")
                    runs.append(peer)
            if scale_out and name in scale_out_workloads:
                scenario = table_of[scale_out_scenario]
                pair = []
                for workers in (1, 2):
                    say(f"{name}: scale-out, {scenario.name}: {workers} worker(s) ...")
                    gate = await _gated(bootstrap, loaded)
                    try:
                        pair.append(await run(scenario, workers, gate))
                    finally:
                        await gate.close()
                result.scale_out.append(ScaleOut(name, scenario.name, *pair))
        finally:
            if loaded.temporary:
                await delete_topics(bootstrap, with_dead_letters(loaded.topic))
    if freshness and not live_rates:
        say("freshness: skipped, it runs at half each scenario's rate over the live workload")
    if freshness:
        for scenario_name, rate in live_rates.items():
            if freshness_scenarios is not None and scenario_name not in freshness_scenarios:
                continue
            scenario = table_of[scenario_name]
            say(
                f"freshness: {scenario_name} at {rate / 2:,.0f} events/s"
                f" ({freshness_warmup:.0f} s warm-up, {freshness_seconds:.0f} s measured) ..."
            )
            fresh = await run_freshness(
                bootstrap,
                dsn,
                scenario=scenario_name,
                metrics=scenario.metrics,
                dedup=scenario.dedup,
                max_rate=rate,
                seconds=freshness_seconds,
                warmup=freshness_warmup,
                seed=seed,
            )
            say(f"  p50 {fresh.p50:.2f} s, p99 {fresh.p99:.2f} s")
            result.freshness.append(fresh)
    result.load_average = (result.load_average[0], os.getloadavg()[0])
    result.wall_seconds = time.monotonic() - began
    return result


def main(
    bootstrap: str,
    dsn: str,
    count: int,
    seed: int,
    chosen: Sequence[str] | None,
    peers: bool,
    check: bool,
    check_share: float,
    **options: Any,
) -> str:
    names = list(chosen) if chosen else list(scenarios())
    found = asyncio.run(
        bench(
            bootstrap,
            dsn,
            count=count,
            seed=seed,
            chosen=names,
            peers=peers,
            check=check,
            check_share=check_share,
            **options,
        )
    )
    return full_report(found)


__all__ = ["PARTITIONS", "BenchReport", "ScaleOut", "bench", "main", "run_tally", "scenarios"]
