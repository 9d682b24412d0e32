"""`/backfills`: the status of backfills, and cancelling one (docs/backfill.md).

A backfill itself runs as `tally backfill UID ...`: a batch job that reads
Kafka for minutes or hours, resumable and stopped by SIGTERM, with the
worker's database role. The API shows where each stands and cancels one
(admin token); a cancelled backfill's values carry the partial marker
(`partial` on `/metric-values`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import Field

from tally.api.auth import Admin, Reader
from tally.api.deps import Pool, json_response
from tally.api.errors import ApiError, responses
from tally.api.models import NO_NUL, _Wire
from tally.store import backfill as store

router = APIRouter(prefix="/backfills", tags=["backfills"])

MetricUid = Annotated[
    str,
    Path(
        alias="metricUid",
        min_length=1,
        max_length=256,
        pattern=NO_NUL,
        description="The uid of the backfilled metric.",
    ),
]


class BackfillPartition(_Wire):
    topic: str
    partition: int
    from_offset: int = Field(description="The first offset the backfill counts.")
    end_offset: int = Field(description="Where the live workers started the metric.")
    next_offset: int = Field(description="Counted up to here (exclusive).")
    records: int
    duplicates: int


class Backfill(_Wire):
    metric_uid: str
    state: Literal["running", "done", "cancelled"] = Field(
        description="running (also while stopped: run the command again to resume), done, or"
        " cancelled (the metric's values then carry `partial`)."
    )
    from_: str = Field(alias="from", description="'earliest' or the --from instant.")
    records_done: int
    records_total: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    partitions: list[BackfillPartition]


class BackfillPage(_Wire):
    items: list[Backfill]


def _not_found(uid: str) -> ApiError:
    return ApiError.one(404, ["path", "metricUid"], f"no backfill of metric {uid!r}", "not_found")


@router.get(
    "", response_model=BackfillPage, responses=responses(401, 403, 422), summary="List backfills"
)
async def list_backfills(principal: Reader, pool: Pool) -> Response:
    async with pool.acquire() as connection:
        found = await store.list_backfills(connection)
    return json_response({"items": [store.document(b) for b in found]})


@router.get(
    "/{metricUid}",
    response_model=Backfill,
    responses=responses(401, 403, 404, 422),
    summary="Read a backfill's progress",
)
async def read_backfill(principal: Reader, pool: Pool, uid: MetricUid) -> Response:
    async with pool.acquire() as connection:
        found = await store.load_backfill(connection, uid)
    if found is None:
        raise _not_found(uid)
    return json_response(store.document(found))


@router.post(
    "/{metricUid}/cancel",
    response_model=Backfill,
    responses=responses(401, 403, 404, 409, 422),
    summary="Cancel a running backfill (admin)",
)
async def cancel_backfill(principal: Admin, pool: Pool, uid: MetricUid) -> Response:
    """The process running it stops at its next flush, writing nothing more;
    the values it wrote stay, marked `partial`. Cancelling a cancelled
    backfill again is a no-op; a done one cannot be cancelled (409)."""
    async with pool.acquire() as connection:
        state = await store.cancel(connection, uid)
        found = await store.load_backfill(connection, uid)
    if state is None or found is None:
        raise _not_found(uid)
    if state != store.CANCELLED:
        raise ApiError.one(
            409, ["path", "metricUid"], f"the backfill of {uid!r} is {state}", "conflict"
        )
    return json_response(store.document(found))
