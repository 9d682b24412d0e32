"""`POST /events/explain`: what `tally explain` says of one event, as JSON.

The body is one event as a producer would send it; nothing is produced. The
answer is the core's (`tally.core.explain`): the decode outcome, each live
metric of its eventType (applied with the rollups it would change, skipped
and why, or which filter failed), and whether its id is already in the
stored dedup window of its partition (`?partition=`, or the one Kafka's
partitioner gives its customerId on the first configured topic). Metrics are
judged as a worker judges them (tally.ingest.explain_inputs): one no worker
runs is answered as not_running, with why. A `?partition=` the topic does not
have is a 422 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from tally.api.auth import Ingester
from tally.api.deps import Pool, json_response
from tally.api.errors import ApiError, responses
from tally.config import Settings
from tally.core.explain import explain
from tally.ingest import shapes
from tally.ingest.explain_inputs import PartitionOutOfRange, check_partition, worker_metrics
from tally.ingest.routes import read_body
from tally.ingest.service import Ingest
from tally.store.dedup_lookup import dedup_state, window_unread

router = APIRouter(tags=["events"])


class ExplainAnswer(BaseModel):
    """Decoded or refused; per live metric of its eventType, what the core did."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    decoded: bool
    id: str | None = None
    event_type: str | None = Field(None, alias="eventType")
    customer_id: str | None = Field(None, alias="customerId")
    reason: str | None = None
    detail: str | None = None
    metrics: list[dict[str, Any]] = Field(
        description="uid, outcome (applied, skipped, unmatched, not_running), skipReason, "
        "rollups (timeUnit, periodStart, periodEnd, groupKey, groupBy, aggregation, and add, "
        "member or candidate), failed (filter or presence, with the event's value); "
        "not_running: workers refuse the metric, reason (invalid_definition, "
        "unknown_timezone, cannot_compile) and detail say why"
    )
    dedup: dict[str, Any] | None = Field(
        None,
        description="checked; when checked, topic, partition and duplicate (already "
        "counted); when not, why",
    )


@router.post(
    "/events/explain",
    response_model=ExplainAnswer,
    responses=responses(401, 403, 413, 415, 422),
    summary="Explain one event: decoded or refused, which metrics take it and how, "
    "and whether its id is a duplicate",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "One event, as sent to POST /events; nothing is produced. "
            "Any body is explained: what the decoder refuses is answered with its reason.",
            "content": {"application/json": {"schema": {}}},
        }
    },
)
async def explain_event(
    request: Request,
    principal: Ingester,
    pool: Pool,
    partition: Annotated[
        int | None,
        Query(
            ge=0,
            le=1_000_000,
            description="The partition whose dedup window is checked; one the topic has.",
        ),
    ] = None,
) -> Response:
    media, raw = await read_body(request)
    settings: Settings = request.app.state.settings
    ingest: Ingest = request.app.state.ingest
    raw = raw.strip()
    if media == shapes.CLOUDEVENT:
        # What POST /events would send for it: the mapped Tally event.
        try:
            (candidate,), _ = shapes.split(media, raw)
        except shapes.BodyError as exc:
            raise ApiError.one(exc.status, ["body"], exc.message, exc.type) from None
        if candidate.value is None:
            refused = candidate.refused
            assert refused is not None
            raise ApiError.one(422, ["body"], refused.detail, refused.reason.value)
        raw = candidate.value
    topic = settings.topic[0]
    now = ingest.clock()
    if partition is not None:
        # Kafka is asked only when the window will be read (store/dedup_lookup.py).
        async with pool.acquire() as connection:
            unread = await window_unread(connection, settings, raw, now, ingest.limits)
        if unread is None:
            try:
                await check_partition(settings.kafka_bootstrap, topic, partition)
            except PartitionOutOfRange as exc:
                raise ApiError.one(422, ["query", "partition"], str(exc), "out_of_range") from None
    async with pool.acquire() as connection:
        metrics, not_running = await worker_metrics(connection)
        dedup = await dedup_state(connection, settings, raw, now, ingest.limits, topic, partition)
    return json_response(explain(raw, metrics, now, ingest.limits, dedup, not_running))
