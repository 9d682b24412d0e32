"""What /healthz (alive?) and /readyz (doing its job?) answer for a worker.

Liveness fails only when the worker is stuck, since a restart is what an
orchestrator does about it: the consume loop has not turned, or one flush
attempt has been in flight, for longer than `stall_timeout` (180 s by
default). Every wait inside has a shorter timeout of its own (flush_timeout,
load_timeout, database_timeout), so a healthy worker never gets there; a
hung one (a lock it cannot see, a black-holed connection, a bug) does. A
worker that is retrying an outage is alive, and not ready.

Readiness fails while the worker has not joined its group, is loading
partition state, has not flushed for `ready_flush_age` with work pending,
cannot reach PostgreSQL, has stale definitions, or is stopping on a permanent
error.
"""

from __future__ import annotations

from collections.abc import Callable

from tally.worker.retry import Clock


class Health:
    __slots__ = ("clock", "flush_started", "loop_turned", "stall_timeout", "stopping")

    def __init__(
        self,
        clock: Clock,
        stall_timeout: float,
        flush_started: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.clock = clock
        self.stall_timeout = stall_timeout
        self.loop_turned = clock.monotonic()
        # When the flush in flight started (monotonic), None when none is.
        self.flush_started = flush_started
        self.stopping = ""  # the one-line reason of a permanent error, once there is one

    def turned(self) -> None:
        """The consume loop went round once."""
        self.loop_turned = self.clock.monotonic()

    def live(self) -> tuple[bool, str]:
        now = self.clock.monotonic()
        idle = now - self.loop_turned
        if idle > self.stall_timeout:
            return False, f"the consume loop has not turned for {idle:.0f} s"
        started = self.flush_started()
        if started is not None and now - started > self.stall_timeout:
            return False, f"a flush has been in flight for {now - started:.0f} s"
        return True, "ok"
