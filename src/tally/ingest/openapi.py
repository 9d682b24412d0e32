"""The request body of POST /events in the OpenAPI document (the route reads it itself).

The schemas say the shape; the worker's decoder is the judge (an event the
schema allows can still be refused, e.g. a timestamp outside the window).
NDJSON is documented in docs/api.md: one event per line, as `application/json`.
"""

from __future__ import annotations

from typing import Any

from tally.core.events import MAX_TEXT_LENGTH
from tally.ingest.shapes import CLOUDEVENT, CLOUDEVENTS_BATCH, JSON, MAX_EVENTS

_TEXT: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_LENGTH}

EVENT: dict[str, Any] = {
    "title": "UsageEvent",
    "type": "object",
    "required": ["id", "eventType", "customerId", "timestamp"],
    "properties": {
        "id": {**_TEXT, "description": "Unique per event; repeats are counted once."},
        "eventType": _TEXT,
        "customerId": {**_TEXT, "description": "Also the Kafka key."},
        "timestamp": {"type": "string", "format": "date-time"},
        "properties": {"type": ["object", "null"]},
    },
}

CLOUD_EVENT: dict[str, Any] = {
    "title": "CloudEvent",
    "description": "Structured mode: id -> id, type -> eventType, subject -> customerId, "
    "time -> timestamp, data -> properties; source goes in the ce_source Kafka header.",
    "type": "object",
    "required": ["specversion", "id", "source", "type", "subject", "time"],
    "properties": {
        "specversion": {"type": "string", "enum": ["1.0"]},
        "id": _TEXT,
        "source": {"type": "string", "minLength": 1},
        "type": _TEXT,
        "subject": _TEXT,
        "time": {"type": "string", "format": "date-time"},
        "data": {"type": ["object", "null"]},
    },
}


def _batch(schema: dict[str, Any]) -> dict[str, Any]:
    # Any element is taken: each is judged on its own, and one that is not a
    # valid event is reported as rejected in the 202 (or refuses all, with ?atomic=true).
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_EVENTS,
        "items": {"description": f"Judged as a {schema['title']}; see the 202's statuses."},
    }


REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": f"One event, or up to {MAX_EVENTS} (an array, or application/x-ndjson "
    "lines); the body is at most 1 MiB.",
    "content": {
        JSON: {"schema": {"oneOf": [EVENT, _batch(EVENT)]}},
        CLOUDEVENT: {"schema": CLOUD_EVENT},
        CLOUDEVENTS_BATCH: {"schema": _batch(CLOUD_EVENT)},
    },
}
