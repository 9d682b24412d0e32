"""The `tally` command: parsing, settings, and errors a person understands."""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from tally import __version__
from tally.cli.options import (
    API,
    DATABASE,
    INGEST,
    KAFKA,
    LOGGING,
    WORKER,
    Handler,
    UserError,
    positive_int,
)
from tally.config import ConfigError, SettingDeprecationWarning, add_arguments
from tally.errors import PermanentError


def _command(
    sub: Any, name: str, help_text: str, handler: Handler, fields: Sequence[str]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    add_arguments(parser, fields)
    parser.set_defaults(handler=handler, fields=list(fields))
    return parser


def build_parser() -> argparse.ArgumentParser:
    from tally.cli import commands

    parser = argparse.ArgumentParser(
        prog="tally",
        description="Exact usage metering: Kafka usage events to per-period rollups in PostgreSQL.",
        epilog="Every --flag also reads TALLY_FLAG from the environment (e.g. TALLY_DATABASE_URL).",
    )
    parser.add_argument("--version", action="version", version=f"tally {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _command(
        sub,
        "migrate",
        "create or upgrade the tally schema in PostgreSQL",
        commands.migrate,
        DATABASE + LOGGING,
    )

    metrics = sub.add_parser("metrics", help="create, change, list and delete metric definitions")
    msub = metrics.add_subparsers(dest="metrics_command", metavar="ACTION")
    apply = _command(
        msub,
        "apply",
        "create metrics from a YAML or JSON file, or update their mutable fields",
        commands.metrics_apply,
        DATABASE + LOGGING,
    )
    apply.add_argument(
        "file", help="a file with one definition, a list, or {metrics: [...]}; - for stdin"
    )
    apply.add_argument(
        "--dry-run", action="store_true", help="print what would change, change nothing"
    )
    listing = _command(
        msub, "list", "list metric definitions", commands.metrics_list, DATABASE + LOGGING
    )
    listing.add_argument("--deleted", action="store_true", help="include deleted metrics")
    listing.add_argument("--format", choices=["table", "json"], default="table")
    delete = _command(
        msub,
        "delete",
        "delete a metric (it stops aggregating; values stay)",
        commands.metrics_delete,
        DATABASE + LOGGING,
    )
    delete.add_argument("uid")
    metrics.set_defaults(handler=None, parser=metrics)

    _command(
        sub,
        "run",
        "run a worker: consume, aggregate, flush",
        commands.run,
        [*KAFKA, *DATABASE, *LOGGING, *WORKER, *API, "with_api", "migrate"],
    )

    from tally.cli import reports

    values = _command(
        sub, "values", "print rollups from the values table", reports.values, DATABASE + LOGGING
    )
    values.add_argument("--metric", help="metric uid")
    values.add_argument("--customer", help="customer id")
    values.add_argument("--unit", choices=["hour", "day", "week", "month", "quarter", "year"])
    values.add_argument("--group", help="group key ('' for ungrouped)")
    values.add_argument(
        "--group-by-name",
        dest="group_by_name",
        action="append",
        default=[],
        metavar="PROPERTY=TEXT",
        help="only groups whose grouping property has this text (repeatable; needs --metric)",
    )
    values.add_argument(
        "--from",
        dest="since",
        metavar="WHEN",
        help="periods starting at or after (date or date-time)",
    )
    values.add_argument(
        "--to", dest="until", metavar="WHEN", help="periods starting before (date or date-time)"
    )
    values.add_argument("--limit", type=positive_int, default=1000, help="rows at most (1 or more)")
    values.add_argument("--format", choices=["table", "json", "csv"], default="table")
    from tally.cli import usage

    usage.add(sub, _command)
    status = _command(
        sub,
        "status",
        "partitions, stored offsets, lag and last flush",
        reports.status,
        [*KAFKA, *DATABASE, "topic", *LOGGING],
    )
    status.add_argument("--format", choices=["table", "json", "csv"], default="table")

    from tally.cli import demo

    show = _command(
        sub,
        "demo",
        "a worker, a synthetic stream and a live summary (what make run starts)",
        demo.demo,
        [*KAFKA, *DATABASE, "topic", "telemetry_port", *LOGGING],
    )
    show.add_argument(
        "--metrics", default="deploy/metrics.example.yaml", help="metric definitions to apply"
    )
    show.add_argument("--rate", type=float, default=2000.0, help="synthetic events per second")
    show.add_argument(
        "--worker-log", default=".local/demo-worker.log", help="where the worker logs"
    )

    bench = _command(
        sub,
        "bench",
        "end-to-end benchmark against the consume ceiling and the peers",
        commands.bench,
        [*KAFKA, *DATABASE, *LOGGING],
    )
    bench.add_argument(
        "--events", type=int, default=1_000_000, help="events in the pre-loaded topic"
    )
    bench.add_argument("--seed", type=int, default=7)
    bench.add_argument(
        "--scenario", action="append", help="run only these (repeat); default: all; see --list"
    )
    bench.add_argument("--list", action="store_true", help="list the scenarios and exit")
    bench.add_argument(
        "--no-peers", dest="peers", action="store_false", help="skip the ceiling, quixstreams, SQL"
    )
    bench.add_argument(
        "--no-check", dest="check", action="store_false", help="skip the exactness check"
    )
    bench.add_argument(
        "--check-share", type=float, default=0.05, help="share of customers checked exactly"
    )
    bench.add_argument("--markdown", help="also write the report to this file")
    bench.add_argument(
        "--workload",
        choices=["live", "backfill", "both"],
        default="both",
        help="backfill: 3 days of shuffled event times; live: times close to arrival, in"
        " partition order, 1%% up to 6 h late (default: both)",
    )
    bench.add_argument(
        "--no-freshness",
        dest="freshness",
        action="store_false",
        help="skip freshness (produce to visible, at half each scenario's live rate)",
    )
    bench.add_argument(
        "--freshness-seconds", type=float, default=30.0, help="measured window of a freshness run"
    )
    bench.add_argument(
        "--freshness-warmup", type=float, default=10.0, help="warm-up before that window"
    )
    bench.add_argument(
        "--freshness-scenario",
        action="append",
        help="measure freshness only for these (repeat); default: every scenario run live",
    )
    bench.add_argument(
        "--no-scale-out",
        dest="scale_out",
        action="store_false",
        help="skip 1 worker against 2 on one database",
    )
    bench.add_argument(
        "--scale-out-scenario",
        default="10 metrics, dedup on",
        help="the scenario of the scale-out runs (see --list)",
    )
    # `tally bench ingest`: an optional subcommand; `tally bench [flags]` runs as before.
    bsub = bench.add_subparsers(dest="bench_command", metavar="[ingest|backfill]")
    bench_ingest = _command(
        bsub,
        "ingest",
        "POST /events (a tally ingest serve) against producing straight to Kafka",
        commands.bench_ingest,
        [*KAFKA, *LOGGING],
    )
    bench_ingest.add_argument("--events", type=positive_int, default=200_000)
    bench_ingest.add_argument("--seed", type=int, default=7)
    bench_ingest.add_argument("--batch", type=positive_int, default=100, help="events a request")
    bench_ingest.add_argument(
        "--connections", type=positive_int, default=8, help="requests (and batches) in flight"
    )
    bench_ingest.add_argument("--markdown", help="also write the report to this file")
    from tally.cli import backfill as backfill_cli

    bench_backfill = _command(
        bsub,
        "backfill",
        "tally backfill's events/s against a live worker's, in one run (docs/backfill.md)",
        backfill_cli.bench,
        [*KAFKA, *DATABASE, *LOGGING],
    )
    bench_backfill.add_argument("--events", type=positive_int, default=200_000)
    bench_backfill.add_argument("--seed", type=int, default=7)
    bench_backfill.add_argument("--markdown", help="also write the report to this file")

    from tally.cli import retention

    keep = sub.add_parser("retention", help="delete old UNIQUE members and expired dedup ids")
    ksub = keep.add_subparsers(dest="retention_command", metavar="ACTION")
    keep_run = _command(
        ksub,
        "run",
        "one retention pass now (workers run one every TALLY_RETENTION_INTERVAL)",
        retention.run,
        [*DATABASE, *LOGGING, *retention.FIELDS],
    )
    keep_run.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
    )
    keep.set_defaults(handler=None, parser=keep)

    api = sub.add_parser("api", help="the HTTP API over metric definitions and values")
    asub = api.add_subparsers(dest="api_command", metavar="ACTION")
    _command(
        asub,
        "serve",
        "serve the HTTP API",
        commands.api_serve,
        [*DATABASE, *LOGGING, *API, *INGEST, "migrate"],
    )
    hash_token = _command(
        asub,
        "hash-token",
        "print the configuration entry for a bearer token",
        commands.api_hash_token,
        [],
    )
    hash_token.add_argument("name", help="who holds the token (shown in logs)")
    hash_token.add_argument("scope", choices=["read", "ingest", "admin"])
    hash_token.add_argument("--token", help="the token; generated when omitted (printed once)")
    api.set_defaults(handler=None, parser=api)

    ingest = sub.add_parser("ingest", help="POST /events alone: HTTP into the events topic")
    isub = ingest.add_subparsers(dest="ingest_command", metavar="ACTION")
    from tally.ingest.loop import fast_loop

    _command(
        isub,
        "serve",
        "serve POST /events (and /healthz, /readyz, /metrics) without the read API",
        commands.ingest_serve,
        [*INGEST, *LOGGING, "api_host", "api_port", "api_tokens", "shutdown_timeout"],
    ).set_defaults(loop_factory=fast_loop)
    ingest.set_defaults(handler=None, parser=ingest)

    from tally.cli import explain

    why = _command(
        sub,
        "explain",
        "what the live metrics make of one event: decoded or refused, matched or which filter failed",
        explain.explain,
        [*explain.FIELDS, *LOGGING],
    )
    why.add_argument("file", nargs="?", help="a file with one event; - or nothing for stdin")
    why.add_argument("--format", choices=["text", "json"], default="text")
    why.add_argument(
        "--partition",
        type=int,
        metavar="P",
        help="the partition whose dedup window is checked (default: murmur2 of customerId)",
    )
    why.add_argument(
        "--offset",
        type=int,
        metavar="O",
        help="explain the record at this offset of --topic/--partition, fetched from Kafka",
    )

    send = _command(
        sub,
        "send",
        "publish usage events (JSONL file, stdin, or synthetic)",
        commands.send,
        [*KAFKA, "topic", *LOGGING],
    )
    send.add_argument("file", nargs="?", help="JSON Lines file of events; - or nothing for stdin")
    send.add_argument("--synthetic", type=int, metavar="N", help="send N generated events instead")
    send.add_argument("--seed", type=int, default=42, help="seed of the synthetic workload")
    send.add_argument(
        "--duplicates",
        type=float,
        default=0.0,
        help="share of synthetic events re-sent with the same id",
    )
    send.add_argument(
        "--rate", type=float, default=0.0, help="events per second (0 = as fast as possible)"
    )
    backfill_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Python hides DeprecationWarning outside __main__; an operator using an old
    # setting name must see which new name to use.
    warnings.simplefilter("default", SettingDeprecationWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        (getattr(args, "parser", None) or parser).print_help()
        return 2
    # A command may name its event loop (tally ingest serve: uvloop, if installed).
    choose: Callable[[], Callable[[], asyncio.AbstractEventLoop] | None] | None = getattr(
        args, "loop_factory", None
    )
    try:
        with asyncio.Runner(loop_factory=choose() if choose else None) as runner:
            return runner.run(handler(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"tally: {describe(exc)}", file=sys.stderr)
        if isinstance(exc, PermanentError):
            return 3  # an orchestrator sees a worker that stopped for a reason
        return 2 if isinstance(exc, UserError | ConfigError) or _is_user_error(exc) else 1


def _is_user_error(exc: BaseException) -> bool:
    from aiokafka.errors import KafkaConnectionError

    from tally.contracts.metric import MetricDefinitionError
    from tally.store.migrate import SchemaBehind
    from tally.store.pool import DatabaseUnavailable

    user_errors = (
        MetricDefinitionError,
        DatabaseUnavailable,
        KafkaConnectionError,
        SchemaBehind,
        asyncpg.UndefinedTableError,
        asyncpg.InsufficientPrivilegeError,
    )
    return isinstance(exc, user_errors)


def describe(exc: BaseException) -> str:
    """One line (or a short block) that says what went wrong and what to check."""
    from aiokafka.errors import KafkaConnectionError

    if isinstance(exc, KafkaConnectionError):
        return f"cannot reach Kafka ({exc}): is the broker running, and is TALLY_KAFKA_BOOTSTRAP right?"
    if isinstance(exc, asyncpg.UndefinedTableError):
        return f"the database has no Tally schema yet ({exc}): run `tally migrate` against TALLY_DATABASE_URL"
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return (
            f"PostgreSQL refused this user ({exc}): it needs the tally role for this command "
            "(tally_worker, tally_api, tally_reader or tally_migrator; docs/operations.md)"
        )
    if isinstance(exc, PermanentError):
        return f"stopped: {exc}"
    if isinstance(exc, UserError | ConfigError) or _is_user_error(exc):
        return str(exc)
    return f"unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
