"""The ingest-only application (`tally ingest serve`): POST /events, /metrics and
health, without PostgreSQL, so it scales apart from the read API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response

from tally import __version__
from tally.api import errors
from tally.api.auth import Authenticator
from tally.api.deps import json_response
from tally.api.errors import error_response, item
from tally.config import Settings
from tally.ingest import routes
from tally.ingest.service import Ingest
from tally.telemetry.logs import Log

log = Log("tally.ingest")


def create_ingest_app(settings: Settings, ingest: Ingest) -> FastAPI:
    authenticator = Authenticator(settings.api_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if len(authenticator) == 0:
            log.warning(
                "no API tokens configured: POST /events answers 401",
                hint="tally api hash-token NAME ingest",
            )
        try:
            yield
        finally:
            await ingest.close()

    app = FastAPI(
        title="Tally ingest",
        version=__version__,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.authenticator = authenticator
    app.state.ingest = ingest
    errors.install(app)
    app.include_router(routes.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        ok, why = await ingest.producer.ready()
        if not ok:
            return error_response(503, [item([], why, "kafka_unavailable")])
        return json_response({"status": "ok"})

    return app
