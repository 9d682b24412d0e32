"""The event loop `tally ingest serve` runs on: uvloop where it is installed.

POST /events is mostly event-loop work (socket writes to the client and to
the broker, timers, callbacks); on uvloop the ingest server takes about twice
the events per second of the same code on asyncio's own loop
(docs/performance.md, "Ingest"). uvloop does not build on Windows: there,
or where it is missing, asyncio's loop serves, with the same answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None (asyncio's default) when uvloop is absent."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
