"""`tally backfill UID --from TIME | --from-offsets earliest`, `tally backfill status [UID]`,
`tally backfill cancel UID` (docs/backfill.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prometheus_client import CollectorRegistry

from tally.cli.options import DATABASE, KAFKA, LOGGING, UserError, positive_int, settings_from
from tally.config import add_arguments

FIELDS = [
    *KAFKA,
    *DATABASE,
    *LOGGING,
    "topic",
    "flush_interval",
    "max_batch",
    "dedup_window",
    "max_lateness",
    "max_future_skew",
    "max_event_bytes",
    "telemetry_host",
    "telemetry_port",
]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "backfill",
        help="count a new metric over the events still in Kafka, exactly once",
        description=(
            "tally backfill UID --from TIME | --from-offsets earliest: count metric UID over"
            " the records the live workers read before they started it (resumable: run it"
            " again after a kill). tally backfill status [UID]: progress. tally backfill"
            " cancel UID: stop it for good; the metric's values are then marked partial."
        ),
    )
    add_arguments(parser, FIELDS)
    parser.add_argument(
        "words",
        nargs="+",
        metavar="UID | status [UID] | cancel UID | run UID",
        help="the metric to backfill, or status / cancel",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from", dest="since", metavar="TIME", help="ISO 8601 date or date-time")
    start.add_argument(
        "--from-offsets",
        dest="from_offsets",
        choices=["earliest"],
        help="from each partition's first record",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="seconds to wait for the live workers to start the metric (default 120)",
    )
    parser.add_argument(
        "--flush-records",
        dest="flush_records",
        type=positive_int,
        default=None,
        help="flush at least every N records read (default TALLY_BACKFILL_FLUSH_RECORDS, 200000;"
        " also every TALLY_FLUSH_INTERVAL)",
    )
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.set_defaults(handler=backfill, fields=FIELDS)


async def backfill(args: argparse.Namespace) -> int:
    words = list(args.words)
    if words[0] == "status" and len(words) <= 2:
        return await status(args, words[1] if len(words) == 2 else None)
    if words[0] == "cancel":
        if len(words) != 2:
            raise UserError("usage: tally backfill cancel UID")
        return await cancel(args, words[1])
    if words[0] == "run":
        words = words[1:]
    if len(words) != 1:
        raise UserError("usage: tally backfill UID --from TIME | --from-offsets earliest")
    return await run(args, words[0])


async def run(args: argparse.Namespace, uid: str) -> int:
    from tally.backfill.checks import BackfillRefused
    from tally.backfill.runner import EARLIEST, Backfiller
    from tally.cli.commands import stop_on_signals
    from tally.store import backfill as store
    from tally.store.migrate import check_schema
    from tally.store.pool import close_pool, create_pool
    from tally.telemetry import logs
    from tally.telemetry.http import TelemetryServer

    if args.since is None and args.from_offsets is None:
        raise UserError("say where the backfill starts: --from TIME or --from-offsets earliest")
    settings = settings_from(args)
    logs.setup(settings.log_level, settings.log_format == "json")
    stop = stop_on_signals()
    pool = await create_pool(settings.database_url, min_size=1, max_size=3)
    registry = CollectorRegistry()
    server = None
    try:
        async with pool.acquire() as connection:
            await check_schema(connection)
        backfiller = Backfiller(
            settings,
            pool,
            uid,
            EARLIEST if args.from_offsets else args.since,
            registry=registry,
            wait_for_start=args.wait,
            flush_records=args.flush_records or settings.backfill_flush_records,
        )

        async def ready() -> tuple[bool, str]:
            return True, "backfilling"

        server = TelemetryServer(registry, ready, settings.telemetry_host, settings.telemetry_port)
        port = await server.start()
        print(
            f"backfill {uid}: telemetry listening url=http://{settings.telemetry_host}:{port}/metrics",
            file=sys.stderr,
            flush=True,
        )
        try:
            final = await backfiller.run(stop)
        except BackfillRefused as exc:
            await _record_error(pool, uid, f"backfill refused: {exc}")
            raise UserError(f"backfill refused: {exc}") from exc
        except store.Cancelled:
            print(f"backfill {uid}: cancelled; the values stay marked partial", file=sys.stderr)
            return 4
        except store.Moved as exc:
            await _record_error(pool, uid, str(exc))
            raise UserError(
                f"backfill {uid}: {exc} (is another `tally backfill {uid}` running?)"
            ) from exc
    finally:
        if server is not None:
            await server.stop()
        await close_pool(pool)
    if final.state == store.DONE:
        print(f"backfill {uid}: done, {final.done:,} records counted", file=sys.stderr)
        return 0
    if final.state == store.CANCELLED:
        print(f"backfill {uid}: cancelled; the values stay marked partial", file=sys.stderr)
        return 4
    print(
        f"backfill {uid}: stopped at {final.done:,} / {final.total:,} records;"
        " run the same command to resume",
        file=sys.stderr,
    )
    return 0


async def _record_error(pool: Any, uid: str, message: str) -> None:
    """On the backfill's row, if it has one, for GET /backfills and status: a
    run started by the API has no terminal to print on (best effort)."""
    from tally.store import backfill as store
    from tally.store.pool import DATABASE_ERRORS

    try:
        async with pool.acquire() as connection:
            await store.record_error(connection, uid, message)
    except DATABASE_ERRORS as exc:
        print(f"backfill {uid}: could not store the error ({exc})", file=sys.stderr)


async def status(args: argparse.Namespace, uid: str | None) -> int:
    import orjson

    from tally.cli.commands import print_table
    from tally.store import backfill as store
    from tally.store.pool import database

    settings = settings_from(args)
    async with database(settings) as connection:
        found = await store.list_backfills(connection, uid)
    if uid is not None and not found:
        raise UserError(f"no backfill of metric {uid!r}")
    if args.format == "json":
        sys.stdout.write(orjson.dumps([store.document(b) for b in found]).decode() + "\n")
        return 0
    print_table(
        ("METRIC", "STATE", "FROM", "RECORDS", "OF", "PERCENT", "UPDATED"),
        [
            (
                b.metric_uid,
                b.state,
                b.from_spec,
                b.done,
                b.total,
                f"{100.0 * b.done / b.total if b.total else 100.0:.1f}",
                b.updated_at.isoformat(timespec="seconds"),
            )
            for b in found
        ],
    )
    return 0


async def cancel(args: argparse.Namespace, uid: str) -> int:
    from tally.store import backfill as store
    from tally.store.pool import database

    settings = settings_from(args)
    async with database(settings) as connection:
        state = await store.cancel(connection, uid)
    if state is None:
        raise UserError(f"no backfill of metric {uid!r}")
    if state != store.CANCELLED:
        raise UserError(f"the backfill of {uid!r} is {state}; only a running one can be cancelled")
    print(f"backfill {uid}: cancelled; its values are marked partial", file=sys.stderr)
    return 0


async def bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tally.bench import backfill as bench_backfill

    settings = settings_from(args)
    text = await bench_backfill.run(
        settings.kafka_bootstrap, settings.database_url, args.events, args.seed
    )
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0
