"""`tally explain`: what the live metrics make of one event (a file, stdin, or
the record at --topic/--partition/--offset),
and whether its id is already in the stored dedup window of its partition.
Metrics are judged as a worker judges them (tally.ingest.explain_inputs): one
no worker runs is shown as not running, with why. A --partition the topic
does not have is refused."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import orjson
from aiokafka.errors import KafkaError

from tally.cli.options import UserError, settings_from
from tally.config import Settings
from tally.core.explain import explain as explain_event
from tally.core.explain import render
from tally.ingest.explain_inputs import PartitionOutOfRange, check_partition, worker_metrics
from tally.ingest.service import decode_limits
from tally.kafka.records import fetch_record
from tally.store.dedup_lookup import dedup_state, window_unread
from tally.store.pool import database

FIELDS = [
    "database_url",
    "kafka_bootstrap",
    "topic",
    "dedup_window",
    "max_event_bytes",
    "max_lateness",
    "max_future_skew",
]


async def _from_kafka(settings: Settings, topic: str, partition: int | None, offset: int) -> bytes:
    if partition is None:
        raise UserError("--offset needs --partition (and --topic)")
    try:
        value = await asyncio.wait_for(
            fetch_record(settings.kafka_bootstrap, topic, partition, offset), timeout=30
        )
    except (KafkaError, OSError, LookupError, TimeoutError) as exc:
        raise UserError(f"cannot fetch {topic}[{partition}]@{offset}: {exc}") from None
    return value if value is not None else b""


async def explain(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    topic = settings.topic[0]  # --topic: the first is the one explained
    if args.offset is not None:
        if args.file is not None:
            raise UserError("give a file or --offset, not both")
        # As stored: the worker decodes the record's bytes unstripped.
        raw = await _from_kafka(settings, topic, args.partition, args.offset)
    elif args.file in (None, "-"):
        raw = sys.stdin.buffer.read().strip()  # a terminal's trailing newline
    else:
        try:
            raw = Path(args.file).read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        raw = raw.strip()  # a file's trailing newline
    now = time.time()
    limits = decode_limits(settings)
    async with database(settings) as connection:
        # --offset fetched the record already; else Kafka is asked about the
        # partition only when the window will be read (store/dedup_lookup.py).
        if (
            args.partition is not None
            and args.offset is None
            and await window_unread(connection, settings, raw, now, limits) is None
        ):
            try:
                await check_partition(settings.kafka_bootstrap, topic, args.partition)
            except PartitionOutOfRange as exc:
                raise UserError(f"--partition: {exc}") from None
        metrics, not_running = await worker_metrics(connection)
        dedup = await dedup_state(connection, settings, raw, now, limits, topic, args.partition)
    answer = explain_event(raw, metrics, now, limits, dedup, not_running)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render(answer))
    return 0
