"""Decoding usage events: every reject reason, the aliases, exact numbers, and
agreement between the hot-path decoder, the pydantic model and the JSON Schema."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tally.contracts.event import UsageEventModel
from tally.contracts.metric import parse_metric
from tally.core.engine import aggregate, new_core
from tally.core.events import DecodeLimits, Rejection, RejectReason, UsageEvent, decode_event
from tally.core.metrics import MetricIndex
from tally.core.numbers import number_text

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "usage-event.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
NOW = 1_795_000_000.0  # 2026-11-18T11:06:40Z
LIMITS = DecodeLimits()
GOOD = {
    "id": "e1",
    "eventType": "api_call",
    "customerId": "acme",
    "timestamp": "2026-11-18T08:00:00Z",
}


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def with_(**changes: Any) -> bytes:
    doc = {**GOOD, **changes}
    return encode({k: v for k, v in doc.items() if v is not ...})


REJECTED: list[tuple[bytes | None, RejectReason, str]] = [
    (None, RejectReason.EMPTY, "no value"),
    (b"", RejectReason.EMPTY, "no value"),
    (b"x" * (64 * 1024 + 1), RejectReason.OVERSIZED, "65537 bytes"),
    (b"{not json", RejectReason.NOT_JSON, "JSON"),
    (b'{"id": "\xff\xfe"}', RejectReason.NOT_JSON, "UTF-8"),
    (b'{"a": NaN}', RejectReason.NOT_JSON, "JSON"),
    (b'{"id": "\\ud800"}', RejectReason.NOT_JSON, "JSON"),
    (b"[1, 2]", RejectReason.NOT_AN_OBJECT, "object"),
    (b'"just a string"', RejectReason.NOT_AN_OBJECT, "object"),
    (b"null", RejectReason.NOT_AN_OBJECT, "object"),
    (with_(id=...), RejectReason.MISSING_FIELD, "id"),
    (with_(id=None), RejectReason.MISSING_FIELD, "id"),
    (with_(eventType=...), RejectReason.MISSING_FIELD, "eventType"),
    (with_(customerId=...), RejectReason.MISSING_FIELD, "customerId"),
    (with_(timestamp=...), RejectReason.MISSING_FIELD, "timestamp"),
    (with_(id=""), RejectReason.INVALID_FIELD, "id must be 1 to 256"),
    (with_(id="x" * 257), RejectReason.INVALID_FIELD, "id must be 1 to 256"),
    (with_(id=42), RejectReason.INVALID_FIELD, "id must be a string"),
    (with_(customerId=["acme"]), RejectReason.INVALID_FIELD, "customerId must be a string"),
    (with_(eventType=True), RejectReason.INVALID_FIELD, "eventType must be a string"),
    (
        with_(customerAlias="other"),
        RejectReason.INVALID_FIELD,
        "customerId and its alias customerAlias differ",
    ),
    (with_(properties=[1]), RejectReason.INVALID_FIELD, "properties must be an object"),
    (with_(customerId="a\x00b"), RejectReason.INVALID_FIELD, "NUL"),
    (with_(properties={"a": 1}, eventProperties={"a": 2}), RejectReason.INVALID_FIELD, "differ"),
    (with_(timestamp=1795000000), RejectReason.BAD_TIMESTAMP, "string"),
    (with_(timestamp="2026-11-18T08:00:00"), RejectReason.BAD_TIMESTAMP, "offset"),
    (with_(timestamp="2026-11-18"), RejectReason.BAD_TIMESTAMP, "RFC 3339"),
    (with_(timestamp="18/11/2026 08:00"), RejectReason.BAD_TIMESTAMP, "RFC 3339"),
    (with_(timestamp="2026-02-30T08:00:00Z"), RejectReason.BAD_TIMESTAMP, "RFC 3339"),
    (with_(timestamp="2026-W47-3T08:00:00Z"), RejectReason.BAD_TIMESTAMP, "RFC 3339"),
    (with_(timestamp="2026-11-18T08:00:00+0100"), RejectReason.BAD_TIMESTAMP, "RFC 3339"),
    (with_(timestamp="2026-11-18T25:00:00Z"), RejectReason.BAD_TIMESTAMP, "RFC 3339"),
    (with_(timestamp="2026-10-14T11:06:39Z"), RejectReason.TOO_LATE, "in the past"),
    (with_(timestamp="2026-11-18T11:11:41Z"), RejectReason.TOO_FAR_IN_FUTURE, "in the future"),
]


@pytest.mark.parametrize(
    ("raw", "reason", "detail"), REJECTED, ids=[f"{i}-{r[1].value}" for i, r in enumerate(REJECTED)]
)
def test_rejections_carry_reason_and_detail(
    raw: bytes | None, reason: RejectReason, detail: str
) -> None:
    result = decode_event(raw, NOW, LIMITS)
    assert isinstance(result, Rejection), result
    assert result.reason is reason
    assert detail in result.detail


def test_acceptance_window_edges_are_inclusive() -> None:
    exactly_late = with_(timestamp="2026-10-14T11:06:40Z")  # NOW - 35 days
    exactly_future = with_(timestamp="2026-11-18T11:11:40Z")  # NOW + 5 minutes
    assert isinstance(decode_event(exactly_late, NOW, LIMITS), UsageEvent)
    assert isinstance(decode_event(exactly_future, NOW, LIMITS), UsageEvent)


def test_sequence_aliases_are_accepted() -> None:
    raw = encode(
        {
            "customerEventId": "e9",
            "eventType": "t",
            "customerAlias": "acme",
            "eventTimestamp": "2026-11-18T09:00:00+01:00",
            "eventProperties": {"n": 2},
        }
    )
    event = decode_event(raw, NOW, LIMITS)
    assert isinstance(event, UsageEvent)
    assert (event.id, event.customer_id, event.timestamp, event.properties) == (
        "e9",
        "acme",
        1794988800.0,
        {"n": 2},
    )
    both_equal = with_(customerAlias="acme")
    assert isinstance(decode_event(both_equal, NOW, LIMITS), UsageEvent)


def test_nested_properties_are_kept_for_paths_to_read() -> None:
    # Before the metering model (issue 13) these were refused as invalid_field.
    usage = {"usage": {"input_tokens": 12, "items": [{"sku": "a"}, None]}, "flat": "x"}
    event = decode_event(with_(properties=usage), NOW, LIMITS)
    assert isinstance(event, UsageEvent)
    assert event.properties == {
        "usage": {"input_tokens": 12, "items": [{"sku": "a"}, None]},
        "flat": "x",
    }
    assert model_accepts(json.loads(with_(properties=usage)))


def test_timestamp_forms() -> None:
    for stamp, expected in [
        ("2026-11-18T08:00:00Z", 1794988800.0),
        ("2026-11-18t08:00:00z", 1794988800.0),
        ("2026-11-18 08:00:00+00:00", 1794988800.0),
        ("2026-11-18T13:45:00+05:45", 1794988800.0),
        ("2026-11-18T00:00:00.5-08:00", 1794988800.5),
        ("2026-11-18T08:00:00.123456789Z", 1794988800.123456),  # nanoseconds: truncated to µs
    ]:
        event = decode_event(with_(timestamp=stamp), NOW, LIMITS)
        assert isinstance(event, UsageEvent), stamp
        assert event.timestamp == pytest.approx(expected, abs=1e-6), stamp


def test_numbers_a_double_cannot_hold_are_read_exactly() -> None:
    raw = with_(properties={"n": 1}).replace(
        b'"n": 1', b'"n": 0.1000000000000000000001, "big": 12345678901234567890'
    )
    event = decode_event(raw, NOW, LIMITS)
    assert isinstance(event, UsageEvent)
    assert event.properties["n"] == Decimal("0.1000000000000000000001")
    assert event.properties["big"] == 12345678901234567890
    huge = decode_event(with_(properties={"n": 1}).replace(b'"n": 1', b'"n": 1e400'), NOW, LIMITS)
    assert isinstance(huge, UsageEvent)
    assert sum_outcome("1e400") == "out_of_range"


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    # The JSON text "C:\\u0000dir" is the string C:\u0000dir: no NUL in it.
    raw = with_(properties={"path": "C:\\u0000dir"})
    assert b"\\u0000" in raw
    event = decode_event(raw, NOW, LIMITS)
    assert isinstance(event, UsageEvent)
    assert event.properties["path"] == "C:\\u0000dir"
    UsageEventModel.model_validate_json(raw)  # the model agrees


def test_value_text_forms() -> None:
    assert [
        number_text(v)
        for v in (1, 1.0, -0.0, 0.1, 1e20, 1e23, 1e300, 2.50, Decimal("1.500"), Decimal("-0E+3"))
    ] == [
        "1",
        "1",
        "0",
        "0.1",
        "100000000000000000000",
        "1" + "0" * 23,
        "1" + "0" * 300,
        "2.5",
        "1.5",
        "0",
    ]
    assert sum_outcome("0.1", times=10) == Decimal("1.0")
    assert [
        sum_outcome(json.dumps(v))
        for v in ("12.50", "-3", ".5", "1e2", "NaN", "Infinity", "1,5", " 1", "", True, None)
    ] == [
        Decimal("12.50"),
        Decimal("-3"),
        Decimal(".5"),
        Decimal("1e2"),
        "not_a_number",
        "not_a_number",
        "not_a_number",
        "not_a_number",
        "not_a_number",
        "not_a_number",
        "missing_value",
    ]


SUM_METRIC = parse_metric(
    {
        "uid": "s",
        "name": "s",
        "eventType": "api_call",
        "aggregationType": "SUM",
        "aggregationProperty": "n",
    }
)


def sum_outcome(literal: str, times: int = 1) -> Decimal | str:
    """What a SUM of `literal` (JSON text) over `times` events holds, or its skip reason."""
    core = new_core(MetricIndex([SUM_METRIC]))
    raws = [
        with_(id=f"e{n}", properties={"n": 0}).replace(b'"n": 0', b'"n": ' + literal.encode())
        for n in range(times)
    ]
    deltas = aggregate(core, raws, NOW, LIMITS)
    if deltas.skipped:
        ((_, reason),) = deltas.skipped
        return reason
    values = {
        value for (_, _, _, unit, _), (_, _, value) in deltas.snapshot().items() if unit == "day"
    }
    (value,) = values
    return Decimal(value)


def model_accepts(doc: Any) -> bool:
    try:
        UsageEventModel.model_validate(doc)
    except ValidationError:
        return False
    return True


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.sampled_from(["", "x", "é"]),
    st.floats(-5, 5),
)
field_values = st.one_of(
    st.sampled_from(["e1", "", "x" * 257, "acme"]),
    st.none(),
    st.integers(0, 2),
    st.lists(st.just("a"), max_size=1),
)
stamps = st.sampled_from(
    [
        "2026-11-18T08:00:00Z",
        "2026-11-18T08:00:00.25+05:45",
        "2026-11-18t08:00:00z",
        "2026-11-18T08:00:00",
        "2026-11-18",
        "yesterday",
        "2026-11-18T08:00:00+0100",
        None,
        5,
    ]
)
props = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["a", "b"]), scalars, max_size=2),
    st.just([1]),
    st.just({"a": {"b": 1}}),
    st.just("x"),
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, alias, strategy in [
        ("id", "customerEventId", field_values),
        ("eventType", None, field_values),
        ("customerId", "customerAlias", field_values),
        ("timestamp", "eventTimestamp", stamps),
        ("properties", "eventProperties", props),
    ]:
        # The name, its alias, or neither; never both with different values
        # (a rule the schema cannot state).
        where = draw(st.sampled_from(["name", "alias", "none"] if alias else ["name", "none"]))
        if where != "none":
            doc[alias if where == "alias" and alias else name] = draw(strategy)
    if draw(st.booleans()):
        doc["extra"] = draw(scalars)
    return doc


@settings(max_examples=500, deadline=None)
@given(doc=documents())
# Valid but for nesting: all three must accept it (the schema once refused it).
@example(doc={**GOOD, "properties": {"a": {"b": [1, None]}}})
@example(doc={**GOOD, "eventProperties": {"a": [{"b": "x"}]}})
def test_decoder_model_and_schema_agree(doc: dict[str, Any]) -> None:
    decoded = decode_event(
        encode(doc), NOW, DecodeLimits(max_lateness_seconds=1e12, max_future_seconds=1e12)
    )
    decoder_ok = isinstance(decoded, UsageEvent)
    assert model_accepts(doc) == decoder_ok, (doc, decoded)
    assert VALIDATOR.is_valid(doc) == decoder_ok, (doc, decoded)


def test_example_events_are_valid() -> None:
    lines = (ROOT / "schemas" / "examples" / "events.jsonl").read_bytes().splitlines()
    assert len(lines) >= 5
    for line in lines:
        assert isinstance(
            decode_event(
                line, NOW, DecodeLimits(max_lateness_seconds=1e12, max_future_seconds=1e12)
            ),
            UsageEvent,
        )
        document = json.loads(line)
        VALIDATOR.validate(document)
        assert model_accepts(document)
