"""Where a worker starts each metric, per partition, until a flush stores it
(`PartitionState.starts`, `tally.worker.checkpoint.FlushBatch`; docs/backfill.md)."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from tally.core.engine import Deltas, new_core
from tally.store.flush import DedupRows
from tally.worker.checkpoint import FlushBatch
from tally.worker.partition import PartitionState


def ready(partition: int, stored: int, started: set[str], live: list[str]) -> PartitionState:
    state = PartitionState(TopicPartition("events", partition), 0)
    state.loaded(stored, None, started, live)
    return state


def no_rows(batch: FlushBatch) -> dict[tuple[str, int], DedupRows]:
    return {(p.state.topic, p.state.partition): DedupRows(None, None) for p in batch.parts}


def test_metrics_known_at_load_start_at_the_stored_offset_unless_stored() -> None:
    state = ready(0, 40, {"a"}, ["a", "b"])
    assert state.starts == {"b": 40}


def test_after_a_log_reset_a_metric_starts_where_consuming_resumes() -> None:
    """The topic was recreated: stored 1000, the log holds 0..; the worker
    counts the metric live from the beginning (-1), so a backfill has nothing
    to count (a start of 1000 would have it count 0..999 again)."""
    state = PartitionState(TopicPartition("events", 0), 0)
    state.loaded(1000, -1, set(), ["m"])
    assert state.starts == {"m": -1}
    state = PartitionState(TopicPartition("events", 1), 0)
    state.loaded(1000, 30, set(), ["m"])
    assert state.starts == {"m": 30}


def test_a_metric_added_later_starts_at_the_next_record_and_only_once() -> None:
    state = ready(0, 40, set(), [])
    state.next_offset = 55  # consumed 40..54 without the metric
    state.metrics_added(["m"])
    state.next_offset = 70
    state.metrics_added(["m"])  # already pending: its start stays
    assert state.starts == {"m": 55}


def test_an_idle_partition_with_a_start_is_flushed_without_moving_and_then_not_again() -> None:
    idle = ready(0, 40, set(), ["m"])
    busy = ready(1, 10, {"m"}, ["m"])
    busy.next_offset = 12
    untouched = ready(2, 5, {"m"}, ["m"])
    batch = FlushBatch.take([idle, busy, untouched], Deltas(new_core()), 0.0, "interval")
    parts = {p.state.partition: p for p in batch.parts}
    assert set(parts) == {0, 1}
    assert (parts[0].expected, parts[0].target, parts[0].starts) == (40, 40, {"m": 40})
    assert parts[1].starts == {}
    batch.committed(no_rows(batch))
    assert idle.started == {"m"}
    assert idle.starts == {}
    assert FlushBatch.take([idle, untouched], Deltas(new_core()), 0.0, "interval").parts == []


def test_a_failed_flush_gives_its_starts_back_and_the_earlier_one_wins() -> None:
    state = ready(0, 40, set(), ["m"])
    batch = FlushBatch.take([state], Deltas(new_core()), 0.0, "interval")
    state.next_offset = 60
    state.metrics_added(["m"])  # not stored yet, so pending again, later
    batch.give_back(Deltas(new_core()))
    assert state.starts == {"m": 40}
    assert state.started == set()
