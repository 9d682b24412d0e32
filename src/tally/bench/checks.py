"""The bench's exactness checks and its report.

Exactness is checked against tests/reference.py, the same independent
reference the worker's exactness tests use, for a sample of customers.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from tally.bench.peers import PEER_JOB_METRICS, RunResult

if TYPE_CHECKING:
    from tally.bench.e2e import BenchReport

# -- exactness -----------------------------------------------------------------------


def load_reference() -> Any:
    """tests/reference.py from the checkout: the same reference the exactness tests use."""
    path = Path(__file__).resolve().parents[3] / "tests" / "reference.py"
    if not path.exists():
        raise RuntimeError(
            f"the exactness check needs a source checkout ({path} is missing); use --no-check"
        )
    spec = importlib.util.spec_from_file_location("tally_bench_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sample_customers(values: Sequence[bytes], share: float) -> set[str]:
    customers = sorted({orjson.loads(v)["customerId"] for v in values})
    step = max(1, round(1 / share))
    return set(customers[::step])


async def check_exact(
    dsn: str,
    definitions: list[dict[str, Any]],
    values: Sequence[bytes],
    customers: set[str],
    dedup: bool,
) -> int:
    """Compare the values table with the reference for `customers`, every
    column (value, value_text, value_sum, event_count, latest_at, latest_id:
    MAX, MIN, AVG and LATEST rows too); returns rows compared."""
    reference = load_reference()
    chosen = [v for v in values if orjson.loads(v)["customerId"] in customers]
    expected = reference.reference_rows(definitions, chosen, dedup=dedup)
    zones = {d["uid"]: d.get("timezone", "UTC") for d in definitions}
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT metric_uid, customer_id, group_key, time_unit, period_start, value,"
            " event_count, value_text, value_sum, latest_at, latest_id"
            " FROM tally.metric_values WHERE customer_id = ANY($1::text[])",
            sorted(customers),
        )
    finally:
        await connection.close()
    actual = {
        (
            r["metric_uid"],
            r["customer_id"],
            r["group_key"],
            r["time_unit"],
            reference.local_period(
                r["period_start"].timestamp(), r["time_unit"], zones[r["metric_uid"]]
            ),
        ): reference.Row(
            r["value"],
            r["event_count"],
            r["value_text"],
            r["value_sum"],
            r["latest_at"],
            r["latest_id"],
        )
        for r in rows
    }
    if actual != expected:
        wrong = [k for k in set(actual) | set(expected) if actual.get(k) != expected.get(k)]
        example = sorted(wrong, key=repr)[:3]
        raise AssertionError(
            f"{len(wrong)} rollups differ from the reference, e.g. "
            + "; ".join(f"{k}: stored {actual.get(k)} expected {expected.get(k)}" for k in example)
        )
    return len(actual)


def check_peer(result: RunResult, values: Sequence[bytes], customers: set[str]) -> None:
    reference = load_reference()
    chosen = [v for v in values if orjson.loads(v)["customerId"] in customers]
    expected = reference.reference_values(list(PEER_JOB_METRICS), chosen)
    want: dict[tuple[str, str], list[int]] = {}
    for (uid, customer, _group, _unit, day), (value, _events) in expected.items():
        entry = want.setdefault((customer, day.date().isoformat()), [0, 0])
        entry[0 if uid == "bench_calls" else 1] = int(value)
    assert result.results is not None
    got = {k: list(v) for k, v in result.results.items() if k[0] in customers}
    if got != want:
        wrong = [k for k in set(got) | set(want) if got.get(k) != want.get(k)]
        raise AssertionError(
            f"{result.name}: {len(wrong)} results differ from the reference, e.g. {sorted(wrong)[:3]}"
        )


def report(results: Sequence[RunResult]) -> str:
    """One table of every run, then the ratios the targets are stated in."""
    by_name = {r.name: r for r in results}
    rate = {r.name: r.events / r.seconds for r in results}
    ceiling = next((r for r in results if r.name.startswith("ceiling")), None)
    lines = [
        "| run | events/s | x ceiling | process CPU s / M | PostgreSQL CPU s / M | machine CPU s / M"
        " | cores busy | peak RSS MiB | rows written |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        database = r.detail.get("db_backend_cpu_seconds")
        machine = r.detail.get("machine_cpu_seconds")
        upserts = r.detail.get("rollup_upserts", float(r.rows))
        lines.append(
            f"| {r.name} | {rate[r.name]:,.0f} | "
            f"{f'{rate[r.name] / rate[ceiling.name]:.2f}' if ceiling else '-'} | "
            f"{r.cpu_seconds / r.events * 1e6:.1f} | "
            f"{'-' if database is None else f'{database / r.events * 1e6:.1f}'} | "
            f"{_per_million(machine, r.events)} | "
            f"{'-' if machine is None else f'{machine / r.seconds:.2f}'} | "
            f"{r.peak_rss_bytes / 2**20:.0f} | {upserts:,.0f} |"
        )
    tally_10 = by_name.get("Tally: 10 metrics, dedup on")
    tally_peer = by_name.get("Tally: peer job (2 metrics), dedup on")
    ratios = ["", "| ratio | value |", "|---|---:|"]
    if ceiling and tally_10:
        ratios.append(
            f"| Tally 10 metrics dedup on / ceiling | {rate[tally_10.name] / rate[ceiling.name]:.2f} |"
        )
    ratios += [
        f"| Tally peer job / {r.name} | {rate[tally_peer.name] / rate[r.name]:.2f} |"
        for r in results
        if tally_peer and r is not tally_peer and not r.name.startswith(("Tally", "ceiling"))
    ]
    return "\n".join(lines + (ratios if len(ratios) > 3 else []))


# -- the whole report -------------------------------------------------------------------


def _rate(r: RunResult) -> float:
    return r.events / r.seconds


def _upserts(r: RunResult) -> float:
    return r.detail.get("rollup_upserts", float(r.rows))


def _per_million(seconds: float | None, events: int) -> str:
    return "-" if seconds is None else f"{seconds / events * 1e6:.1f}"


def _ceiling(results: Sequence[RunResult]) -> RunResult | None:
    return next((r for r in results if r.name.startswith("ceiling")), None)


def _times_ceiling(r: RunResult | None, ceiling: RunResult | None) -> str:
    if r is None or ceiling is None:
        return "-"
    return f"{_rate(r) / _rate(ceiling):.2f}"


def side_by_side(runs: dict[str, list[RunResult]]) -> str:
    """Each Tally scenario over the backfill and the live workload, as x its topic's ceiling."""
    backfill, live = runs.get("backfill", []), runs.get("live", [])
    ceilings = {"backfill": _ceiling(backfill), "live": _ceiling(live)}
    names = list(dict.fromkeys(r.name for r in [*backfill, *live] if r.name.startswith("Tally")))
    by = {(w, r.name): r for w, rs in runs.items() for r in rs}
    lines = [
        "| scenario | backfill events/s | backfill x ceiling | live events/s | live x ceiling"
        " | live / backfill | worker CPU s / M (backfill, live) | PostgreSQL CPU s / M"
        " (backfill, live) | rows written (backfill, live) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        b, v = by.get(("backfill", name)), by.get(("live", name))

        def pair(get: Any, b: RunResult | None = b, v: RunResult | None = v) -> str:
            return ", ".join("-" if r is None else get(r) for r in (b, v))

        lines.append(
            f"| {name.removeprefix('Tally: ')} | "
            f"{'-' if b is None else f'{_rate(b):,.0f}'} | {_times_ceiling(b, ceilings['backfill'])} | "
            f"{'-' if v is None else f'{_rate(v):,.0f}'} | {_times_ceiling(v, ceilings['live'])} | "
            f"{'-' if b is None or v is None else f'{_rate(v) / _rate(b):.2f}'} | "
            f"{pair(lambda r: _per_million(r.cpu_seconds, r.events))} | "
            f"{pair(lambda r: _per_million(r.detail.get('db_backend_cpu_seconds'), r.events))} | "
            f"{pair(lambda r: f'{_upserts(r):,.0f}')} |"
        )
    for workload, ceiling in ceilings.items():
        if ceiling is not None:
            lines.append(
                f"| ceiling ({workload}) | "
                + (
                    f"{_rate(ceiling):,.0f} | 1.00 | - | - |"
                    if workload == "backfill"
                    else "- | - | "
                )
                + (f"{_rate(ceiling):,.0f} | 1.00 |" if workload == "live" else "")
                + f" - | {_per_million(ceiling.cpu_seconds, ceiling.events)} | - | - |"
            )
    return "\n".join(lines)


def freshness_table(report_: BenchReport) -> str:
    lines = [
        "| scenario | live max events/s | produced events/s (target: half) | events measured"
        " | p50 s | p99 s | max s | worker flush interval s | worker CPU share | producer CPU share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {f.scenario} | {f.max_rate:,.0f} | {f.produced_rate:,.0f} ({f.target_rate:,.0f}) | "
        f"{f.measured_events:,} | {f.p50:.2f} | {f.p99:.2f} | {f.max:.2f} | "
        f"{f.flush_interval} | {f.worker_cpu_share:.2f} | {f.producer_cpu_share:.2f} |"
        for f in report_.freshness
    ]
    return "\n".join(lines)


def scale_out_table(report_: BenchReport) -> str:
    lines = [
        "| workload | scenario | workers | events/s | worker CPU s / M | PostgreSQL CPU s / M"
        " | rows written | flushes | rebalances while timed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = [
        "",
        "| workload | events/s, 2 / 1 workers | PostgreSQL CPU s / M, 2 / 1"
        " | worker CPU s / M, 2 / 1 |",
        "|---|---:|---:|---:|",
    ]
    for s in report_.scale_out:
        lines += [
            f"| {s.workload} | {s.scenario} | {r.detail.get('workers', 1):.0f} | {_rate(r):,.0f} | "
            f"{_per_million(r.cpu_seconds, r.events)} | "
            f"{_per_million(r.detail.get('db_backend_cpu_seconds'), r.events)} | "
            f"{_upserts(r):,.0f} | {r.detail.get('flushes', 0):,.0f} | "
            f"{r.detail.get('assignments', 0):.0f} |"
            for r in (s.one, s.two)
        ]
        one_db = s.one.detail.get("db_backend_cpu_seconds", float("nan"))
        two_db = s.two.detail.get("db_backend_cpu_seconds", float("nan"))
        ratios.append(
            f"| {s.workload} | {_rate(s.two) / _rate(s.one):.2f} | "
            f"{(two_db / s.two.events) / (one_db / s.one.events):.2f} | "
            f"{(s.two.cpu_seconds / s.two.events) / (s.one.cpu_seconds / s.one.events):.2f} |"
        )
    return "\n".join(lines + ratios)


def full_report(report_: BenchReport) -> str:
    """Markdown: each workload's table, the two side by side, freshness, scale-out."""
    start, end = report_.load_average
    parts = [
        f"{report_.count:,} events per workload, seed {report_.seed}, 4 partitions; "
        f"worker flush interval {report_.flush_interval} s; "
        f"1-minute load average {start:.2f} at the start, {end:.2f} at the end; "
        f"{report_.wall_seconds / 60:.1f} min in all.",
    ]
    for workload, results in report_.runs.items():
        parts += ["", f"### {workload.capitalize()} workload", "", report(results)]
    if len(report_.runs) > 1:
        parts += ["", "### Backfill and live side by side", "", side_by_side(report_.runs)]
    if report_.freshness:
        parts += [
            "",
            "### Freshness (live events at half the scenario's live rate)",
            "",
            freshness_table(report_),
        ]
    if report_.scale_out:
        parts += [
            "",
            "### Scale-out: 1 worker against 2, one database",
            "",
            scale_out_table(report_),
        ]
    return "\n".join(parts)
