"""The bench's exactness checks and its report.

Exactness is checked against tests/reference.py, the same independent
reference the worker's exactness tests use, for a sample of customers.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from tally.bench.peers import PEER_JOB_METRICS, RunResult

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
    """Compare the values table with the reference for `customers`; returns rows compared."""
    reference = load_reference()
    chosen = [v for v in values if orjson.loads(v)["customerId"] in customers]
    expected = reference.reference_values(definitions, chosen, dedup=dedup)
    zones = {d["uid"]: d.get("timezone", "UTC") for d in definitions}
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT metric_uid, customer_id, group_key, time_unit, period_start, value, event_count"
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
        ): (r["value"], r["event_count"])
        for r in rows
    }
    if actual != expected:
        wrong = [k for k in set(actual) | set(expected) if actual.get(k) != expected.get(k)]
        raise AssertionError(
            f"{len(wrong)} rollups differ from the reference, e.g. {sorted(wrong, key=repr)[:3]}"
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
        "| run | events/s | x ceiling | process CPU s / M | PostgreSQL CPU s / M | peak RSS MiB | rows written |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        database = r.detail.get("db_backend_cpu_seconds")
        upserts = r.detail.get("rollup_upserts", float(r.rows))
        lines.append(
            f"| {r.name} | {rate[r.name]:,.0f} | "
            f"{rate[r.name] / rate[ceiling.name] if ceiling else float('nan'):.2f} | "
            f"{r.cpu_seconds / r.events * 1e6:.1f} | "
            f"{'-' if database is None else f'{database / r.events * 1e6:.1f}'} | "
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
