"""What each `tally` subcommand does; thin, over the store, Kafka and worker."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import yaml
from prometheus_client import CollectorRegistry

from tally.cli.options import UserError, settings_from
from tally.config import Settings
from tally.contracts.metric import (
    FieldError,
    MetricDefinitionError,
    UsageMetricDefinition,
    parse_metric,
)
from tally.kafka.clients import new_producer
from tally.store import definitions as store
from tally.store.migrate import migrate as run_migrations
from tally.store.pool import close_pool, database
from tally.synthetic import Workload, events
from tally.telemetry import logs
from tally.telemetry.instruments import Telemetry

_log = logs.Log("tally.cli")


def stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set: a graceful stop instead of a kill."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _setup_logs(settings: Settings) -> None:
    logs.setup(settings.log_level, settings.log_format == "json")


async def migrate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    _setup_logs(settings)
    async with database(settings) as connection:
        applied = await run_migrations(connection)
    if applied:
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
    else:
        print("schema is up to date")
    return 0


def read_definitions(path: str) -> list[UsageMetricDefinition]:
    """Definitions from a YAML or JSON file: one, a list, or {metrics: [...]}."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UserError(
            f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}"
        ) from None
    if isinstance(document, dict) and "metrics" in document:
        extra = sorted(set(document) - {"metrics"})
        if extra:
            raise UserError(
                f"{path}: unknown top-level field(s) {', '.join(extra)}; expected only 'metrics'"
            )
        document = document["metrics"]
    items = document if isinstance(document, list) else [document]
    if not items:
        raise UserError(f"{path} holds no metric definitions")
    parsed, errors = [], []
    for number, item in enumerate(items, start=1):
        try:
            parsed.append(parse_metric(item))
        except MetricDefinitionError as exc:
            uid = f" ({exc.uid})" if exc.uid else ""
            errors += [FieldError(f"#{number}{uid} {e.field}", e.reason) for e in exc.errors]
    if errors:
        raise MetricDefinitionError(errors)
    return parsed


async def metrics_apply(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    _setup_logs(settings)
    definitions = read_definitions(args.file)
    async with database(settings) as connection:
        await run_migrations(connection)
        changes = await store.apply_definitions(connection, definitions, dry_run=args.dry_run)
    prefix = "would " if args.dry_run else ""
    for change in changes:
        print(prefix + change.describe())
    return 0


async def metrics_list(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    _setup_logs(settings)
    async with database(settings) as connection:
        metrics = await store.list_metrics(connection, include_deleted=args.deleted)
    if args.format == "json":
        print(
            json.dumps(
                [m.model_dump(mode="json", by_alias=True, exclude_none=True) for m in metrics],
                indent=2,
            )
        )
        return 0
    rows = [
        (
            m.uid,
            m.aggregation_type.value,
            m.event_type or "(external)",  # an EXTERNAL metric has none
            m.grouping_property or "-",
            ",".join(u.value for u in m.time_units),
            m.timezone,
            "deleted" if m.is_deleted else "live",
        )
        for m in metrics
    ]
    print_table(
        ("uid", "aggregation", "eventType", "group by", "time units", "timezone", "state"), rows
    )
    return 0


async def metrics_delete(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    _setup_logs(settings)
    async with database(settings) as connection:
        deleted = await store.delete_metric(connection, args.uid)
    if not deleted:
        raise UserError(f"no live metric with uid {args.uid!r}")
    print(f"deleted {args.uid} (its values are kept)")
    return 0


def print_table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    cells = [header, *[tuple(str(c) for c in row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


async def run(args: argparse.Namespace) -> int:
    from tally.kafka.clients import ensure_topics, missing_topics
    from tally.store.migrate import check_schema
    from tally.worker.build import build_worker

    settings = settings_from(args)
    _setup_logs(settings)
    # Handlers first: a SIGTERM during start-up must end in a clean exit too.
    stop = stop_on_signals()
    async with database(settings) as connection:
        if settings.migrate:
            await run_migrations(connection)
        else:
            await check_schema(connection)  # --no-migrate: a role without DDL rights
    if settings.create_topics:
        await ensure_topics(
            settings.kafka_bootstrap, {t: settings.topic_partitions for t in settings.topic}
        )
    else:
        missing = await missing_topics(settings.kafka_bootstrap, list(settings.topic))
        if missing:
            raise UserError(
                f"topic(s) {', '.join(missing)} do not exist on {settings.kafka_bootstrap}: "
                "create them, fix TALLY_TOPIC, or pass --create-topics"
            )
    await ensure_topics(settings.kafka_bootstrap, {settings.dead_letter_topic: 1})
    registry = CollectorRegistry()  # the worker's and POST /events' counters, on one /metrics
    worker = await build_worker(settings, registry=registry)
    api = None
    try:
        if settings.with_api:
            api = HostedApi(worker.telemetry, stop)
            api.start(settings, registry)
        await worker.run(stop)
    finally:
        stop.set()
        if api is not None:
            await api.stopped()
        await close_pool(worker.pool)
    if api is not None and api.failure is not None:
        raise UserError(f"the HTTP API stopped: {api.failure}")
    return 0


class HostedApi:
    """The HTTP API inside `tally run --with-api`, supervised: if it fails, or
    ends while the worker is not stopping, it says so (one log line, an
    `api` error in tally_errors_total) and stops the worker, which then exits
    with status 2 (docs/decisions.md, issue 17)."""

    def __init__(self, telemetry: Telemetry, stop: asyncio.Event) -> None:
        self.telemetry = telemetry
        self.stop = stop
        self.task: asyncio.Task[None] | None = None
        self.failure: str | None = None

    def start(self, settings: Settings, registry: CollectorRegistry) -> None:
        from tally.api.server import serve

        self.task = asyncio.create_task(
            serve(settings, self.stop, apply_migrations=False, registry=registry),  # migrated
            name="api",
        )
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        stopping = self.stop.is_set()
        self.stop.set()  # the worker never goes on without the API it was asked for
        if error is None and (task.cancelled() or stopping):
            return  # stopped with the worker
        self.failure = str(error) if error is not None else "it ended on its own"
        kind = type(error).__name__ if error is not None else "ended"
        self.telemetry.errors.labels("api", kind).inc()
        _log.error("the HTTP API stopped; stopping the worker", reason=self.failure)

    async def stopped(self) -> None:
        if self.task is not None:
            await asyncio.wait([self.task])


async def api_serve(args: argparse.Namespace) -> int:
    from tally.api.server import serve

    settings = settings_from(args)
    _setup_logs(settings)
    await serve(settings, stop_on_signals())
    return 0


async def ingest_serve(args: argparse.Namespace) -> int:
    from tally.ingest.server import serve_ingest

    settings = settings_from(args)
    _setup_logs(settings)
    await serve_ingest(settings, stop_on_signals())
    return 0


async def api_hash_token(args: argparse.Namespace) -> int:
    from tally.api.auth import new_token, token_entry

    token = args.token or new_token()
    entry = token_entry(args.name, args.scope, token)  # validates the name first
    if not args.token:
        print(f"token (shown once, give it to {args.name}): {token}")
    print(f"TALLY_API_TOKENS entry: {entry}")
    return 0


def _key(line: bytes) -> bytes | None:
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    customer = document.get("customerId") or document.get("customerAlias")
    return customer.encode() if isinstance(customer, str) else None


async def send(args: argparse.Namespace) -> int:
    from tally.kafka.clients import missing_topics

    settings = settings_from(args)
    _setup_logs(settings)
    topic = settings.topic[0]
    if await missing_topics(settings.kafka_bootstrap, [topic]):
        raise UserError(
            f"topic {topic} does not exist on {settings.kafka_bootstrap}: create it or fix TALLY_TOPIC"
        )
    if args.synthetic is not None:
        workload = Workload(seed=args.seed, end=time.time(), duplicate_ratio=args.duplicates)
        lines = (orjson.dumps(doc) for doc in events(workload, args.synthetic))
    else:
        source = sys.stdin.buffer if args.file in (None, "-") else Path(args.file).open("rb")  # noqa: SIM115 - read line by line as we send
        lines = (line.rstrip(b"\r\n") for line in source if line.strip())
    producer = new_producer(settings.kafka_bootstrap, idempotent=True, linger_ms=20)
    await producer.start()
    sent = 0
    started = time.monotonic()
    try:
        for line in lines:
            await producer.send(topic, value=line, key=_key(line))
            sent += 1
            if args.rate > 0:
                ahead = sent / args.rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    print(f"sent {sent} events to {topic} in {time.monotonic() - started:.1f} s")
    return 0


async def bench(args: argparse.Namespace) -> int:
    from tally.bench import e2e

    if args.list:
        for name in e2e.scenarios():
            print(name)
        return 0
    settings = settings_from(args)
    unknown = [
        s
        for s in [*(args.scenario or []), *(args.freshness_scenario or []), args.scale_out_scenario]
        if s not in e2e.scenarios()
    ]
    if unknown:
        raise UserError(f"unknown scenario(s) {unknown}; tally bench --list shows them")
    if args.freshness_seconds <= 0 or args.freshness_warmup < 0:
        raise UserError("--freshness-seconds must be positive and --freshness-warmup not negative")
    text = await asyncio.to_thread(
        e2e.main,
        settings.kafka_bootstrap,
        settings.database_url,
        args.events,
        args.seed,
        args.scenario,
        args.peers,
        args.check,
        args.check_share,
        workloads=e2e.WORKLOADS if args.workload == "both" else (args.workload,),
        freshness=args.freshness,
        freshness_seconds=args.freshness_seconds,
        freshness_warmup=args.freshness_warmup,
        freshness_scenarios=args.freshness_scenario,
        scale_out=args.scale_out,
        scale_out_scenario=args.scale_out_scenario,
    )
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


async def bench_ingest(args: argparse.Namespace) -> int:
    from tally.bench import ingest

    settings = settings_from(args)
    text = await ingest.run(
        settings.kafka_bootstrap, args.events, args.seed, args.batch, args.connections
    )
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0
