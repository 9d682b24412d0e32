"""What the peer child processes share: their arguments and their exit report.

Each peer (`python -m tally.bench.peer_ceiling | peer_quix | peer_sql`) runs
alone in its process, so the CPU time and peak RSS it reports are its own:
`getrusage(RUSAGE_SELF)` counts every thread (librdkafka's and RocksDB's
included), and VmHWM is the process's high-water RSS. The last line it prints
to stdout carries them to the parent (`tally.bench.peers`) as JSON.

Only the standard library here, so importing this costs a child nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "TALLY-PEER-RESULT "
IDLE_SECONDS = 60.0  # a child that sees no record for this long gives up


def cpu_seconds() -> float:
    """user + sys of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_bytes() -> int:
    """VmHWM (the peak resident set) of this process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def arguments(description: str, *, database: bool, group_by: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True, help="stop after this many")
    parser.add_argument("--group", required=True, help="a fresh consumer group")
    if database:
        parser.add_argument("--dsn", required=True, help="the run's own, empty database")
    if group_by:
        parser.add_argument(
            "--group-by", action="store_true", help="re-key by customerId through a topic"
        )
    return parser.parse_args()


@dataclass(slots=True)
class Clock:
    """Starts once, when the first partition assignment is done."""

    started: float | None = None
    cpu_at_start: float = 0.0
    detail: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()
            self.cpu_at_start = cpu_seconds()

    def elapsed(self) -> float:
        if self.started is None:
            raise RuntimeError("the clock never started: no partition was assigned")
        return time.perf_counter() - self.started


def report(*, events: int, seconds: float, rows: int, clock: Clock) -> None:
    """The child's last line: read just before it exits, so CPU and RSS are complete."""
    detail = {"startup_cpu_seconds": round(clock.cpu_at_start, 3), **clock.detail}
    payload = {
        "events": events,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds(),
        "peak_rss_bytes": peak_rss_bytes(),
        "rows": rows,
        "detail": detail,
    }
    print(MARKER + json.dumps(payload), flush=True)


def proc_cpu_seconds(pid: int) -> float | None:
    """user + sys of another local process (a PostgreSQL backend), when visible."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
