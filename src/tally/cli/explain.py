"""`tally explain`: what the live metrics make of one event (a file, or stdin)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

from tally.cli.main import UserError, settings_from
from tally.core.explain import explain as explain_event
from tally.core.explain import render
from tally.ingest.service import decode_limits
from tally.store.definitions import list_metrics
from tally.store.pool import connect

FIELDS = ["database_url", "max_event_bytes", "max_lateness", "max_future_skew"]


async def explain(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.file in (None, "-"):
        raw = sys.stdin.buffer.read()
    else:
        try:
            raw = Path(args.file).read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    connection = await connect(settings.database_url)
    try:
        metrics = await list_metrics(connection, include_deleted=False)
    finally:
        await connection.close()
    answer = explain_event(raw.strip(), metrics, time.time(), decode_limits(settings))
    if args.format == "json":
        sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render(answer))
    return 0
