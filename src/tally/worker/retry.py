"""Retrying what fails around the worker: which errors, how often, which clock.

Transient errors (`tally.errors.is_transient`) are retried with capped
exponential backoff for as long as they last: an outage ends, and the pending
work waits in memory meanwhile. Any other error is retried at most
`permanent_attempts` times in a row (a flaky cause gets a second chance),
then `Retry.failed` raises `PermanentError` with a one-line reason and the
worker stops loudly instead of stalling its partitions forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from tally.errors import PermanentError, component_of, is_transient
from tally.telemetry.instruments import Telemetry
from tally.telemetry.logs import Log

log = Log("tally.worker")


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with jitter."""

    cap: float
    base: float = 0.2
    attempts: int = 0

    def next_delay(self) -> float:
        delay: float = min(self.cap, self.base * 2.0**self.attempts)
        self.attempts += 1
        jitter: float = random.uniform(0.5, 1.0)
        return delay * jitter

    def reset(self) -> None:
        self.attempts = 0


@dataclass(slots=True)
class Clock:
    """Injectable clocks: wall time decides event acceptance and dedup hours."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Retry:
    """Backoff plus the count of permanent failures in a row."""

    __slots__ = ("backoff", "permanent", "permanent_attempts", "telemetry")

    def __init__(self, telemetry: Telemetry, max_backoff: float, permanent_attempts: int) -> None:
        self.telemetry = telemetry
        self.backoff = Backoff(max_backoff)
        self.permanent_attempts = permanent_attempts
        self.permanent = 0

    def succeeded(self) -> None:
        self.backoff.reset()
        self.permanent = 0

    def failed(self, exc: BaseException, doing: str) -> float:
        """Count `exc` and return how long to wait before the next attempt;
        raises PermanentError once a permanent error has failed too often."""
        self.telemetry.count_error(exc)
        if isinstance(exc, PermanentError):
            raise exc
        if not is_transient(exc):
            self.permanent += 1
            if self.permanent >= self.permanent_attempts:
                raise PermanentError(
                    f"{doing} failed {self.permanent} times with an error retrying cannot mend: "
                    f"{describe(exc)}",
                    component=component_of(exc),
                    kind=type(exc).__name__,
                ) from exc
        return self.backoff.next_delay()


async def retry_until(
    stop: asyncio.Event, action: Callable[[], object], what: str, retry: Retry
) -> None:
    """Run `action` (sync or async) until it succeeds or `stop` is set,
    retrying with backoff and saying so; PermanentError when it cannot."""
    while not stop.is_set():
        try:
            result = action()
            if asyncio.iscoroutine(result):
                await result
            retry.succeeded()
            return
        except Exception as exc:
            delay = retry.failed(exc, what)
            log.warning(
                f"cannot {what} yet; retrying", reason=describe(exc), retry_in=round(delay, 2)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
