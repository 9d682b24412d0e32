"""What routes share: the connection pool, paging parameters, JSON responses."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import Depends, Query, Request
from fastapi.responses import Response
from pydantic import StringConstraints, WithJsonSchema

from tally.api.cursor import (
    ADJUSTMENTS,
    CURSOR_PATTERN,
    METRIC_VALUES,
    USAGE_METRICS,
    cursor_format,
)
from tally.api.models import NO_NUL

JSON = "application/json"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


Pool = Annotated[asyncpg.Pool, Depends(_pool)]

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, at most {MAX_LIMIT}.")]


def _cursor(kind: str) -> WithJsonSchema:
    return WithJsonSchema(
        {"type": "string", "pattern": CURSOR_PATTERN, "format": cursor_format(kind)}
    )


# The cursors of each list (`after`); see cursor.py. The custom `format` names
# which list issued them, so a client (or a test generator) can tell them apart.
_Cursor = StringConstraints(pattern=CURSOR_PATTERN)
UsageMetricsCursor = Annotated[str, _Cursor, _cursor(USAGE_METRICS)]
MetricValuesCursor = Annotated[str, _Cursor, _cursor(METRIC_VALUES)]
AdjustmentsCursor = Annotated[str, _Cursor, _cursor(ADJUSTMENTS)]
AFTER = Query(
    description="The previous page's `pagination.after`; omit for the first page. "
    "Cursors are opaque: only those this list returned are accepted.",
)


IncludeDeleted = Annotated[
    bool,
    Query(alias="includeDeleted", description="Also show metrics whose deletedAt is set."),
]


def text_query(alias: str, description: str, min_length: int = 1, max_length: int = 256) -> Any:
    """A free-text filter: bounded, and without NUL (PostgreSQL text cannot hold it)."""
    return Query(
        alias=alias,
        min_length=min_length,
        max_length=max_length,
        pattern=NO_NUL,
        description=description,
    )


def json_response(
    document: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(document), status, headers=headers, media_type=JSON)


def body_ref(component: str, description: str) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its own JSON body (see body.py)."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{component}"}}},
        }
    }
