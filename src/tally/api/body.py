"""Reading a JSON request body: size, media type, syntax, and what PostgreSQL
can store.

Bodies are read by the routes themselves (not by FastAPI's body parameters) so
that authentication answers before anything looks at the body, and so that a
metric definition is validated by the contract's own `parse_metric`.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

import orjson
from fastapi import Request

from tally.api.errors import ApiError, Loc, item

MAX_BODY_BYTES = 1 << 20
_INT64 = 1 << 63


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _storable(value: Any, loc: Loc, problems: list[dict[str, Any]]) -> None:
    """PostgreSQL text and jsonb hold no NUL character and no lone surrogate, and
    the jsonb codec (orjson) holds 64-bit integers: refuse the rest as 422."""
    if isinstance(value, str):
        if "\x00" in value:
            problems.append(item(loc, "the NUL character is not allowed", "string_nul"))
        else:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(item(loc, "not valid Unicode (a lone surrogate)", "string_unicode"))
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            problems.append(
                item(
                    loc,
                    "integers must fit in 64 bits; write larger numbers as decimals",
                    "int_range",
                )
            )
    elif isinstance(value, dict):
        for key, member in value.items():
            _storable(key, [*loc, key], problems)
            _storable(member, [*loc, key], problems)
    elif isinstance(value, list):
        for index, member in enumerate(value):
            _storable(member, [*loc, index], problems)


def _exact_numbers(raw: bytes, document: Any, exact: frozenset[str]) -> Any:
    """`document` with its top-level `exact` fields' numbers as the Decimal of
    their text: a double would round `0.1000000000000000000001` or
    `12345678901234567890123`. The rest stays as the standard parser reads it."""
    if not isinstance(document, dict) or not exact.intersection(document):
        return document
    decimals = json.loads(raw, parse_constant=_refuse_constant, parse_float=Decimal)
    found = dict(document)
    for key in exact.intersection(document):
        number = decimals.get(key)
        if isinstance(number, int | Decimal) and not isinstance(number, bool):
            found[key] = Decimal(number)
    return found


async def read_json(request: Request, exact: frozenset[str] = frozenset()) -> Any:
    """The parsed body; ApiError 413, 415 or 422 when it cannot be used.
    `exact`: top-level fields whose numbers are read as exact Decimals."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise ApiError.one(
            415, ["header", "Content-Type"], "send the body as application/json", "media_type"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError.one(413, ["body"], f"the body is over {MAX_BODY_BYTES} bytes", "too_large")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError.one(
                413, ["body"], f"the body is over {MAX_BODY_BYTES} bytes", "too_large"
            )
    try:
        # The standard parser keeps big integers exact (orjson would round them).
        document = json.loads(raw, parse_constant=_refuse_constant)
        document = _exact_numbers(raw, document, exact)
    except (ValueError, RecursionError) as exc:
        raise ApiError.one(422, ["body"], f"not valid JSON: {exc}", "json_invalid") from None
    problems: list[dict[str, Any]] = []
    _storable(document, ["body"], problems)
    if problems:
        raise ApiError(422, problems)
    return document


def require_object(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise ApiError.one(422, ["body"], "must be a JSON object", "model_attributes_type")
    return document


def fingerprint(operation: str, document: Any) -> bytes:
    """What makes two requests "the same" for an idempotency key: the operation
    and the body's meaning (key order and white space do not count)."""
    canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(operation.encode() + b"\n" + canonical).digest()
