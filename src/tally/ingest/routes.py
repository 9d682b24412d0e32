"""`POST /events` (and the ingest counters at `GET /metrics`).

The answer comes only after Kafka acknowledged every accepted event:

- 202: a status for each event, accepted or rejected (reason, field, detail);
- 422: `?atomic=true` and some event was refused, or a single event (not a
  batch) was refused, or the body holds no events: nothing was produced;
- 503: Kafka did not acknowledge some valid events; each event not in Kafka
  is named (`loc: ["body", index]`). Those not named were acknowledged, and a
  retry of the whole request is safe: workers drop repeated ids.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict

from tally.api.auth import Principal, Scope, _authorize, bearer
from tally.api.body import MAX_BODY_BYTES
from tally.api.deps import json_response
from tally.api.errors import ApiError, ErrorBody, item, responses
from tally.ingest import shapes
from tally.ingest.openapi import REQUEST_BODY
from tally.ingest.service import Ingest, Judged

router = APIRouter(tags=["events"])


async def _ingester(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """tally.api.auth's ingest check, as a coroutine: FastAPI runs a plain
    function dependency in its thread pool, a hand-off per request that cost
    POST /events a tenth of its CPU (docs/performance.md, "Ingest")."""
    return _authorize(request, credentials, Scope.INGEST)


Ingester = Annotated[Principal, Depends(_ingester)]


class EventStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    status: Literal["accepted", "rejected"]
    id: str | None = None
    reason: str | None = None
    field: str | None = None
    detail: str | None = None


class IngestResult(BaseModel):
    """What became of each event of the request, in the order sent."""

    model_config = ConfigDict(extra="forbid")

    accepted: int
    rejected: int
    events: list[EventStatus]


def _ingest(request: Request) -> Ingest:
    ingest: Ingest = request.app.state.ingest
    return ingest


async def read_body(request: Request) -> tuple[str, bytes]:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in shapes.MEDIA_TYPES:
        raise ApiError.one(
            415,
            ["header", "Content-Type"],
            "send events as " + ", ".join(shapes.MEDIA_TYPES),
            "media_type",
        )
    too_large = ApiError.one(413, ["body"], f"the body is over {MAX_BODY_BYTES} bytes", "too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise too_large
    return media, bytes(raw)


def _refusals(judged: Judged, batch: bool) -> list[dict[str, Any]]:
    found = []
    for status in judged.rejected:
        where: list[str | int] = ["body", status["index"]] if batch else ["body"]
        if status["field"] is not None:
            where.append(status["field"])
        found.append(item(where, status["detail"], status["reason"]))
    return found


async def _events(request: Request, atomic: bool) -> Response:
    ingest = _ingest(request)
    media, raw = await read_body(request)
    try:
        candidates, batch = shapes.split(media, raw)
    except shapes.BodyError as exc:
        raise ApiError.one(exc.status, ["body"], exc.message, exc.type) from None
    judged = ingest.judge(candidates)
    ingest.count_rejected(judged)
    if judged.rejected and (atomic or not batch):
        raise ApiError(422, _refusals(judged, batch))
    failed = await ingest.produce(judged)
    if failed:
        items = _refusals(judged, True) + [
            item(["body", index], f"not acknowledged by Kafka: {why}", "not_acknowledged")
            for index, why in failed
        ]
        items.sort(key=lambda i: i["loc"][1])
        raise ApiError(503, items, {"Retry-After": "1"})
    rejected = len(judged.rejected)
    return json_response(
        {
            "accepted": len(judged.statuses) - rejected,
            "rejected": rejected,
            "events": judged.statuses,
        },
        202,
    )


@router.post(
    "/events",
    status_code=202,
    response_model=IngestResult,
    responses={
        **responses(401, 403, 413, 415, 422),
        503: {"model": ErrorBody, "description": "Kafka did not acknowledge some events"},
    },
    summary="Send usage events (one, an array, NDJSON, or CloudEvents) to the workers' topic",
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def send_events(
    request: Request,
    principal: Ingester,
    atomic: Annotated[
        bool,
        Query(description="Refuse the whole request (422) when any event is refused."),
    ] = False,
) -> Response:
    try:
        response = await _events(request, atomic)
    except ApiError as exc:
        _ingest(request).telemetry.requests.labels(str(exc.status)).inc()
        raise
    _ingest(request).telemetry.requests.labels("202").inc()
    return response


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, principal: Ingester) -> Response:
    """The ingest counters, for Prometheus (a token with the ingest or admin scope)."""
    return Response(
        generate_latest(_ingest(request).telemetry.registry), 200, media_type=CONTENT_TYPE_LATEST
    )
