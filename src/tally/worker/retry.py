"""Retrying what fails around the worker: which errors, how long to wait, which clock."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from tally.store.pool import DATABASE_ERRORS
from tally.telemetry.logs import Log
from tally.telemetry.metrics import Telemetry

log = Log("tally.worker")

RETRYABLE = (*DATABASE_ERRORS, KafkaError)


def error_kind(exc: BaseException) -> tuple[str, str]:
    """(component, kind) labels for the errors counter."""
    component = "kafka" if isinstance(exc, KafkaError) else "database"
    return component, type(exc).__name__


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


async def retry_until(
    stop: asyncio.Event,
    action: Callable[[], object],
    what: str,
    *,
    telemetry: Telemetry,
    max_backoff: float,
) -> None:
    """Run `action` (sync or async) until it succeeds or `stop` is set,
    retrying RETRYABLE errors with capped backoff and saying so."""
    backoff = Backoff(max_backoff)
    while not stop.is_set():
        try:
            result = action()
            if asyncio.iscoroutine(result):
                await result
            return
        except RETRYABLE as exc:
            telemetry.errors.labels(*error_kind(exc)).inc()
            delay = backoff.next_delay()
            log.warning(
                f"cannot {what} yet; retrying",
                reason=f"{type(exc).__name__}: {exc}",
                retry_in=round(delay, 2),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
