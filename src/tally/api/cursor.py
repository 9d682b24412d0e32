"""Opaque, stable page cursors: the sort key of the last row a page showed.

A cursor is base64url (no padding) of the JSON array `[kind, *key]`. Pages
are keyset pages (`WHERE key > cursor ORDER BY key`), so rows written between
two requests never make a page repeat or skip a row that was already there.
Clients must treat cursors as opaque; a cursor of another list, or a mangled
one, is refused with 422 at `["query", "after"]`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import orjson

from tally.api.errors import ApiError

CursorKey = tuple[str | int, ...]
_INT64 = 1 << 63

# The lists, which are also the cursors' kinds.
USAGE_METRICS = "usage-metrics"
METRIC_VALUES = "metric-values"
ADJUSTMENTS = "adjustments"

# Only base64url characters; the length bound keeps junk out of the decoder.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,2048}$"


def cursor_format(kind: str) -> str:
    """The OpenAPI `format` of a list's cursors, e.g. `usage-metrics-cursor`."""
    return f"{kind}-cursor"


def encode(kind: str, key: Sequence[str | int]) -> str:
    raw = orjson.dumps([kind, *key])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_refusal() -> ApiError:
    return ApiError.one(
        422,
        ["query", "after"],
        "not a cursor of this list (pass pagination.after as given)",
        "cursor",
    )


def decode(kind: str, text: str, shape: Sequence[type]) -> CursorKey:
    """The key in `text`, whose items must have the types in `shape`."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise decode_refusal() from None
    if not isinstance(value, list) or len(value) != len(shape) + 1 or value[0] != kind:
        raise decode_refusal()
    key = value[1:]
    for part, expected in zip(key, shape, strict=True):
        if type(part) is not expected:
            raise decode_refusal()
        if isinstance(part, str) and "\x00" in part:
            raise decode_refusal()
        if isinstance(part, int) and not -_INT64 <= part < _INT64:
            raise decode_refusal()
    return tuple(key)
