"""Cursors and request bodies at the API's edge (no services)."""

from __future__ import annotations

import pytest

from tally.api.body import _storable, fingerprint
from tally.api.cursor import decode, encode
from tally.api.errors import ApiError, field_errors
from tally.api.models import parse_moment
from tally.contracts.metric import FieldError


def test_cursors_round_trip_and_are_url_safe() -> None:
    key = ("api_calls", "ácme/é?&=", "day", -1_234_567, "")
    cursor = encode("metric-values", key)
    assert cursor.replace("-", "").replace("_", "").isalnum()
    assert decode("metric-values", cursor, (str, str, str, int, str)) == key


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "bm90IGpzb24",  # "not json"
        encode("usage-metrics", ["a"]),  # another list's cursor
        encode("metric-values", ["a", "b", "c", "1", "d"]),  # wrong types
        encode("metric-values", ["a\x00", "b", "c", 1, "d"]),  # NUL
        encode("metric-values", ["a", "b", "c", 1]),  # too short
    ],
)
def test_foreign_or_mangled_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode("metric-values", cursor, (str, str, str, int, str))
    assert caught.value.status == 422
    assert caught.value.items[0]["loc"] == ["query", "after"]


def test_what_postgresql_cannot_store_is_found_with_its_location() -> None:
    problems: list[dict[str, object]] = []
    _storable(
        {"a": ["ok", "x\x00"], "b\x00": 1, "c": 2**63, "d": -(2**63), "e": True}, ["body"], problems
    )
    assert [p["loc"] for p in problems] == [["body", "a", 1], ["body", "b\x00"], ["body", "c"]]


def test_fingerprints_ignore_key_order_but_not_values_or_operation() -> None:
    assert fingerprint("op", {"a": 1, "b": [1, 2]}) == fingerprint("op", {"b": [1, 2], "a": 1})
    assert fingerprint("op", {"a": 1}) != fingerprint("op", {"a": 2})
    assert fingerprint("op", {"a": 1}) != fingerprint("other", {"a": 1})


def test_contract_field_errors_keep_their_field_in_loc() -> None:
    error = field_errors(
        [
            FieldError("aggregationProperty", "required for SUM", "metric_rule"),
            FieldError("propertyFilters.plan.0", "must be a string", "string_type"),
            FieldError("(definition)", "must be an object"),
        ]
    )
    assert error.status == 422
    assert [i["loc"] for i in error.items] == [
        ["body", "aggregationProperty"],
        ["body", "propertyFilters", "plan", 0],
        ["body"],
    ]
    assert error.items[0] == {
        "loc": ["body", "aggregationProperty"],
        "msg": "required for SUM",
        "type": "metric_rule",
    }


def test_moments_are_rfc3339_with_an_offset_and_in_range() -> None:
    moment = parse_moment("2026-03-01t01:02:03.123456789z")
    assert moment is not None
    assert moment.isoformat() == "2026-03-01T01:02:03.123456+00:00"
    assert parse_moment("2026-03-01T01:00:00+01:00") == parse_moment("2026-03-01T00:00:00Z")
    for refused in ("2026-03-01", "2026-03-01T00:00:00", "0001-01-01T00:00:00+01:00", "1700000000"):
        assert parse_moment(refused) is None
