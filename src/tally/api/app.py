"""The ASGI application: `create_app(settings, pool=None)`.

With a pool (tests, `tally run --with-api`), the app uses it and leaves closing
it to the caller; without one, the app's lifespan opens and closes its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry
from pydantic.alias_generators import to_camel

from tally import __version__
from tally.api import (
    errors,
    routes_backfill,
    routes_explain,
    routes_external,
    routes_health,
    routes_metrics,
    routes_usage,
    routes_values,
)
from tally.api.auth import Authenticator, Reader
from tally.api.compat import cuoral, exante, squad
from tally.api.deps import JSON
from tally.api.openapi_document import build as build_openapi
from tally.api.openapi_document import render as render_openapi
from tally.backfill.launcher import Launcher, ProcessLauncher
from tally.config import Settings
from tally.ingest import routes as routes_events
from tally.ingest.service import Ingest, build_ingest
from tally.store.pool import close_pool, create_pool
from tally.telemetry.logs import Log

log = Log("tally.api")


def _operation_id(route: APIRoute) -> str:
    return to_camel(route.name)  # createUsageMetric, listMetricValues, ...


class TallyApi(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = build_openapi(self)
        return self.openapi_schema


def create_app(
    settings: Settings,
    pool: asyncpg.Pool | None = None,
    ingest: Ingest | None = None,
    launcher: Launcher | None = None,
) -> FastAPI:
    """The API over `settings.database_url` (or `pool`), with `settings.api_tokens`;
    POST /events through `ingest` (by default one on a registry of its own);
    POST /backfills through `launcher` (by default child processes, counted
    on the ingest's registry). The app's shutdown closes both."""
    authenticator = Authenticator(settings.api_tokens)
    events = ingest or build_ingest(settings, CollectorRegistry())
    backfills = launcher or ProcessLauncher(settings, events.telemetry.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with _serving(app):
                yield
        finally:
            try:
                await backfills.close()  # SIGTERM: they flush and exit, resumable
            finally:
                await events.close()

    @asynccontextmanager
    async def _serving(app: FastAPI) -> AsyncIterator[None]:
        if len(authenticator) == 0:
            log.warning(
                "no API tokens configured: every endpoint but /healthz and /readyz answers 401",
                hint="tally api hash-token NAME read|ingest|admin",
            )
        if pool is not None:
            yield
            return
        own = await create_pool(
            settings.database_url,
            min_size=1,
            max_size=8,
            statement_timeout=settings.database_timeout,
            lock_timeout=settings.lock_timeout,
        )
        app.state.pool = own
        try:
            yield
        finally:
            await close_pool(own)

    app = TallyApi(
        title="Tally",
        version=__version__,
        lifespan=lifespan,
        openapi_url=None,  # served below, behind a token
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=_operation_id,
    )
    app.state.pool = pool
    app.state.authenticator = authenticator
    app.state.ingest = events
    app.state.launcher = backfills
    app.state.settings = settings
    errors.install(app)
    app.include_router(routes_health.router)
    app.include_router(routes_metrics.router)
    app.include_router(routes_usage.router)
    app.include_router(routes_values.router)
    app.include_router(routes_backfill.router)
    app.include_router(routes_explain.router)  # before /events: the more specific path
    app.include_router(routes_events.router)
    app.include_router(routes_external.router)
    app.include_router(exante.router)
    app.include_router(squad.router)
    app.include_router(cuoral.router)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document(request: Request, principal: Reader) -> Response:
        return Response(render_openapi(app.openapi()), media_type=JSON)

    return app
