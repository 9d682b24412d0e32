"""The native decoder against a second opinion: the Python decoder it
replaced (tests/python_decoder.py), over the fuzzer's hostile records.

They must give the same reason for every record, except where the native one
is stricter on purpose (docs/decisions.md, "The native core"):

- an offset of 60 minutes or more (`+01:60`), which Python's fromisoformat took;
- aliases compared as typed JSON values: `true` is not `1`, and numbers meet
  by exact value, not after a trip through a double;
- a document both invalid and nested past the limit is `not_json`;
- a lone surrogate escape anywhere in the text is `not_json`, and a NUL
  anywhere is `invalid_field`, even in a value a repeated key later overrides
  (Python's decoder checked only the values that survived).

Also: the casefold table equals Python's `str.casefold` on every code point,
and the dedup digest equals hashlib's.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally import _native
from tally.core.engine import new_core
from tally.core.events import DecodeLimits
from tests import python_decoder
from tests.hostile import COUNTED, DEAD_LETTERS, NOW, hostile_records

LIMITS = DecodeLimits()
_OFFSET = re.compile(rb"[+-][0-9]{2}:[6-9][0-9]\"")


def native_reason(raw: bytes | None) -> str | None:
    batch = new_core().decode([raw], NOW, LIMITS.native())
    return batch.rejections[0][1] if batch.rejections else None


def python_reason(raw: bytes | None) -> str | None:
    result = python_decoder.decode_event(raw, NOW, python_decoder.DecodeLimits())
    return result.reason.value if isinstance(result, python_decoder.Rejection) else None


def any_string(raw: bytes, odd: Callable[[str], bool]) -> bool:
    """Whether any string of the text, even one a repeated key overrides,
    is `odd` (Python's decoder only looked at the values that survived)."""

    def bad(value: Any) -> bool:
        if isinstance(value, str):
            return odd(value)
        if isinstance(value, list):
            return any(bad(v) for v in value)
        return False  # objects were checked by the hook

    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or any(bad(k) or bad(v) for k, v in pairs)
        return dict(pairs)

    try:
        document = json.loads(raw, object_pairs_hook=hook, parse_int=str, parse_float=str)
    except (ValueError, RecursionError):
        return False
    return found or bad(document)


def lone_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) < 0xE000 for c in text)


def nul(text: str) -> bool:
    return "\x00" in text


def intended(raw: bytes | None, native: str | None, python: str | None) -> bool:
    """Whether a difference is one of the documented ones."""
    if raw is None:
        return False
    if native == "not_json" and any_string(raw, lone_surrogate):
        return True
    if native == "invalid_field" and any_string(raw, nul):
        return True
    if native == "bad_timestamp" and python is None and _OFFSET.search(raw):
        return True
    if {native, python} == {"invalid_field", None} and b"ventProperties" in raw:
        return True  # typed alias equality of properties
    if native == "invalid_field" and python == "bad_timestamp":
        return False
    return native == "not_json" and python == "too_deep"


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=hostile_records())
def test_the_native_decoder_gives_the_reasons_the_python_one_gave(raw: bytes | None) -> None:
    native, python = native_reason(raw), python_reason(raw)
    assert native == python or intended(raw, native, python), (raw, native, python)


def test_every_catalogued_record_gets_the_same_answer() -> None:
    for kind, (raw, reason) in DEAD_LETTERS.items():
        assert native_reason(raw) == python_reason(raw) == reason, kind
    for kind, raw in COUNTED.items():
        assert native_reason(raw) is python_reason(raw) is None, kind


def test_the_stricter_cases_are_refused() -> None:
    stamp = b'{"id":"e","eventType":"a","customerId":"c","timestamp":"2026-11-25T10:00:00+01:60"}'
    assert native_reason(stamp) == "bad_timestamp"
    typed = b'{"id":"e","eventType":"a","customerId":"c","timestamp":"2026-11-25T10:00:00Z",'
    assert native_reason(typed + b'"properties":{"p":true},"eventProperties":{"p":1}}') == (
        "invalid_field"
    )
    assert native_reason(typed + b'"properties":{"p":1.0},"eventProperties":{"p":1}}') is None


def test_casefold_is_pythons_on_every_code_point() -> None:
    wrong: list[Any] = []
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code < 0xE000:
            continue
        char = chr(code)
        if _native.casefold(char) != char.casefold():
            wrong.append(hex(code))
    assert wrong == []


@given(st.text(max_size=40))
def test_casefold_of_any_text_is_pythons(text: str) -> None:
    assert _native.casefold(text) == text.casefold()


@given(st.text(min_size=1, max_size=60))
def test_dedup_digests_are_hashlibs(event_id: str) -> None:
    raw = orjson.dumps(
        {"id": event_id, "eventType": "a", "customerId": "c", "timestamp": "2026-11-25T10:00:00Z"}
    )
    batch = new_core().decode([raw], NOW, LIMITS.native())
    if batch.rejections:
        return  # too long, or NUL: no digest
    assert batch.digests == hashlib.blake2b(event_id.encode(), digest_size=16).digest()
