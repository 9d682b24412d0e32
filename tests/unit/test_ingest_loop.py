"""`tally ingest serve` asks the CLI runner for uvloop; other commands do not."""

from __future__ import annotations

import uvloop

from tally.cli.main import build_parser
from tally.ingest.loop import fast_loop


def test_only_ingest_serve_runs_on_uvloop() -> None:
    parser = build_parser()
    serve = parser.parse_args(["ingest", "serve"])
    assert serve.loop_factory is fast_loop
    assert fast_loop() is uvloop.new_event_loop
    for other in (["run"], ["api", "serve"], ["explain"]):
        assert getattr(parser.parse_args(other), "loop_factory", None) is None
