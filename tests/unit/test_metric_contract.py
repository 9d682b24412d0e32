"""The usage metric definition contract: every refusal names the field and why."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.contracts.metric import (
    UID_PATTERN,
    MetricDefinitionError,
    changed_fields,
    immutable_changes,
    parse_metric,
    uid_from_name,
)
from tally.core.engine import aggregate, new_core
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "usage-metric.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
EXAMPLES = json.loads((ROOT / "schemas" / "examples" / "metrics.json").read_text())["metrics"]

BASE: dict[str, Any] = {
    "uid": "api_calls",
    "name": "API calls",
    "eventType": "api_call",
    "aggregationType": "COUNT",
}


def with_(**changes: Any) -> dict[str, Any]:
    doc = {**BASE, **changes}
    return {k: v for k, v in doc.items() if v is not ...}


# (definition, field named in the error, words the reason must contain)
INVALID: list[tuple[dict[str, Any], str, str]] = [
    (with_(uid=...), "uid", "required"),
    (with_(uid="API_calls"), "uid", "pattern"),
    (with_(uid="1calls"), "uid", "pattern"),
    (with_(uid="a" * 129), "uid", "pattern"),
    (with_(uid="api-calls"), "uid", "pattern"),
    (with_(uid=7), "uid", "string"),
    (with_(name=...), "name", "required"),
    (with_(name=""), "name", "at least 1"),
    (with_(name="   "), "name", "blank"),
    (with_(eventType=...), "eventType", "required"),
    (with_(eventType=""), "eventType", "at least 1"),
    (with_(eventType="e" * 257), "eventType", "at most 256"),
    (with_(aggregationType="MEDIAN"), "aggregationType", "COUNT"),
    (with_(aggregationType="count"), "aggregationType", "COUNT"),
    (with_(aggregationType="SUM"), "aggregationProperty", "required for SUM"),
    (with_(aggregationType="UNIQUE"), "aggregationProperty", "required for UNIQUE"),
    (with_(aggregationProperty="bytes"), "aggregationProperty", "not allowed for COUNT"),
    (with_(aggregationType="SUM", aggregationProperty=""), "aggregationProperty", "at least 1"),
    (with_(metricType="TIERED"), "metricType", "SIMPLE"),
    (with_(metricType="GROUPED"), "groupingProperty", "required when metricType is GROUPED"),
    (
        with_(groupingProperty="endpoint"),
        "groupingProperty",
        "only allowed when metricType is GROUPED",
    ),
    (with_(propertyFilters={"status": 200}), "propertyFilters.status", "list"),
    (with_(propertyFilters={"status": []}), "propertyFilters.status", "at least 1"),
    (with_(propertyFilters={"status": [None]}), "propertyFilters.status.0", "null"),
    (
        with_(propertyFilters={"status": [{"gt": 1}]}),
        "propertyFilters.status.0",
        "string, number or boolean",
    ),
    (with_(propertyFilters={"": ["x"]}), "propertyFilters", "at least 1"),
    (with_(propertyFilters={"s": [float("nan")]}), "propertyFilters.s.0", "finite"),
    (with_(propertyFilters={"s": list(range(1001))}), "propertyFilters.s", "at most 1000"),
    (
        with_(propertyFilters={"a": ["x"]}, propertiesToNegate=["b"]),
        "propertiesToNegate",
        "not a key of propertyFilters",
    ),
    (
        with_(propertyFilters={"a": ["x"]}, propertiesToNegate=["a", "a"]),
        "propertiesToNegate",
        "once",
    ),
    (with_(propertiesToNegate="a"), "propertiesToNegate", "list"),
    (with_(caseSensitive="no"), "caseSensitive", "boolean"),
    (with_(caseSensitive=0), "caseSensitive", "boolean"),
    (with_(timeUnits=[]), "timeUnits", "at least 1"),
    (with_(timeUnits=["minute"]), "timeUnits.0", "hour"),
    (with_(timeUnits=["day", "day"]), "timeUnits", "once"),
    (with_(timeUnits="day"), "timeUnits", "list"),
    (with_(timezone="Mars/Olympus_Mons"), "timezone", "not an IANA time zone"),
    (with_(timezone="utc+2"), "timezone", "not an IANA time zone"),
    (with_(deletedAt="yesterday"), "deletedAt", "RFC 3339"),
    (with_(deletedAt=1700000000), "deletedAt", "RFC 3339"),
    (with_(deletedAt="2026-01-01T00:00:00"), "deletedAt", "RFC 3339"),
    (with_(aggregation_type="COUNT"), "aggregation_type", "unknown field"),
    (with_(filters={"a": ["x"]}), "filters", "unknown field"),
    (with_(description="d" * 4097), "description", "at most 4096"),
    (with_(unit="u" * 65), "unit", "at most 64"),
    (with_(name="a\x00b"), "name", "NUL"),
    (with_(propertyFilters={"s": ["a\x00"]}), "propertyFilters", "NUL"),
    (with_(propertyFilters={"s": [2**64]}), "propertyFilters.s.0", "64 bits"),
    (with_(deletedAt="0001-01-01T00:00:00+05:00"), "deletedAt", "years 1 and 9999"),
    (
        with_(
            source="EXTERNAL",
            eventType=...,
            aggregationType="LATEST",
            aggregationProperty=...,
            valueType="STRING",
            storageUnit="cents",
        ),
        "storageUnit",
        "cents holds numbers",
    ),
    (with_(targetValue=100), "targetValue", "together"),
    (with_(periodType="calendar", periodValue="7-day"), "periodValue", "rolling period only"),
    (
        with_(source="EXTERNAL", eventType=..., aggregationType="MAX", isSnapshot=True),
        "isSnapshot",
        "a snapshot is LATEST",
    ),
    # Exante's fields belong to EXTERNAL metrics: an EVENTS metric never respects them.
    (with_(storageUnit="cents"), "storageUnit", "only allowed when source is EXTERNAL"),
    (with_(contextType="USER"), "contextType", "only allowed when source is EXTERNAL"),
    (with_(valueKind="days"), "valueKind", "only allowed when source is EXTERNAL"),
    (
        with_(periodDefinition="trailing_30_days"),
        "periodDefinition",
        "only allowed when source is EXTERNAL",
    ),
    (with_(isSnapshot=True), "isSnapshot", "only allowed when source is EXTERNAL"),
    (with_(source="EXTERNAL"), "eventType", "not allowed when source is EXTERNAL"),
]

SUM = {"aggregationType": "SUM", "aggregationProperty": "v"}
GROUPED = {"metricType": "GROUPED"}
# The metering model's fields: kinds, valueType, several grouping keys, paths, presence.
INVALID_MODEL: list[tuple[dict[str, Any], str, str]] = [
    (with_(aggregationType="MAX"), "aggregationProperty", "required for MAX"),
    (with_(aggregationType="MIN"), "aggregationProperty", "required for MIN"),
    (with_(aggregationType="AVG"), "aggregationProperty", "required for AVG"),
    (with_(aggregationType="LATEST"), "aggregationProperty", "required for LATEST"),
    (with_(**SUM, valueType="STRING"), "valueType", "only allowed with LATEST"),
    (with_(valueType="STRING"), "valueType", "only allowed with LATEST"),
    (
        with_(aggregationType="UNIQUE", aggregationProperty="u", valueType="STRING"),
        "valueType",
        "only allowed with LATEST",
    ),
    (
        with_(aggregationType="AVG", aggregationProperty="v", valueType="STRING"),
        "valueType",
        "only allowed with LATEST",
    ),
    (with_(valueType="TEXT"), "valueType", "NUMBER"),
    (with_(valueType="string"), "valueType", "NUMBER"),
    (
        with_(**GROUPED, groupingProperties=["a", "b", "c", "d", "e", "f"]),
        "groupingProperties",
        "at most 5",
    ),
    (with_(**GROUPED, groupingProperties=[]), "groupingProperties", "at least 1"),
    (
        with_(**GROUPED, groupingProperty="a", groupingProperties=["b"]),
        "groupingProperties",
        "not both",
    ),
    (with_(groupingProperties=["a"]), "groupingProperties", "only allowed when metricType"),
    (
        with_(**GROUPED, groupingProperties=["a", "$.a"]),
        "groupingProperties[1]",
        "same property",
    ),
    (with_(**GROUPED, groupingProperties=["a", 1]), "groupingProperties.1", "string"),
    (with_(**SUM | {"aggregationProperty": "$.items[*].n"}), "aggregationProperty", "wildcards"),
    (with_(**SUM | {"aggregationProperty": "$..n"}), "aggregationProperty", "recursive"),
    (
        with_(**SUM | {"aggregationProperty": "$.items[?(@.n>1)]"}),
        "aggregationProperty",
        "filter expressions",
    ),
    (with_(**SUM | {"aggregationProperty": "$.items[-1]"}), "aggregationProperty", "negative"),
    (with_(**SUM | {"aggregationProperty": "$.items[0:2]"}), "aggregationProperty", "slices"),
    (with_(**SUM | {"aggregationProperty": "$.a b"}), "aggregationProperty", "whitespace"),
    (with_(**SUM | {"aggregationProperty": '$["a"]'}), "aggregationProperty", "single quotes"),
    (with_(**SUM | {"aggregationProperty": "$['a"}), "aggregationProperty", "not closed"),
    (with_(**SUM | {"aggregationProperty": "$['a\\n']"}), "aggregationProperty", "escapes"),
    (with_(**SUM | {"aggregationProperty": "$.a[01]"}), "aggregationProperty", "unexpected"),
    (
        with_(**SUM | {"aggregationProperty": "$[1000001]"}),
        "aggregationProperty",
        "at most 1,000,000",
    ),
    (
        with_(**SUM | {"aggregationProperty": "$" + ".a" * 33}),
        "aggregationProperty",
        "at most 32 segments",
    ),
    (with_(**SUM | {"aggregationProperty": "p" * 257}), "aggregationProperty", "at most 256"),
    (with_(**GROUPED, groupingProperty="$.*"), "groupingProperty", "wildcards"),
    (with_(**GROUPED, groupingProperties=["a", "$.b.*"]), "groupingProperties[1]", "wildcards"),
    (with_(propertyFilters={"$.a[*]": ["x"]}), "propertyFilters.$.a[*]", "wildcards"),
    (
        with_(propertyFilters={"a": ["x"], "$.a": ["y"]}),
        "propertyFilters.$.a",
        "same property",
    ),
    (with_(presenceFilters={"$.a": "yes"}), "presenceFilters.$.a", "boolean"),
    (with_(presenceFilters={"$.a": 1}), "presenceFilters.$.a", "boolean"),
    (with_(presenceFilters={"$..a": True}), "presenceFilters.$..a", "recursive"),
    (
        with_(propertyFilters={"a": ["x"]}, presenceFilters={"$['a']": True}),
        "presenceFilters.$['a']",
        "also in propertyFilters",
    ),
    (with_(presenceFilters=["a"]), "presenceFilters", "dictionary"),
]
INVALID += INVALID_MODEL


@pytest.mark.parametrize(
    ("doc", "field", "reason"), INVALID, ids=[f"{i}-{c[1]}" for i, c in enumerate(INVALID)]
)
def test_invalid_definition_is_refused_naming_field_and_reason(
    doc: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(MetricDefinitionError) as caught:
        parse_metric(doc)
    errors = caught.value.errors
    assert any(e.field == field for e in errors), errors
    named = next(e for e in errors if e.field == field)
    assert reason.lower() in named.reason.lower(), named
    assert field in str(caught.value)


def test_at_least_25_invalid_cases() -> None:
    assert len(INVALID) >= 25
    assert len(INVALID_MODEL) >= 25


def test_a_non_object_is_refused() -> None:
    with pytest.raises(MetricDefinitionError, match="must be an object"):
        parse_metric(["not", "a", "definition"])


@pytest.mark.parametrize("doc", EXAMPLES, ids=[d["uid"] for d in EXAMPLES])
def test_examples_are_valid_for_model_and_schema(doc: dict[str, Any]) -> None:
    parsed = parse_metric(doc)
    assert parsed.uid == doc["uid"]
    VALIDATOR.validate(doc)
    assert parse_metric(parsed.to_document()) == parsed


def test_defaults() -> None:
    parsed = parse_metric(BASE)
    assert parsed.metric_type == "SIMPLE"
    assert parsed.case_sensitive is True
    assert [u.value for u in parsed.time_units] == ["day", "month"]
    assert parsed.timezone == "UTC"
    assert parsed.property_filters == {}
    assert parsed.value_type == "NUMBER"
    assert parsed.grouping_properties is None
    assert parsed.presence_filters == {}


def test_the_metering_model_fields_are_accepted_and_round_trip() -> None:
    doc = with_(
        aggregationType="LATEST",
        valueType="STRING",
        aggregationProperty="$.plan['tier name']",
        metricType="GROUPED",
        groupingProperties=["region", "$.items[0].sku", "$['a.b']"],
        presenceFilters={"$.usage.cached": True, "gone": False},
        propertyFilters={"$.usage.kind": ["chat"]},
    )
    parsed = parse_metric(doc)
    VALIDATOR.validate(doc)
    assert parse_metric(parsed.to_document()) == parsed
    for kind in ("MAX", "MIN", "AVG", "LATEST"):
        parse_metric(with_(aggregationType=kind, aggregationProperty="$.usage.n"))


def test_names_starting_with_a_dollar_stay_plain_names() -> None:
    """`$distinct_id`, `$os` (analytics SDKs) were valid names before paths
    existed; only `$.` and `$[` start a path, so stored definitions still load."""
    for name in ("$distinct_id", "$os", "$", "$$", "$*"):
        doc = with_(aggregationType="SUM", aggregationProperty=name)
        VALIDATOR.validate(doc)
        assert parse_metric(doc).aggregation_property == name
    core = new_core(
        MetricIndex([parse_metric(with_(aggregationType="SUM", aggregationProperty="$os"))])
    )
    event = {
        "id": "e1",
        "eventType": "api_call",
        "customerId": "c",
        "timestamp": "2026-11-18T08:00:00Z",
        "properties": {"$os": 5, "os": 7},
    }
    deltas = aggregate(core, [json.dumps(event).encode()], 1_795_000_000.0, DecodeLimits())
    assert {value for (_, _, value) in deltas.snapshot().values()} == {5}


def test_respelling_a_path_is_not_a_change() -> None:
    old = parse_metric(
        with_(
            aggregationType="SUM",
            aggregationProperty="$.usage.n",
            metricType="GROUPED",
            groupingProperties=["a", "$.b"],
            presenceFilters={"$.c": True},
        )
    )
    same = parse_metric(
        with_(
            aggregationType="SUM",
            aggregationProperty="$['usage'].n",
            metricType="GROUPED",
            groupingProperties=["$.a", "b"],
            presenceFilters={"c": True},
        )
    )
    assert immutable_changes(old, same) == []
    reordered = parse_metric(
        with_(
            aggregationType="SUM",
            aggregationProperty="$.usage.n",
            metricType="GROUPED",
            groupingProperties=["$.b", "a"],
            presenceFilters={"$.c": False},
        )
    )
    # The order of grouping keys is the order of the group key's elements.
    assert immutable_changes(old, reordered) == ["groupingProperties", "presenceFilters"]


# Rules only the model can check (the schema's $comment says so): JSON Schema
# accepts these documents, the model refuses them.
MODEL_ONLY = [
    ("propertiesToNegate", "not a key"),
    ("timezone", "IANA"),
    ("name", "NUL"),
    ("propertyFilters", "NUL"),
    ("propertyFilters.s.0", "64 bits"),
    ("deletedAt", "years 1 and 9999"),
    ("groupingProperties[1]", "same property"),
    ("propertyFilters.$.a", "same property"),
    ("presenceFilters.$['a']", "also in propertyFilters"),
    ("aggregationProperty", "at most 1,000,000"),
    ("aggregationProperty", "at most 32 segments"),
    ("storageUnit", "cents holds numbers"),
    ("targetValue", "together"),
    ("periodValue", "rolling period only"),
    ("storageUnit", "only allowed when source"),
    ("contextType", "only allowed when source"),
    ("valueKind", "only allowed when source"),
    ("periodDefinition", "only allowed when source"),
]


def model_only(field: str, reason: str) -> bool:
    return any(field == f and word in reason for f, word in MODEL_ONLY)


@pytest.mark.parametrize(
    ("doc", "field", "reason"), INVALID, ids=[f"{i}-{c[1]}" for i, c in enumerate(INVALID)]
)
def test_schema_refuses_what_the_model_refuses(
    doc: dict[str, Any], field: str, reason: str
) -> None:
    try:
        document = json.loads(json.dumps(doc, allow_nan=False))  # as a JSON file carries it
    except ValueError:
        assert field.startswith("propertyFilters"), "only NaN cannot be written as JSON"
        return
    if model_only(field, reason):
        assert VALIDATOR.is_valid(document), "the schema learned a rule: update MODEL_ONLY"
    else:
        assert not VALIDATOR.is_valid(document), f"schema accepted what the model refuses: {doc}"


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """Definitions assembled field by field from valid and invalid choices."""
    choices: dict[str, list[Any]] = {
        "uid": ["m", "api_calls", "Bad", ...],
        "name": ["n", "", ...],
        "eventType": ["e", "", ...],
        "aggregationType": ["COUNT", "SUM", "UNIQUE", "MAX", "MIN", "LATEST", "AVG", "X", ...],
        "aggregationProperty": ["v", "$.usage.n", "$.a[*]", "$", None, "", ...],
        "valueType": ["NUMBER", "STRING", "TEXT", ...],
        "metricType": ["SIMPLE", "GROUPED", None, "X", ...],
        "groupingProperty": ["g", "$.a.b", "$..g", None, ...],
        "groupingProperties": [["a"], ["a", "$.b[0]", "$['c.d']"], [], list("abcdef"), None, ...],
        "propertyFilters": [{}, {"p": ["x", 1, True]}, {"$.p.q": [1]}, {"p": []}, {"p": "x"}, ...],
        "presenceFilters": [{}, {"$.p.q": True}, {"z": False}, {"$.p[-1]": True}, {"p": 1}, ...],
        "caseSensitive": [True, False, "yes", ...],
        "timeUnits": [["hour"], ["day", "month"], [], ["day", "day"], ["minute"], ...],
        "timezone": ["UTC", "Asia/Kathmandu", ...],
        "deletedAt": [None, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00+05:45", ...],
        "source": ["EVENTS", "EXTERNAL", "X", ...],
        "isSnapshot": [True, False, ...],
        "extra": [1, ...],
    }
    doc = {}
    for key, options in choices.items():
        value = draw(st.sampled_from(options))
        if value is not ...:
            doc[key] = value
    return doc


@settings(max_examples=500, deadline=None)
@given(doc=near_valid())
def test_model_and_schema_agree(doc: dict[str, Any]) -> None:
    try:
        parse_metric(doc)
        model_ok = True
    except MetricDefinitionError:
        model_ok = False
    schema_ok = VALIDATOR.is_valid(doc)
    assert model_ok == schema_ok, doc


def test_schema_names_exactly_the_model_fields() -> None:
    from tally.contracts.metric import UsageMetricDefinition

    aliases = {f.alias for f in UsageMetricDefinition.model_fields.values()}
    assert aliases == set(SCHEMA["properties"])
    required = {f.alias for f in UsageMetricDefinition.model_fields.values() if f.is_required()}
    assert required == set(SCHEMA["required"])


def test_immutable_changes_are_named_and_reordering_is_not_a_change() -> None:
    old = parse_metric(with_(propertyFilters={"s": [1, "a"]}, timeUnits=["day", "month"]))
    same = parse_metric(
        with_(propertyFilters={"s": ["a", 1.0]}, timeUnits=["month", "day"], name="Renamed")
    )
    assert immutable_changes(old, same) == []
    assert changed_fields(old, same) == ["name"]
    changed = parse_metric(with_(eventType="other", caseSensitive=False, timezone="Europe/Berlin"))
    assert immutable_changes(old, changed) == [
        "eventType",
        "propertyFilters",
        "caseSensitive",
        "timezone",
    ]
    typed = parse_metric(with_(propertyFilters={"s": [True, "a"]}, timeUnits=["day", "month"]))
    assert immutable_changes(old, typed) == ["propertyFilters"]  # true is not 1


def test_every_broken_cross_field_rule_is_named_at_once() -> None:
    with pytest.raises(MetricDefinitionError) as refused:
        parse_metric(
            {
                "uid": "m",
                "name": "Sent",
                "eventType": "message_sent",
                "aggregationType": "SUM",
                "metricType": "GROUPED",
                "targetValue": 1,
            }
        )
    assert [e.field for e in refused.value.errors] == [
        "aggregationProperty",
        "targetValue",
        "groupingProperty",
    ]


def test_an_external_metric_has_no_events() -> None:
    external = parse_metric(
        {
            "uid": "dso",
            "name": "DSO",
            "source": "EXTERNAL",
            "aggregationType": "LATEST",
            "isSnapshot": True,
            "valueKind": "days",
        }
    )
    assert external.event_type is None
    assert "source" in external.to_document()
    with pytest.raises(MetricDefinitionError) as refused:
        parse_metric(
            {
                "uid": "x",
                "name": "X",
                "source": "EXTERNAL",
                "eventType": "e",
                "aggregationType": "UNIQUE",
                "aggregationProperty": "u",
                "isSnapshot": True,
            }
        )
    assert sorted(e.field for e in refused.value.errors) == [
        "aggregationProperty",
        "aggregationType",
        "eventType",
        "isSnapshot",
    ]
    events = parse_metric({"uid": "c", "name": "C", "eventType": "e", "aggregationType": "COUNT"})
    assert "source" not in events.to_document()  # the default is not written


EXTERNAL = {"uid": "x", "name": "X", "source": "EXTERNAL", "aggregationType": "SUM"}


def external_errors(**changes: Any) -> list[tuple[str, str]]:
    with pytest.raises(MetricDefinitionError) as refused:
        parse_metric({**EXTERNAL, **changes})
    return [(e.field, e.reason) for e in refused.value.errors]


@pytest.mark.parametrize("units", [["day", "month"], ["day", "month", "year"], ["hour"], ["week"]])
def test_an_external_metric_has_exactly_one_day_month_or_year_unit(units: list[str]) -> None:
    # The usage query covers a window with the largest stored unit that fits:
    # right only if every unit held the same values, which posted values do not.
    errors = external_errors(timeUnits=units)
    assert [field for field, _ in errors] == ["timeUnits"], errors
    assert "exactly one time unit" in errors[0][1]


def test_an_external_metric_without_units_is_kept_by_day() -> None:
    assert parse_metric(EXTERNAL).time_units == ["day"]
    for unit in ("day", "month", "year"):
        assert parse_metric({**EXTERNAL, "timeUnits": [unit]}).time_units == [unit]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"periodDefinition": "month_to_date"}, "periodDefinition"),
        ({"periodDefinition": "trailing_30_days"}, "periodDefinition"),
        ({"periodDefinition": "calendar_month"}, "periodDefinition"),
        ({"valueKind": "percentage"}, "valueKind"),
        ({"valueKind": "ratio"}, "valueKind"),
        ({"valueKind": "days"}, "valueKind"),
    ],
)
def test_an_external_sum_of_overlapping_or_non_additive_values_is_refused(
    changes: dict[str, str], field: str
) -> None:
    assert [f for f, _ in external_errors(**changes)] == [field]
    # The same values as LATEST are fine: never summed across periods.
    assert parse_metric({**EXTERNAL, **changes, "aggregationType": "LATEST"}).source == "EXTERNAL"
    summed = {**EXTERNAL, "periodDefinition": "as_of_date", "valueKind": "currency"}
    assert parse_metric(summed).aggregation_type == "SUM"


@pytest.mark.parametrize(
    ("name", "uid"),
    [
        ("Total length of sent messages.", "total_length_of_sent_messages"),
        ("Daily Active Users", "daily_active_users"),
        ("  2024 ARR (USD) ", "m_2024_arr_usd"),
        ("Ünïcode", "unicode"),
        ("\uff26\uff55\uff4c\uff4c", "full"),  # fullwidth letters fold to Latin
        ("!!!", "m_" + hashlib.sha256(b"!!!").hexdigest()[:12]),
        ("日本語", "m_" + hashlib.sha256("日本語".encode()).hexdigest()[:12]),
        ("a" * 300, "a" * 128),
    ],
)
def test_a_uid_derived_from_a_name_is_stable_and_valid(name: str, uid: str) -> None:
    assert uid_from_name(name) == uid
    assert re.match(UID_PATTERN, uid_from_name(name))


def test_names_without_latin_letters_get_different_uids() -> None:
    assert uid_from_name("日本語") != uid_from_name("Ελληνικά") != uid_from_name("!!!")
