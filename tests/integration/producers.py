"""Real producers for integration tests: Kafka's own Java client and librdkafka.

Tally's consumers meet traffic from whatever producers a company runs, not from
aiokafka. This module sends records the way those clients do, so tests can hold
the worker to every setting Kafka allows (docs/design.md §4):

- `produce_java`: ``org.apache.kafka.clients.producer.KafkaProducer`` from
  kafka-clients (``tests/integration/java/TallyTestProducer.java``, compiled
  once per test session), with any compression codec, idempotence, committed
  and aborted transactions, headers, null keys and values, explicit partitions;
- `produce_librdkafka`: confluent-kafka's ``Producer`` at librdkafka's defaults;
- `java_partition` / `librdkafka_partition`: the partition each client's
  default partitioner picks for a key;
- `read_all` / `read_batches`: what a consumer then sees, record by record, or
  batch by batch as stored in the log (codec, transactional, control).

The jars come from ``$TALLY_KAFKA_LIBS_DIR``, else ``$TALLY_LOCAL_DIR/kafka/libs``,
else ``<repo>/.local/kafka/libs``: where ``deploy/local/kafka.sh start`` puts them.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from confluent_kafka import KafkaError, Message, Producer

ROOT = Path(__file__).resolve().parents[2]
JAVA_DIR = Path(__file__).resolve().parent / "java"
JAVA_SOURCE = JAVA_DIR / "TallyTestProducer.java"
JAVA_LOG_CONFIG = JAVA_DIR / "log4j2.properties"

Codec = Literal["none", "gzip", "snappy", "lz4", "zstd"]
CODECS: tuple[Codec, ...] = ("none", "gzip", "snappy", "lz4", "zstd")
# The codec id in a record batch's attributes (Kafka's CompressionType.id).
CODEC_IDS: Mapping[Codec, int] = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
TransactionOutcome = Literal["commit", "abort"]
IsolationLevel = Literal["read_committed", "read_uncommitted"]

# Every wait is bounded: the producer's own (blocking for metadata, delivery)
# stay below the harness's deadline, so a stuck run fails with the client's reason.
_JAVA_DEFAULTS = {"linger.ms": "5", "max.block.ms": "30000", "delivery.timeout.ms": "60000"}
_DEFAULT_TIMEOUT_S = 120.0
# Jars the producer needs from Kafka's lib folder, by file-name prefix.
_REQUIRED_JARS = ("kafka-clients-", "lz4-java-", "snappy-java-", "zstd-jni-", "slf4j-api-")
# With these, the client logs WARN and above to stderr (kept in the result and
# shown in errors); without them slf4j falls back to no logging.
_LOGGING_JARS = ("log4j-api-", "log4j-core-", "log4j-slf4j2-impl-")


@dataclass(frozen=True, kw_only=True)
class Record:
    """One record to produce. ``None`` key: the partitioner's choice for unkeyed
    records; ``None`` value: a tombstone; ``partition``: overrides the partitioner."""

    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes | None]] = ()
    partition: int | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Delivery:
    """Where the broker stored one record: it is in the log at (partition, offset)."""

    record: Record
    partition: int
    offset: int
    transaction: int | None = None  # index into `transactions`, None outside one
    aborted: bool = False  # in an aborted transaction: read_committed skips it


@dataclass(frozen=True)
class Produced:
    """What a producer reported: one `Delivery` per record, in the order given."""

    deliveries: tuple[Delivery, ...]
    log: str = ""  # the client's own log lines (the JVM's WARN and above)

    @property
    def visible(self) -> list[Delivery]:
        """The records a read_committed consumer sees: all but the aborted."""
        return [d for d in self.deliveries if not d.aborted]

    @property
    def aborted(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.aborted]


class ProducerError(RuntimeError):
    """A producer could not deliver every record."""


class JavaProducerError(ProducerError):
    """The Java producer failed; the message ends with its stderr."""

    def __init__(self, message: str, *, returncode: int | None, stderr: str) -> None:
        super().__init__(f"{message}\n--- java stderr ---\n{stderr.strip() or '(empty)'}")
        self.returncode = returncode
        self.stderr = stderr


# --- the Java producer ---------------------------------------------------------------


def kafka_libs_dir() -> Path:
    """The folder of Kafka's jars (see the module docstring for the search order)."""
    if configured := os.environ.get("TALLY_KAFKA_LIBS_DIR"):
        return Path(configured)
    local = Path(os.environ.get("TALLY_LOCAL_DIR") or ROOT / ".local")
    return local / "kafka" / "libs"


def _jars(libs: Path) -> list[Path]:
    if not libs.is_dir():
        raise JavaProducerError(
            f"no Kafka jars: {libs} is not a folder; run `deploy/local/kafka.sh start` "
            "(it resolves them) or set TALLY_KAFKA_LIBS_DIR",
            returncode=None,
            stderr="",
        )
    names = sorted(p.name for p in libs.glob("*.jar"))
    chosen: list[Path] = []
    for prefix in _REQUIRED_JARS:
        found = [
            n for n in names if n.startswith(prefix) and n[len(prefix) : len(prefix) + 1].isdigit()
        ]
        if len(found) != 1:
            raise JavaProducerError(
                f"expected one {prefix}<version>.jar in {libs}, found {found or 'none'}",
                returncode=None,
                stderr="",
            )
        chosen.append(libs / found[0])
    logging = [
        [n for n in names if n.startswith(p) and n[len(p) : len(p) + 1].isdigit()]
        for p in _LOGGING_JARS
    ]
    if all(len(found) == 1 for found in logging):
        chosen.extend(libs / found[0] for found in logging)
    return chosen


@dataclass(frozen=True)
class JavaProgram:
    """The compiled producer and how to launch it."""

    options: tuple[str, ...]  # the JVM's options for every run
    classpath: str
    class_data: Path  # the AppCDS archive of the producer's classes
    build_seconds: float  # javac + jar + archive, once per session

    def command(self, script: Path, tmp: Path, *, dump_class_data: bool = False) -> list[str]:
        """``java ... TallyTestProducer script``; the codecs' native libraries
        unpack into `tmp` (java.io.tmpdir), which the caller removes."""
        # -Xshare:auto (the default) ignores an archive the JVM finds stale.
        archive = "ArchiveClassesAtExit" if dump_class_data else "SharedArchiveFile"
        return [
            "java",
            *self.options,
            f"-XX:{archive}={self.class_data}",
            f"-Djava.io.tmpdir={tmp}",
            "-cp",
            self.classpath,
            "TallyTestProducer",
            str(script),
        ]


_program_lock = threading.Lock()
_program: JavaProgram | None = None


def _run_build_step(argv: Sequence[str], what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_DEFAULT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise JavaProducerError(f"{what} failed: {error}", returncode=None, stderr="") from error
    if done.returncode != 0:
        raise JavaProducerError(
            f"{what} failed (exit {done.returncode}): {' '.join(argv)}",
            returncode=done.returncode,
            stderr=done.stderr + done.stdout,
        )


def _build_java_program() -> JavaProgram:
    """javac the producer into a per-session folder, jar it, and dump a class-data
    archive (AppCDS) of a run that builds and closes a producer: later JVMs map
    those classes instead of loading them, which halves each run's start-up."""
    started = time.monotonic()
    jars = _jars(kafka_libs_dir())
    build = Path(tempfile.mkdtemp(prefix="tally-java-producer-"))
    atexit.register(shutil.rmtree, build, True)
    classes, jar = build / "classes", build / "tally-test-producer.jar"
    compile_classpath = os.pathsep.join(map(str, jars))
    _run_build_step(
        [
            "javac",
            "-Xlint:all",
            "-Werror",
            "-d",
            str(classes),
            "-cp",
            compile_classpath,
            str(JAVA_SOURCE),
        ],
        "compiling the Java producer",
    )
    # A jar, not the classes folder: the JVM archives classes only from jars.
    _run_build_step(["jar", "cf", str(jar), "-C", str(classes), "."], "jarring the Java producer")
    logging = (
        f"-Dlog4j2.configurationFile={JAVA_LOG_CONFIG}"
        if any(j.name.startswith("log4j-core-") for j in jars)
        else "-Dslf4j.provider=org.slf4j.helpers.NOP_FallbackServiceProvider"
    )
    program = JavaProgram(
        # C1 only: these runs are short, the JIT's second tier would not pay off;
        # no hsperfdata files; the JVM's own messages only when they are errors.
        options=(
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            "-Xlog:disable",
            "-Xlog:all=error:stderr",
            logging,
        ),
        classpath=os.pathsep.join(map(str, [jar, *jars])),
        class_data=build / "classes.jsa",
        build_seconds=0.0,
    )
    # Building and closing a producer needs no broker: nothing connects before a send.
    warm_up = build / "warm-up.script"
    warm_up.write_text(_script({"bootstrap.servers": "127.0.0.1:9"}, []), encoding="ascii")
    _run_build_step(
        program.command(warm_up, build, dump_class_data=True),
        "archiving the Java producer's classes",
    )
    return dataclasses.replace(program, build_seconds=time.monotonic() - started)


def java_program() -> JavaProgram:
    """The compiled producer, built on first use (thread-safe, once per process)."""
    global _program
    with _program_lock:
        if _program is None:
            _program = _build_java_program()
        return _program


def _b64(data: bytes | str | None) -> str:
    if data is None:
        return "-"
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _script(config: Mapping[str, str], steps: Sequence[str]) -> str:
    lines = [f"config\t{_b64(k)}\t{_b64(v)}" for k, v in config.items()]
    return "\n".join([*lines, *steps, ""])


def _record_line(record: Record) -> str:
    fields = [
        "record",
        "-" if record.partition is None else str(record.partition),
        "-" if record.timestamp_ms is None else str(record.timestamp_ms),
        _b64(record.key),
        _b64(record.value),
    ]
    for name, value in record.headers:
        fields += [_b64(name), _b64(value)]
    return "\t".join(fields)


async def produce_java(
    bootstrap: str,
    topic: str,
    records: Sequence[Record] = (),
    *,
    compression: Codec = "none",
    idempotent: bool = True,
    transactions: Sequence[tuple[TransactionOutcome, Sequence[Record]]] | None = None,
    transactional_id: str | None = None,
    extra_config: Mapping[str, str] | None = None,
    timeout: float = _DEFAULT_TIMEOUT_S,
) -> Produced:
    """Send `records` with Kafka's Java producer, in one JVM, and wait for every ack.

    With `transactions` (and no `records`), a transactional producer runs each
    ``(outcome, records)`` in turn as its own transaction, then commits or aborts
    it: aborted records are flushed first, so they are in the log, marked aborted.
    `extra_config` (producer settings) wins over everything this function sets.
    """
    if transactions is not None and records:
        raise ValueError("a transactional producer sends only inside transactions")
    if transactions is not None and not idempotent:
        raise ValueError("transactions need idempotence")
    config = {
        "bootstrap.servers": bootstrap,
        "client.id": "tally-test-java",
        "compression.type": compression,
        "enable.idempotence": "true" if idempotent else "false",
        "acks": "all",
        **_JAVA_DEFAULTS,
    }
    if transactions is not None:
        config["transactional.id"] = transactional_id or f"tally-test-{uuid.uuid4().hex[:16]}"
    config.update(extra_config or {})

    steps = [f"topic\t{_b64(topic)}"]
    sent: list[tuple[Record, int | None, bool]] = []
    if transactions is None:
        steps += [_record_line(r) for r in records]
        sent += [(r, None, False) for r in records]
    else:
        for index, (outcome, batch) in enumerate(transactions):
            if outcome not in ("commit", "abort"):
                raise ValueError(f"transaction {index}: {outcome!r} is not 'commit' or 'abort'")
            steps += ["begin", *(_record_line(r) for r in batch), outcome]
            sent += [(r, index, outcome == "abort") for r in batch]

    program = await asyncio.to_thread(java_program)
    with tempfile.TemporaryDirectory(prefix="tally-java-run-") as run_dir:
        script = Path(run_dir) / "records.script"
        script.write_text(_script(config, steps), encoding="ascii")
        stdout, stderr, returncode = await _run(
            program.command(script, Path(run_dir)), timeout, cwd=run_dir
        )
    if returncode != 0:
        raise JavaProducerError(
            f"the Java producer exited with status {returncode}",
            returncode=returncode,
            stderr=stderr,
        )
    acks: dict[int, tuple[int, int]] = {}
    lines = stdout.splitlines()
    if not lines or lines[-1] != "done":
        raise JavaProducerError(
            f"the Java producer exited 0 without its 'done' line; stdout: {stdout[-2000:]!r}",
            returncode=returncode,
            stderr=stderr,
        )
    for line in lines[:-1]:
        match line.split("\t"):
            case ["delivered", index, partition, offset]:
                acks[int(index)] = (int(partition), int(offset))
            case _:
                raise JavaProducerError(
                    f"unexpected output line {line!r}", returncode=returncode, stderr=stderr
                )
    if sorted(acks) != list(range(len(sent))):
        raise JavaProducerError(
            f"acknowledged {len(acks)} of {len(sent)} records", returncode=returncode, stderr=stderr
        )
    deliveries = tuple(
        Delivery(record, *acks[i], transaction=transaction, aborted=aborted)
        for i, (record, transaction, aborted) in enumerate(sent)
    )
    return Produced(deliveries, log=stderr)


async def _run(argv: Sequence[str], timeout: float, cwd: str) -> tuple[str, str, int]:
    """Run a child process to completion within `timeout`; killed past it."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        out, err = await process.communicate()
        raise JavaProducerError(
            f"the Java producer did not finish within {timeout}s (killed)",
            returncode=process.returncode,
            stderr=err.decode(errors="replace"),
        ) from None
    assert process.returncode is not None
    return out.decode(errors="replace"), err.decode(errors="replace"), process.returncode


# --- librdkafka ----------------------------------------------------------------------


async def produce_librdkafka(
    bootstrap: str,
    topic: str,
    records: Sequence[Record],
    *,
    config: Mapping[str, str | int | bool] | None = None,
    timeout: float = _DEFAULT_TIMEOUT_S,
) -> Produced:
    """Send `records` with librdkafka (confluent-kafka) at its default settings
    (`config` overrides them) and wait for every delivery report."""
    return await asyncio.to_thread(_produce_librdkafka, bootstrap, topic, records, config, timeout)


def _produce_librdkafka(
    bootstrap: str,
    topic: str,
    records: Sequence[Record],
    config: Mapping[str, str | int | bool] | None,
    timeout: float,
) -> Produced:
    producer = Producer({"bootstrap.servers": bootstrap, **(config or {})})
    acks: dict[int, tuple[int, int]] = {}
    errors: list[str] = []

    def report(index: int) -> Any:
        def on_delivery(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                errors.append(f"record {index}: {error}")
            else:
                acks[index] = (message.partition(), message.offset())

        return on_delivery

    deadline = time.monotonic() + timeout
    for index, record in enumerate(records):
        options: dict[str, Any] = {"on_delivery": report(index)}
        if record.partition is not None:
            options["partition"] = record.partition
        if record.timestamp_ms is not None:
            options["timestamp"] = record.timestamp_ms
        if record.headers:
            options["headers"] = list(record.headers)
        while True:
            try:
                producer.produce(topic, value=record.value, key=record.key, **options)
                break
            except BufferError:  # the local queue is full: serve delivery reports
                if time.monotonic() > deadline:
                    raise ProducerError(f"librdkafka's queue stayed full for {timeout}s") from None
                producer.poll(0.1)
    left = producer.flush(max(0.0, deadline - time.monotonic()))
    if left:
        producer.purge()
        producer.flush(5)
        raise ProducerError(f"librdkafka: {left} records undelivered after {timeout}s")
    if errors:
        raise ProducerError("librdkafka: " + "; ".join(errors[:10]))
    return Produced(tuple(Delivery(r, *acks[i]) for i, r in enumerate(records)))


# --- partitioners --------------------------------------------------------------------


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: the 32-bit hash, as Java's signed int."""
    m, seed = 0x5BD1E995, 0x9747B28C
    length = len(data)
    h = (seed ^ length) & 0xFFFFFFFF
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = data[whole:]
    if tail:
        for shift, byte in reversed(list(enumerate(tail))):
            h ^= byte << (8 * shift)
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java producer picks for a non-null key
    (``BuiltInPartitioner.partitionForKey``: ``toPositive(murmur2(key)) % n``).
    An empty key is hashed too; only a null key is left to the sticky partitioner."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def librdkafka_partition(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner (``consistent_random``) picks:
    ``crc32(key) % n``. It spreads empty and null keys at random, so those have none."""
    if not key:
        raise ValueError("librdkafka's consistent_random places an empty key at random")
    return zlib.crc32(key) % partitions


# --- reading back --------------------------------------------------------------------


async def read_all(
    bootstrap: str,
    topic: str,
    *,
    isolation_level: IsolationLevel = "read_committed",
    timeout: float = 60.0,
) -> list[Any]:
    """Every record an aiokafka consumer with `isolation_level` reads from the
    start of each partition up to its end offset as of the call (for
    read_committed: the last stable offset), as aiokafka ``ConsumerRecord``s in
    (partition, offset) order. Raises TimeoutError if the end is not reached."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation_level,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=30000,
    )
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= ends[tp] for tp in tps):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: at {positions} after {timeout}s, the end is {ends}")
            batch = await consumer.getmany(*tps, timeout_ms=200)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise LookupError(f"topic {topic} not found")
    return sorted(partitions)


@dataclass(frozen=True)
class StoredBatch:
    """One record batch as the broker stores and serves it (v2 format)."""

    partition: int
    base_offset: int
    next_offset: int
    codec: Codec
    transactional: bool
    control: bool  # a transaction's commit or abort marker
    producer_id: int

    @property
    def offsets(self) -> int:
        """How many offsets the batch spans (its records, unless compacted)."""
        return self.next_offset - self.base_offset


async def read_batches(bootstrap: str, topic: str, *, timeout: float = 60.0) -> list[StoredBatch]:
    """The record batches of every partition of `topic`, from the start to the
    high watermark, with Fetch requests of our own (the consumer hides batches):
    proof of what a producer really wrote, e.g. several records in one zstd batch."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await client.bootstrap()
    try:
        client.add_topic(topic)
        await client.force_metadata_update()
        partitions = sorted(client.cluster.partitions_for_topic(topic) or ())
        if not partitions:
            raise LookupError(f"topic {topic} not found")
        codecs = {v: k for k, v in CODEC_IDS.items()}
        batches: list[StoredBatch] = []
        deadline = time.monotonic() + timeout
        for partition in partitions:
            leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            offset, high_watermark = 0, 1
            while offset < high_watermark:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic}/{partition}: at offset {offset} after {timeout}s")
                request = FetchRequest(
                    max_wait_time=100,
                    min_bytes=1,
                    max_bytes=4 * 1024 * 1024,
                    isolation_level=0,
                    topics=[(topic, [(partition, offset, 4 * 1024 * 1024)])],
                )
                response = await client.send(leader, request)
                [(_, [(_, error_code, high_watermark, *data)])] = response.topics
                if error_code != 0:
                    raise for_code(error_code)(f"fetching {topic}/{partition} at {offset}")
                records = MemoryRecords(data[-1])
                while records.has_next():
                    batch = records.next_batch()
                    if batch.next_offset <= offset:
                        continue
                    batches.append(
                        StoredBatch(
                            partition=partition,
                            base_offset=batch.base_offset,
                            next_offset=batch.next_offset,
                            codec=codecs[batch.compression_type],
                            transactional=batch.is_transactional,
                            control=batch.is_control_batch,
                            producer_id=batch.producer_id,
                        )
                    )
                    offset = batch.next_offset
    finally:
        await client.close()
    return batches
