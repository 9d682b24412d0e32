"""quixstreams: the peer job written the way its documentation recommends.

`python -m tally.bench.peer_quix --bootstrap B --topic T --events N --group G --dsn D`

- An `Application` with a fresh consumer group, `auto_offset_reset="earliest"`,
  its RocksDB state in a temporary directory, and its defaults otherwise:
  at-least-once, a checkpoint every 5 s, changelog topics backing the state.
- A `StreamingDataFrame` over the JSON values, with a timestamp extractor that
  reads the event's own `timestamp` (event time, as Tally does).
- Filter `eventType == "api_call"`, keep `bytes`, then
  `tumbling_window(1 day).agg(calls=Count(), bytes=Sum("bytes"))`.
- No `group_by`: windows are kept per message key, and the topic is already
  keyed by `customerId` (as producers are told to key it). `group_by` is for
  re-keying, and costs a round trip of every record through a repartition
  topic; `--group-by` measures that variant.
- `.current()`, not `.final()`: a window is final only once a later event of
  the same key passes its end plus the grace period, so when the stream stops
  the last day of every customer would never be emitted. `.current()` emits
  the running (count, sum) after every event, and the PostgreSQL sink upserts
  it on (customer_id, day): the row left is the window's value after its last
  event. The sink batches per checkpoint, so the final forced checkpoint on
  `Application.stop()` writes the last windows.
- The grace period is 35 days, Tally's default lateness: with the default (0),
  quixstreams drops every event older than the newest one already seen for
  that customer's day, and the synthetic events are not in time order. Late
  drops are counted (`late_dropped`), never silent.
- The community `PostgreSQLSink` (psycopg2), `upsert_on_primary_key=True`,
  without its metadata columns; it creates the table itself.
- `on_message_processed` counts input records and calls `Application.stop()`
  at the N-th.

The clock starts when the first assignment is done (a hook on the
application's assignment callback), as Tally's starts when its partitions
are ready, and stops when `run()` returns, after that last checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

from tally.bench.peer_common import Clock, arguments, proc_cpu_seconds, report

with warnings.catch_warnings():
    # confluent-kafka's schema-registry client, which quixstreams imports, brings
    # authlib, whose httpx integration warns on import that it is deprecated.
    # authlib's own import puts an "always" filter for its warnings first: import
    # it before putting this one in front of it.
    with contextlib.suppress(ImportError):
        importlib.import_module("authlib.deprecate")
    warnings.filterwarnings(
        "ignore", message="The httpx module is deprecated", category=DeprecationWarning
    )
    from quixstreams import Application
    from quixstreams.dataframe.windows import Count, Sum
    from quixstreams.sinks.community.postgresql import PostgreSQLSink

GRACE = timedelta(days=35)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)
TABLE = "peer_job"


@dataclass(slots=True)
class Progress:
    inputs: int = 0
    forwarded: int = 0  # into the repartition topic (group_by only)
    regrouped: int = 0  # out of it
    late: int = 0
    updates: int = 0


class TimedApplication(Application):
    """An Application whose clock starts once its first assignment is done.

    That is when its partitions are ready (stores open, committed offsets
    read), as Tally's clock starts at its "partition ready"; the assignment's
    own time is reported apart (`assign_seconds`).
    """

    clock: Clock

    def _on_assign(self, _: Any, topic_partitions: list[Any]) -> None:
        started = time.perf_counter()
        super()._on_assign(_, topic_partitions)
        if topic_partitions and self.clock.started is None:
            self.clock.detail["assign_seconds"] = round(time.perf_counter() - started, 4)
            self.clock.start()


class MeasuredSink(PostgreSQLSink):
    """The stock sink; remembers its backend's pid so its CPU can be reported."""

    backend_pid: int | None = None

    def setup(self) -> None:
        super().setup()  # type: ignore[no-untyped-call]
        client = getattr(self, "_client", None)
        if client is not None:
            self.backend_pid = int(client.get_backend_pid())


def event_time(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    """Milliseconds since the epoch of the event's `timestamp`, exactly."""
    return (datetime.fromisoformat(value["timestamp"]) - EPOCH) // MILLISECOND


def sink_for(dsn: str) -> MeasuredSink:
    url = urlsplit(dsn)
    return MeasuredSink(
        host=url.hostname or "localhost",
        port=url.port or 5432,
        dbname=url.path.lstrip("/"),
        user=unquote(url.username or ""),
        password=unquote(url.password or ""),
        table_name=TABLE,
        primary_key_columns=["customer_id", "day"],
        upsert_on_primary_key=True,
        include_metadata=False,
    )


def build(
    app: Application, topic_name: str, sink: PostgreSQLSink, group_by: bool, progress: Progress
) -> None:
    topic = app.topic(topic_name, key_deserializer="str", timestamp_extractor=event_time)
    sdf = app.dataframe(topic)
    sdf = sdf.filter(lambda event: event["eventType"] == "api_call")
    if group_by:

        def forwarded(_: Any) -> None:
            progress.forwarded += 1

        sdf = sdf.update(forwarded).group_by("customerId")

    def late(
        value: Any,
        key: Any,
        timestamp_ms: int,
        late_by_ms: int,
        start: int,
        end: int,
        store_name: str,
        topic: str,
        partition: int,
        offset: int,
    ) -> bool:
        progress.late += 1
        return False  # counted here rather than logged

    def to_row(window: dict[str, Any], key: Any, timestamp: int, headers: Any) -> dict[str, Any]:
        progress.updates += 1
        day = EPOCH + timedelta(milliseconds=window["start"])
        return {
            "customer_id": key,
            "day": day.date().isoformat(),
            "calls": window["calls"],
            "bytes": window["bytes"],
        }

    sdf = sdf.apply(lambda event: {"bytes": event["properties"].get("bytes")})
    sdf = (
        sdf.tumbling_window(timedelta(days=1), grace_ms=GRACE, on_late=late)
        .agg(calls=Count(), bytes=Sum("bytes"))
        .current()
    )
    sdf = sdf.apply(to_row, metadata=True)
    sdf.sink(sink)


def run(bootstrap: str, topic: str, events: int, group: str, dsn: str, group_by: bool) -> None:
    clock = Clock()
    progress = Progress()
    with tempfile.TemporaryDirectory(prefix="tally-peer-quix-") as state_dir:

        def processed(topic_name: str, partition: int, offset: int) -> None:
            if topic_name == topic:
                progress.inputs += 1
            else:
                progress.regrouped += 1
            if progress.inputs >= events and progress.regrouped >= progress.forwarded:
                app.stop()

        app = TimedApplication(
            broker_address=bootstrap,
            consumer_group=group,
            auto_offset_reset="earliest",
            state_dir=state_dir,
            on_message_processed=processed,
        )
        app.clock = clock
        sink = sink_for(dsn)
        build(app, topic, sink, group_by, progress)
        app.run()
        seconds = clock.elapsed()
    if progress.inputs < events:
        raise RuntimeError(f"quixstreams stopped after {progress.inputs} of {events} records")
    clock.detail.update(late_dropped=progress.late, window_updates=progress.updates)
    if sink.backend_pid is not None and (cpu := proc_cpu_seconds(sink.backend_pid)) is not None:
        clock.detail["db_backend_cpu_seconds"] = round(cpu, 3)
    report(events=progress.inputs, seconds=seconds, rows=0, clock=clock)


def main() -> None:
    args = arguments("quixstreams", database=True, group_by=True)
    run(args.bootstrap, args.topic, args.events, args.group, args.dsn, args.group_by)


if __name__ == "__main__":
    main()
