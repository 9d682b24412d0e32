"""One flush in flight while the worker keeps consuming.

PostgreSQL does its part of a flush on another core; a worker that waited
for it would spend most of its time idle. So a flush takes a `FlushBatch`
and writes it in a background task while new events go into fresh deltas.
The next flush starts only after the previous one settled, so each batch
compares-and-sets the offsets the previous one stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from tally.core.engine import Deltas
from tally.store.flush import Fenced, FlushResult
from tally.worker.checkpoint import Checkpointer
from tally.worker.partition import FlushBatch, PartitionState


class FlushPipeline:
    def __init__(
        self,
        checkpointer: Checkpointer,
        states: Callable[[], Iterable[PartitionState]],
        wall: Callable[[], float],
        *,
        new_deltas: Callable[[], Deltas],
        timeout: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.checkpointer = checkpointer
        self.states = states
        self.wall = wall
        self.new_deltas = new_deltas
        self.timeout = timeout
        self.monotonic = monotonic
        self.deltas = new_deltas()  # where consumed events go
        self._batch: FlushBatch | None = None
        self._task: asyncio.Task[FlushResult] | None = None
        self._started = 0.0

    def started_at(self) -> float | None:
        """When the flush in flight started (monotonic), None when none is."""
        return self._started if self._task is not None else None

    async def _write(self, batch: FlushBatch) -> FlushResult:
        # A flush that hangs (a lock, a silent server) is abandoned and given
        # back; if its commit did land after all, the next one is fenced and
        # the worker reloads: never counted twice.
        async with asyncio.timeout(self.timeout):
            return await self.checkpointer.write(batch)

    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def landed(self) -> bool:
        """The flush in flight has finished (settle() will not wait)."""
        return self._task is not None and self._task.done()

    def start(self, reason: str) -> bool:
        """Take the pending work as a batch and start writing it; False if none."""
        assert self._task is None, "settle the flush in flight first"
        batch = FlushBatch.take(list(self.states()), self.deltas, self.wall(), reason)
        if not batch.parts:
            return False
        self.deltas = self.new_deltas()
        self._batch = batch
        self._started = self.monotonic()
        self._task = asyncio.create_task(self._write(batch), name=f"flush-{reason}")
        return True

    async def settle(self) -> None:
        """Wait until no flush is in flight, applying each outcome once.

        The loop and a rebalance callback (another task) may both wait on
        one flush: the first to wake applies its outcome, and the other goes
        on waiting for whatever is in flight by then. On success the
        partitions move to the batch's offsets and the outcomes are counted.
        On `Fenced` the exception propagates to the one that applied it (the
        worker drops everything); on any other error the batch is given back
        to the pending work before the exception propagates.
        """
        while (task := self._task) is not None:
            batch = self._batch
            assert batch is not None
            try:
                result = await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    raise  # we were cancelled, not the flush: it stays in flight
                if self._task is task:
                    self._task = self._batch = None
                    batch.give_back(self.deltas)
                    raise
                continue
            except BaseException as exc:
                if self._task is not task:
                    continue  # the other waiter dealt with it
                self._task = self._batch = None
                if not isinstance(exc, Fenced):
                    batch.give_back(self.deltas)
                raise
            if self._task is task:
                self._task = self._batch = None
                batch.committed(result.dedup_rows, result.epochs)

    async def flush(self, reason: str) -> None:
        """Everything pending made durable before returning (revocation, shutdown)."""
        await self.settle()
        if self.start(reason):
            await self.settle()

    def drop(self) -> None:
        """Forget all pending work (after a fence): the events will be re-read."""
        assert self._task is None, "settle the flush in flight first"
        self.deltas = self.new_deltas()

    def abandon(self) -> None:
        """Cancel the flush in flight without waiting for it, and forget all
        pending work; the caller reloads every partition. If the cancelled
        transaction committed after all, the next flush is fenced: the
        database stays the truth either way."""
        task, self._task, self._batch = self._task, None, None
        if task is not None:
            task.cancel()
            task.add_done_callback(_retrieve)
        self.deltas = self.new_deltas()


def _retrieve(task: asyncio.Task[FlushResult]) -> None:
    if not task.cancelled():
        task.exception()
