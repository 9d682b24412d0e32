"""Backfills the API server starts (`POST /backfills`): supervised child processes.

A backfill is CPU-bound for minutes or hours; in the API's own process it
would stall the event loop that answers every request. So the server runs
`tally backfill run UID --from ... | --from-offsets earliest` as a child,
with the server's Kafka, topic and decode settings in TALLY_* variables and
`TALLY_BACKFILL_DATABASE_URL` (a role with the worker's grants; default the
server's `TALLY_DATABASE_URL`) as its database. The launcher

- keeps at most one child per metric,
- reads each child's output: logs where its telemetry listens and, at its
  exit, the exit status and the reason it gave (`tally: ...`), kept in memory
  for `GET /backfills/{uid}` until the backfill has a stored row, and counted
  on `tally_api_backfill_exits_total{outcome}`,
- waits for every child (no zombies), and on `close()` (the server's
  shutdown) sends each SIGTERM: a backfill flushes what it has and exits,
  resumable by a new POST. One still running after the shutdown timeout is
  killed, which loses only its pending work. A child that comes to exist
  after `close()` began (its start was under way) is stopped the same way
  by the launch, which is then refused; one whose output can no longer be
  read (an error, a cancelled supervision) is stopped too, never left
  running undrained.

`Launcher` is what `create_app` takes; unit tests pass a fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from tally.config import Settings, env_name, without_renamed
from tally.telemetry.logs import Log

log = Log("tally.api.backfills")

EARLIEST = "earliest"
# The server's settings a backfill reads (docs/backfill.md, "From the API").
CHILD_FIELDS = (
    "kafka_bootstrap",
    "topic",
    "flush_interval",
    "max_batch",
    "dedup_window",
    "max_lateness",
    "max_future_skew",
    "max_event_bytes",
    "backfill_flush_records",
    "member_retention",
    "unique_window",
    "log_format",
    "log_level",
    "telemetry_host",
)
# Not for the child: its database is set apart, and the API's tokens stay here.
_DROPPED = {env_name(n) for n in ("api_tokens", "backfill_database_url", "with_api", "api_port")}
OUTCOMES = {0: "finished", 2: "refused", 4: "cancelled"}


@dataclass(frozen=True, slots=True)
class Exit:
    """How a child ended: its exit status and what it said last (`tally: ...`)."""

    from_spec: str
    code: int
    outcome: str  # done, stopped, refused, cancelled, failed, killed
    reason: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Launch:
    """A child of this server backfilling a metric now."""

    from_spec: str
    at: datetime
    pid: int | None  # None while it is being started


class LaunchRefused(Exception):
    """Not started: one runs already, or the server is shutting down."""


class Launcher(Protocol):
    def current(self, uid: str) -> Launch | None:
        """The child of this server backfilling `uid` now, if any."""
        ...

    def launches(self) -> dict[str, Launch]:
        """Every child of this server backfilling now, by metric uid."""
        ...

    def last_exit(self, uid: str) -> Exit | None:
        """How this server's last child for `uid` ended (None: none ended)."""
        ...

    async def launch(self, uid: str, from_spec: str) -> Launch:
        """Start backfilling `uid` from `from_spec` (EARLIEST or an ISO instant);
        LaunchRefused if one of this server runs already."""
        ...

    async def close(self) -> None:
        """Stop every child (SIGTERM) and wait for them."""
        ...


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def child_env(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a backfill child: the server's, minus what is the
    server's alone, with its settings for the backfill spelled out."""
    base = without_renamed(os.environ if environ is None else environ)
    env = {k: v for k, v in base.items() if k not in _DROPPED}
    env.update({env_name(name): _text(getattr(settings, name)) for name in CHILD_FIELDS})
    env[env_name("database_url")] = settings.backfill_database_url or settings.database_url
    # A free port, announced in the child's output (and in the server's log):
    # with --with-api the server's own process already holds telemetry_port.
    env[env_name("telemetry_port")] = "0"
    return env


def command(uid: str, from_spec: str, python: str = sys.executable) -> list[str]:
    start = ["--from-offsets", EARLIEST] if from_spec == EARLIEST else ["--from", from_spec]
    # "run UID": a metric may be called status or cancel.
    return [python, "-m", "tally", "backfill", *start, "run", uid]


MAX_LINE = 16 * 1024  # longer lines are cut: the pipe is drained whatever the child writes


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[str]:
    """The stream's lines until its end, each cut at MAX_LINE characters."""
    pending = b""
    while chunk := await stream.read(65536):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw[:MAX_LINE].decode(errors="replace").rstrip()
        pending = pending[: MAX_LINE + 1]
    if pending:
        yield pending[:MAX_LINE].decode(errors="replace").rstrip()


@dataclass
class _Child:
    launch: Launch
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        if self.process is None:
            return True  # being started
        return self.process.returncode is None or (self.task is not None and not self.task.done())


class ProcessLauncher:
    """`Launcher` with real child processes (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        python: str = sys.executable,
    ) -> None:
        self.settings = settings
        self.python = python
        self._children: dict[str, _Child] = {}
        self._exits: dict[str, Exit] = {}
        self._closing = False
        self.exits = Counter(
            "tally_api_backfill_exits",
            "Backfill processes this API server started that ended, by outcome (done,"
            " stopped, refused, cancelled, failed)",
            ["outcome"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    def current(self, uid: str) -> Launch | None:
        child = self._children.get(uid)
        return child.launch if child is not None and child.alive else None

    def launches(self) -> dict[str, Launch]:
        return {uid: c.launch for uid, c in self._children.items() if c.alive}

    def last_exit(self, uid: str) -> Exit | None:
        return self._exits.get(uid)

    async def launch(self, uid: str, from_spec: str) -> Launch:
        if self._closing:
            raise LaunchRefused("the server is shutting down")
        if self.current(uid) is not None:
            raise LaunchRefused(f"a backfill of {uid!r} runs in a process of this server already")
        # Reserved before the first await: two requests at once start one child.
        child = self._children[uid] = _Child(Launch(from_spec, datetime.now(UTC), None))
        try:
            process = await asyncio.create_subprocess_exec(
                *command(uid, from_spec, self.python),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=child_env(self.settings),
                start_new_session=True,  # a Ctrl-C on the server's terminal is the server's
            )
        except BaseException:
            del self._children[uid]
            raise
        if self._closing:  # close() ran while it started: it did not see this child
            del self._children[uid]
            await self._stop(process)
            raise LaunchRefused("the server is shutting down")
        log.info("backfill process started", uid=uid, pid=process.pid, start=from_spec)
        self._exits.pop(uid, None)
        child.launch = Launch(from_spec, child.launch.at, process.pid)
        child.process = process
        child.task = asyncio.create_task(self._supervise(uid, process), name=f"backfill {uid}")
        return child.launch

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM, then SIGKILL after the shutdown timeout; waits for it."""
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.settings.shutdown_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _supervise(self, uid: str, process: asyncio.subprocess.Process) -> None:
        tail: deque[str] = deque(maxlen=50)
        reason: list[str] = []
        assert process.stderr is not None
        drained = False
        try:
            async for line in _lines(process.stderr):
                try:
                    tail.append(line)
                    log.debug("backfill process output", uid=uid, pid=process.pid, line=line)
                    if line.startswith("tally: "):
                        reason = [line.removeprefix("tally: ")]
                    elif reason and line.startswith("  "):
                        reason.append(line)  # a refusal names each partition on a line
                    elif "telemetry listening" in line:
                        log.info("backfill process telemetry", uid=uid, pid=process.pid, line=line)
                except Exception as exc:  # one line must not stop the draining
                    log.warning("backfill process output not read", uid=uid, error=repr(exc))
            drained = True
        finally:
            if drained:
                await process.wait()
            else:
                # The reading broke (or this task was cancelled): the child,
                # its pipe no longer drained, would block; it is stopped.
                await self._stop(process)
            self._ended(uid, process, tail, reason)

    def _ended(
        self, uid: str, process: asyncio.subprocess.Process, tail: deque[str], reason: list[str]
    ) -> None:
        code = process.returncode
        assert code is not None
        last = next((line for line in reversed(tail) if line.startswith(f"backfill {uid}: ")), "")
        if code == 0:
            outcome = "done" if ": done," in last else "stopped"
        elif code < 0:
            outcome = "killed"
        else:
            outcome = OUTCOMES.get(code, "failed")
        said = "\n".join(reason) if reason else None
        spec = self._children[uid].launch.from_spec if uid in self._children else ""
        self._exits[uid] = Exit(spec, code, outcome, said, datetime.now(UTC))
        self.exits.labels(outcome).inc()
        fields: dict[str, Any] = {"uid": uid, "pid": process.pid, "code": code, "outcome": outcome}
        if outcome in ("done", "stopped", "cancelled"):
            log.info("backfill process exited", **fields, said=last or None)
        else:
            log.warning("backfill process exited", **fields, reason=said or last or None)

    async def close(self) -> None:
        self._closing = True
        children = [c for c in self._children.values() if c.process and c.task]
        if any(c.process and c.process.returncode is None for c in children):
            log.info(
                "stopping backfill processes (SIGTERM: they flush and exit)",
                pids=",".join(str(c.process.pid) for c in children if c.process),
            )
        for child in children:
            assert child.process is not None
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        tasks = [c.task for c in children if c.task is not None]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout)
        for child in children:
            assert child.process is not None
            if child.task in late and child.process.returncode is None:
                log.warning(
                    "backfill process did not stop in time; killed (its pending work is lost,"
                    " a new POST resumes it)",
                    pid=child.process.pid,
                )
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
        if late:
            await asyncio.wait(late)


def describe_exit(found: Exit) -> str:
    return (
        f"the backfill process this server started last ended {found.outcome}"
        f" (exit status {found.code}, {found.at.isoformat(timespec='seconds')})"
        + (f": {found.reason}" if found.reason else "")
    )


__all__: Sequence[str] = (
    "EARLIEST",
    "Exit",
    "Launch",
    "LaunchRefused",
    "Launcher",
    "ProcessLauncher",
    "child_env",
    "command",
    "describe_exit",
)
