"""Serving the API with uvicorn until `stop` is set (`tally api serve`,
`tally run --with-api`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from tally.api.app import create_app
from tally.api.auth import parse_entries
from tally.config import ConfigError, Settings
from tally.ingest.service import build_ingest
from tally.store.migrate import check_schema, migrate
from tally.store.pool import close_pool, create_pool
from tally.telemetry.logs import Log

log = Log("tally.api")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The caller owns SIGTERM/SIGINT and sets `stop`; uvicorn must not take them.
        yield


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): "
            "change --api-host / --api-port (TALLY_API_HOST / TALLY_API_PORT)"
        ) from None


def uvicorn_config(
    app: Starlette, settings: Settings, http: type[asyncio.Protocol] | str = "h11"
) -> uvicorn.Config:
    """How Tally runs uvicorn: its own logs, no access log or server header,
    a graceful shutdown bounded by the shutdown timeout. h11 unless told: it
    refuses a request head over 16 KiB, where httptools (uvicorn's "auto" when
    installed) has no bound (`tally ingest serve` bounds it itself)."""
    return uvicorn.Config(
        app,
        http=http,
        log_config=None,
        access_log=False,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
    )


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    apply_migrations: bool = True,
    registry: CollectorRegistry | None = None,
) -> None:
    """Apply migrations (or with --no-migrate check the schema version) unless
    the caller did, then serve on api_host:api_port until `stop` is set.
    POST /events counts on `registry` (the worker's, with --with-api).

    A failure sets `stop` too, so a worker started with --with-api does not go
    on without the API it was asked for."""
    try:
        parse_entries(settings.api_tokens)  # a bad entry stops us before anything else
        pool = await create_pool(
            settings.database_url,
            min_size=1,
            max_size=8,
            statement_timeout=settings.database_timeout,
            lock_timeout=settings.lock_timeout,
        )
    except BaseException:
        stop.set()
        raise
    try:
        if apply_migrations:
            async with pool.acquire() as connection:
                await (migrate if settings.migrate else check_schema)(connection)
        app = create_app(settings, pool, build_ingest(settings, registry or CollectorRegistry()))
        sock = _listen(settings.api_host, settings.api_port)
        host, port = sock.getsockname()[:2]
        server = _Server(uvicorn_config(app, settings))
        log.info("api listening", url=f"http://{host}:{port}")
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            server.should_exit = True
            stopping.cancel()
            await serving
        log.info("api stopped")
    except BaseException:
        stop.set()
        raise
    finally:
        await close_pool(pool)
