"""Request bodies into candidate messages: the bytes each event would be in Kafka.

The accepted shapes (docs/api.md, "POST /events"):

- `application/json`: one event object, or an array of them;
- `application/x-ndjson`: one event per line (blank lines are skipped);
- `application/cloudevents+json`: one CloudEvent in structured mode;
- `application/cloudevents-batch+json`: an array of CloudEvents.

A Tally event is kept as the client sent its bytes (an array element is cut
out of the body, not parsed and written again), so the decoder sees exactly
what a producer writing to Kafka would have sent. A CloudEvent is mapped as
OpenMeter maps it (id -> id, type -> eventType, subject -> customerId, time ->
timestamp, data -> properties) and written as a Tally event, numbers kept as
their text; its `source` goes in the `ce_source` header.

What is not an event at all (a body that is not JSON, a JSON value that is
neither an object nor an array) is the request's fault: `BodyError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from tally.core.events import Rejection, RejectReason

MAX_EVENTS = 1000
"""Events per request at most (an array, NDJSON lines, a CloudEvents batch)."""

JSON = "application/json"
NDJSON = "application/x-ndjson"
CLOUDEVENT = "application/cloudevents+json"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
MEDIA_TYPES = (JSON, NDJSON, CLOUDEVENT, CLOUDEVENTS_BATCH)
SOURCE_HEADER = "ce_source"

# CloudEvent attribute -> the Tally field it becomes.
CE_FIELDS = {
    "id": "id",
    "type": "eventType",
    "subject": "customerId",
    "time": "timestamp",
    "data": "properties",
}
TALLY_TO_CE = {tally: ce for ce, tally in CE_FIELDS.items()}


class BodyError(Exception):
    """The body holds no events to judge; `status` is 413 or 422, `type` the error type."""

    def __init__(self, status: int, message: str, type: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type


@dataclass(slots=True)
class Candidate:
    """One event of a request: its message value, or why it was refused before decoding."""

    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    refused: Rejection | None = None
    cloudevent: bool = False
    # An array element as splitting the array read it (numbers as text): the
    # judge reads id and customerId from it rather than parsing the bytes again.
    parsed: Any = None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Numbers stay text: this only finds where each event ends, and int() of a
# literal over 4,300 digits raises; the worker's decoder judges each event.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=str, parse_float=str)
_WHITESPACE = " \t\n\r"


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(422, f"the body is not UTF-8: {exc}", "body_encoding") from None


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _WHITESPACE:
        at += 1
    return at


def _array_items(text: str) -> list[tuple[str, Any]]:
    """The text of each element of a JSON array, exactly as written, and the
    element as read (numbers as text)."""
    items: list[tuple[str, Any]] = []
    at = _skip(text, 1)
    if at < len(text) and text[at] == "]":
        at += 1
    else:
        while True:
            if len(items) >= MAX_EVENTS:
                raise BodyError(413, f"more than {MAX_EVENTS} events in one request", "too_many")
            try:
                parsed, end = _DECODER.raw_decode(text, at)
            except ValueError as exc:
                raise BodyError(422, f"not valid JSON: {exc}", "json_invalid") from None
            except RecursionError:
                # Nested too deeply for the json module: that event's fault, not
                # the request's. Its bytes as sent; the decoder says too_deep.
                found = _nested_end(text, at)
                if found is None:
                    raise BodyError(
                        422, f"not valid JSON: the element at {at} does not end", "json_invalid"
                    ) from None
                parsed, end = None, found
            items.append((text[at:end], parsed))
            at = _skip(text, end)
            if at < len(text) and text[at] == ",":
                at = _skip(text, at + 1)
                continue
            if at < len(text) and text[at] == "]":
                at += 1
                break
            raise BodyError(422, f"not valid JSON: expected , or ] at {at}", "json_invalid")
    if _skip(text, at) != len(text):
        raise BodyError(422, f"not valid JSON: extra data at {_skip(text, at)}", "json_invalid")
    return items


# A string (escapes skipped), a bracket, or a quote that opens no complete string.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}"]')


def _nested_end(text: str, at: int) -> int | None:
    """Where the array or object starting at `at` ends, found without
    recursing: brackets counted outside strings. None when it does not end
    (the decoder judges the element's bytes, whatever they hold between)."""
    depth = 0
    for token in _TOKENS.finditer(text, at):
        kind = token.group()
        if kind in "[{":
            depth += 1
        elif kind in "]}":
            depth -= 1
            if depth == 0:
                return token.end()
        elif kind == '"':
            return None  # an unterminated string
    return None


def _check_json(text: str) -> None:
    try:
        _DECODER.decode(text)
    except RecursionError:
        return  # nested too deeply: the decoder refuses it as too_deep, with its detail
    except ValueError as exc:
        raise BodyError(422, f"not valid JSON: {exc}", "json_invalid") from None


def split(media: str, raw: bytes) -> tuple[list[Candidate], bool]:
    """The candidates of a body of media type `media` (one of MEDIA_TYPES), and
    whether the body was a batch (an array or NDJSON) rather than one event."""
    if media == NDJSON:
        lines = [line.strip() for line in raw.split(b"\n")]
        values = [line for line in lines if line]
        if len(values) > MAX_EVENTS:
            raise BodyError(413, f"more than {MAX_EVENTS} events in one request", "too_many")
        if not values:
            raise BodyError(422, "the body holds no event (one JSON object per line)", "no_events")
        return [Candidate(value) for value in values], True
    text = _text(raw)
    start = _skip(text, 0)
    first = text[start : start + 1]
    if first == "[":
        items = _array_items(text[start:])
        if not items:
            raise BodyError(422, "the array holds no event", "no_events")
        if media == CLOUDEVENTS_BATCH:
            return [from_cloudevent(item) for item, _ in items], True
        return [Candidate(item.encode("utf-8"), parsed=parsed) for item, parsed in items], True
    if media == CLOUDEVENTS_BATCH:
        raise BodyError(422, "a CloudEvents batch is a JSON array", "array_type")
    if first != "{":
        _check_json(text)
        raise BodyError(
            422, "send one event (a JSON object) or an array of them", "model_attributes_type"
        )
    _check_json(text)
    if media == CLOUDEVENT:
        return [from_cloudevent(text)], False
    return [Candidate(raw.strip())], False


def _refused(reason: RejectReason, detail: str) -> Candidate:
    return Candidate(None, refused=Rejection(reason, detail), cloudevent=True)


def from_cloudevent(text: str) -> Candidate:
    """A CloudEvent (structured mode, JSON) as the Tally event it maps to."""
    try:
        # parse_int=Decimal: int() refuses literals over 4,300 digits.
        document = json.loads(
            text, parse_float=Decimal, parse_int=Decimal, parse_constant=_refuse_constant
        )
    except RecursionError:
        return _refused(RejectReason.TOO_DEEP, "the CloudEvent is nested too deeply")
    if not isinstance(document, dict):
        return _refused(RejectReason.NOT_AN_OBJECT, "a CloudEvent must be a JSON object")
    for required in ("specversion", "id", "source", "type"):
        if required not in document:
            return _refused(RejectReason.MISSING_FIELD, f"{required} is missing")
    if document["specversion"] != "1.0":
        return _refused(RejectReason.INVALID_FIELD, "specversion must be 1.0")
    source = document["source"]
    if not isinstance(source, str) or not source:
        return _refused(RejectReason.INVALID_FIELD, "source must be a non-empty string")
    if "data_base64" in document:
        return _refused(
            RejectReason.INVALID_FIELD, "data_base64 is not taken; send data as a JSON object"
        )
    event = {
        tally: document[ce] for ce, tally in CE_FIELDS.items() if ce in document and ce != "data"
    }
    if document.get("data") is not None:
        event["properties"] = document["data"]
    try:
        source_bytes = source.encode("utf-8")
    except UnicodeEncodeError:
        return _refused(RejectReason.INVALID_FIELD, "source is not valid Unicode")
    return Candidate(dump(event), [(SOURCE_HEADER, source_bytes)], cloudevent=True)


def dump(value: Any) -> bytes:
    """Compact JSON with numbers written as they were read (Decimal, big int)."""
    if isinstance(value, dict):
        return b"{" + b",".join(_key(k) + b":" + dump(v) for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    if isinstance(value, Decimal):
        return str(value).encode("ascii")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode("ascii")
    try:
        return orjson.dumps(value)
    except TypeError:  # a lone surrogate: the decoder refuses what this makes of it
        return json.dumps(value).encode("ascii")


def _key(key: str) -> bytes:
    return dump(key)
