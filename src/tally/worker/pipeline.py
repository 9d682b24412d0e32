"""One flush in flight while the worker keeps consuming.

PostgreSQL does its part of a flush on another core; a worker that waited
for it would spend most of its time idle. So a flush takes a `FlushBatch`
and writes it in a background task while new events go into fresh deltas.
The next flush starts only after the previous one settled, so each batch
compares-and-sets the offsets the previous one stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from tally.core.aggregate import Deltas
from tally.store.flush import Fenced, FlushResult
from tally.worker.checkpoint import Checkpointer
from tally.worker.partition import FlushBatch, PartitionState


class FlushPipeline:
    def __init__(
        self,
        checkpointer: Checkpointer,
        states: Callable[[], Iterable[PartitionState]],
        wall: Callable[[], float],
    ) -> None:
        self.checkpointer = checkpointer
        self.states = states
        self.wall = wall
        self.deltas = Deltas()  # where consumed events go
        self._batch: FlushBatch | None = None
        self._task: asyncio.Task[FlushResult] | None = None

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
        self.deltas = Deltas()
        self._batch = batch
        self._task = asyncio.create_task(self.checkpointer.write(batch), name=f"flush-{reason}")
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
                batch.committed(result.dedup_rows)

    async def flush(self, reason: str) -> None:
        """Everything pending made durable before returning (revocation, shutdown)."""
        await self.settle()
        if self.start(reason):
            await self.settle()

    def drop(self) -> None:
        """Forget all pending work (after a fence): the events will be re-read."""
        assert self._task is None, "settle the flush in flight first"
        self.deltas = Deltas()
