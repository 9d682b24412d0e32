"""Where each partition resumes, and the records it cannot resume from.

A stored offset normally lies inside the partition's log, [log start, log
end]. Two things put it outside, and neither may pass in silence:

- retention deleted records the fleet never read (the stored offset is below
  the log start): they are lost to Tally. Consuming resumes at the log start;
- the log restarted under the stored position (above the log end): the topic
  was deleted and created again, or an unclean leader election truncated it.
  Consuming resumes at the log start, so the new records count; records that
  were counted before a truncation are dropped as duplicates while their ids
  are in the dedup window.

Both are counted in `tally_offset_gaps_total{kind}` (records lost, or offsets
the stored position was ahead by), logged as errors and alerted on; the
operator's part is in docs/operations.md. The same holds while consuming:
`OffsetWatch` (worker/intake.py) notes fetches that do not continue a
partition's position, and `check_jumps` tells retention from the normal gaps
left by transaction markers and compaction.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from tally.telemetry.instruments import Telemetry
from tally.telemetry.logs import Log
from tally.worker.intake import OffsetWatch

log = Log("tally.worker")


def _gap(telemetry: Telemetry, tp: TopicPartition, kind: str, records: int, **fields: int) -> None:
    telemetry.offset_gaps.labels(tp.topic, str(tp.partition), kind).inc(records)
    if kind == "retention":
        what = "records were deleted by retention before Tally read them; they are not counted"
    else:
        what = "the log restarted below the stored position (topic recreated or truncated)"
    log.error(
        f"offset gap on {tp.topic}[{tp.partition}]: {what}",
        kind=kind,
        records=records,
        offsets=" ".join(f"{name}={value}" for name, value in fields.items()),
    )


async def resume_points(
    consumer: AIOKafkaConsumer, stored: Mapping[TopicPartition, int], telemetry: Telemetry
) -> dict[TopicPartition, int]:
    """The offset each partition resumes from (-1: from the beginning),
    counting every stored offset that lies outside its log."""
    known = [tp for tp, offset in stored.items() if offset >= 0]
    starts = await consumer.beginning_offsets(known) if known else {}
    ends = await consumer.end_offsets(known) if known else {}
    points: dict[TopicPartition, int] = {}
    for tp, offset in stored.items():
        if offset < 0:
            points[tp] = -1
            continue
        start, end = starts[tp], ends[tp]
        if offset < start:
            _gap(telemetry, tp, "retention", start - offset, stored=offset, log_start=start)
            points[tp] = start
        elif offset > end:
            _gap(telemetry, tp, "reset", offset - end, stored=offset, log_end=end, log_start=start)
            points[tp] = start
        else:
            points[tp] = offset
    return points


async def check_jumps(consumer: AIOKafkaConsumer, watch: OffsetWatch, telemetry: Telemetry) -> None:
    """Count the fetches noted by `watch` that lost records, then forget them all."""
    jumps, watch.jumps = watch.jumps, {}
    resets, watch.resets = watch.resets, {}
    for tp, (expected, got) in resets.items():
        _gap(telemetry, tp, "reset", expected - got, position=expected, fetched=got)
    if not jumps:
        return
    starts = await consumer.beginning_offsets(list(jumps))
    for tp, (expected, got) in jumps.items():
        start = starts.get(tp, 0)
        if start > expected:  # a jump past records that no longer exist
            _gap(telemetry, tp, "retention", min(start, got) - expected, position=expected)
