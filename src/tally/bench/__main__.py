"""`python -m tally.bench core [EVENTS] [ROUNDS] [METRICS,...]` | `dedup [IDS]` | `memory [IDS]` |
`retention [MEMBERS] [WINDOW_SECONDS]` | `writepath [ROLLUPS,...] [ROUNDS] [RATES] [FLUSHES] [COMMIT_ROUNDS]` |
`ingest [EVENTS] [CONNECTIONS]` (the same as `tally bench ingest`)."""

from __future__ import annotations

import asyncio
import os
import sys

from tally.bench import core, dedup, ingest, memory, retention, writepath

USAGE = (
    "usage: python -m tally.bench core [EVENTS] [ROUNDS] [METRICS,...] | dedup [IDS] | memory [IDS]"
    " | retention [MEMBERS] [WINDOW_SECONDS]"
    " | writepath [ROLLUPS,...] [ROUNDS] [RATES] [FLUSHES] [COMMIT_ROUNDS]"
    " | ingest [EVENTS] [CONNECTIONS]"
)


class UsageError(Exception):
    """An argument the bench cannot use: answered with the usage line, exit 2."""


def main(argv: list[str]) -> int:
    try:
        return _run(argv)
    except UsageError as exc:
        print(f"{exc}\n{USAGE}", file=sys.stderr)
        return 2


def _counts(word: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in word.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise UsageError(f"METRICS must be positive integers separated by commas, got {word!r}")
    return counts


def _int(argv: list[str], index: int, default: int) -> int:
    if len(argv) <= index:
        return default
    try:
        return int(argv[index])
    except ValueError:
        raise UsageError(f"expected a whole number, got {argv[index]!r}") from None


def _run(argv: list[str]) -> int:
    if argv[:1] == ["core"]:
        counts = _counts(argv[3]) if len(argv) > 3 else core.METRIC_COUNTS
        core.main(_int(argv, 1, 200_000), _int(argv, 2, 5), counts)
        return 0
    if argv[:1] == ["memory"]:
        for kind, size in core.rollup_memory().items():
            print(f"{kind:<42} {size:7.0f} bytes per pending rollup")
        for name, size in memory.reload_memory(
            int(argv[1]) if len(argv) > 1 else 1_000_000
        ).items():
            print(f"{name:<42} {size:7.1f} bytes per dedup id")
        size = memory.dead_letter_memory()
        print(f"{'pending dead letter (beyond its record)':<42} {size:7.0f} bytes")
        return 0
    if argv[:1] == ["dedup"]:
        dsn = os.environ.get("TALLY_DATABASE_URL", "postgresql://localhost:5432/tally")
        dedup.main(dsn, int(argv[1]) if len(argv) > 1 else 200_000)
        return 0
    if argv[:1] == ["retention"]:
        dsn = os.environ.get("TALLY_DATABASE_URL", "postgresql://localhost:5432/tally")
        retention.main(
            dsn,
            int(argv[1]) if len(argv) > 1 else 4_000_000,
            float(argv[2]) if len(argv) > 2 else 5.0,
        )
        return 0
    if argv[:1] == ["writepath"]:
        writepath.main(argv[1:])
        return 0
    if argv[:1] == ["ingest"]:
        bootstrap = os.environ.get("TALLY_KAFKA_BOOTSTRAP", "localhost:9092")
        events = int(argv[1]) if len(argv) > 1 else 200_000
        connections = int(argv[2]) if len(argv) > 2 else ingest.CONNECTIONS
        print(asyncio.run(ingest.run(bootstrap, events, 7, ingest.BATCH, connections)))
        return 0
    print(USAGE, file=sys.stderr)
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
