"""Serving POST /events alone with uvicorn until `stop` is set (`tally ingest serve`)."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from tally.api.auth import parse_entries
from tally.api.server import _listen, _Server, uvicorn_config
from tally.config import ConfigError, Settings
from tally.ingest.app import create_ingest_app
from tally.ingest.http import BoundedHttpToolsProtocol
from tally.ingest.service import build_ingest
from tally.kafka.clients import missing_topics
from tally.telemetry.logs import Log

log = Log("tally.ingest")


def ingest_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    """uvicorn_config on httptools (the fast parser), its request head bounded."""
    return uvicorn_config(app, settings, http=BoundedHttpToolsProtocol)


async def serve_ingest(settings: Settings, stop: asyncio.Event) -> None:
    """Check the tokens and that the topic exists, then serve on api_host:api_port.
    `stop` set while the topic check waits on Kafka (up to 15 s) ends it there."""
    parse_entries(settings.api_tokens)  # a bad entry stops us before anything else
    topic = settings.topic[0]
    checking = asyncio.create_task(missing_topics(settings.kafka_bootstrap, [topic]))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({checking, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not checking.done():
        checking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checking
        log.info("ingest api stopped", before="the topic check ended")
        return
    if checking.result():
        raise ConfigError(
            f"topic {topic} does not exist on {settings.kafka_bootstrap}: create it "
            "(tally run --create-topics does) or fix TALLY_TOPIC"
        )
    app = create_ingest_app(settings, build_ingest(settings, CollectorRegistry()))
    sock = _listen(settings.api_host, settings.api_port)
    host, port = sock.getsockname()[:2]
    server = _Server(ingest_config(app, settings))
    log.info("ingest api listening", url=f"http://{host}:{port}", topic=topic)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        stopping.cancel()
        await serving
    log.info("ingest api stopped")
