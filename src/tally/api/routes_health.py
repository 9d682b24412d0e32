"""`/healthz` and `/readyz`: the only endpoints open without a token."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from tally.api.deps import Pool, json_response
from tally.api.errors import ErrorBody, error_response, item
from tally.api.models import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": ErrorBody, "description": "The database does not answer"}},
    summary="Readiness: the database answers",
)
async def readyz(pool: Pool) -> Response:
    try:
        async with pool.acquire(timeout=2) as connection:
            await connection.fetchval("SELECT 1", timeout=2)
    except Exception as exc:  # any failure means "not ready"
        # Only the kind: this endpoint is open, and a message can name hosts and users.
        return error_response(
            503, [item([], f"database: {type(exc).__name__}", "database_unavailable")]
        )
    return json_response({"status": "ok"})
