"""The aggregation core against the brute-force reference, over random input.

Definitions, events and property values are drawn from small pools so that
collisions (same customer, same group, case-folded twins, 1 vs 1.0 vs "1")
happen often. Numbers are written as JSON literal text, including literals a
double cannot hold, so the decoder's exact path is exercised too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally.contracts.metric import parse_metric
from tally.core.engine import Core, Deltas, merged, new_core
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tests import reference

PROPERTY_NAMES = ["p", "q", "r"]
EVENT_TYPES = ["a", "b", "c"]
CUSTOMERS = ["c1", "c2", "C1", "ü"]
ZONES = [
    "UTC",
    "America/Los_Angeles",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Pacific/Chatham",
]
UNITS = ["hour", "day", "week", "month", "quarter", "year"]
# JSON literal texts of property values.
VALUE_LITERALS = [
    '"a"',
    '"A"',
    '"ß"',
    '"SS"',
    '"ss"',
    '"ẞ"',
    '"İ"',
    '"i̇"',
    '"1"',
    '"true"',
    '""',
    "1",
    "1.0",
    "0.1",
    "2.50",
    "-3",
    "1e2",
    "100",
    "0",
    "-0.0",
    "0.1000000000000000000001",
    "12345678901234567890",
    "1e400",
    "true",
    "false",
    "null",
    '"12.50"',
    '"NaN"',
    '"Infinity"',
    '"1e3"',
    '" 1"',
    # Doubles that are not the literal (1e23), too big for the text limit of
    # group values and members (MAX_KEY_BYTES), or beyond any double.
    "1e23",
    "1e300",
    "1e9999999",
    "1e600",
    "1" + "0" * 300,
    '"' + "x" * 513 + '"',
    '"' + "é" * 257 + '"',  # 257 characters, 514 bytes
    '"' + "ß" * 256 + '"',  # 512 bytes, and 512 as "ss"
]
# Python values as a definition file would carry them.
FILTER_VALUES: list[Any] = [
    "a",
    "A",
    "ss",
    "SS",
    "1",
    "true",
    "",
    1,
    1.0,
    0.1,
    2.5,
    100,
    True,
    False,
    "ß",
    1e23,
]
NOW = datetime(2026, 11, 25, tzinfo=UTC).timestamp()
LIMITS = DecodeLimits(max_lateness_seconds=1e12, max_future_seconds=1e12)
OFFSETS = [timedelta(0), timedelta(hours=5, minutes=45), timedelta(hours=-8), timedelta(hours=13)]


@st.composite
def definitions(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 5))
    result = []
    for n in range(count):
        kind = draw(st.sampled_from(["COUNT", "SUM", "UNIQUE"]))
        doc: dict[str, Any] = {
            "uid": f"m{n}",
            "name": f"metric {n}",
            "eventType": draw(st.sampled_from(EVENT_TYPES)),
            "aggregationType": kind,
            "caseSensitive": draw(st.booleans()),
            "timeUnits": draw(
                st.lists(st.sampled_from(UNITS), min_size=1, max_size=3, unique=True)
            ),
            "timezone": draw(st.sampled_from(ZONES)),
        }
        if kind != "COUNT":
            doc["aggregationProperty"] = draw(st.sampled_from(PROPERTY_NAMES))
        if draw(st.booleans()):
            doc["metricType"] = "GROUPED"
            doc["groupingProperty"] = draw(st.sampled_from(PROPERTY_NAMES))
        filtered = draw(st.lists(st.sampled_from(PROPERTY_NAMES), max_size=2, unique=True))
        doc["propertyFilters"] = {
            name: draw(st.lists(st.sampled_from(FILTER_VALUES), min_size=1, max_size=4))
            for name in filtered
        }
        doc["propertiesToNegate"] = [name for name in filtered if draw(st.booleans())]
        result.append(doc)
    return result


@st.composite
def raw_events(draw: st.DrawFn, min_size: int = 0, max_size: int = 40) -> list[bytes]:
    count = draw(st.integers(min_size, max_size))
    result = []
    for n in range(count):
        seconds = draw(st.integers(1_400_000_000, 1_900_000_000))
        micros = draw(st.sampled_from([0, 0, 1, 999_999, 500_000]))
        offset = draw(st.sampled_from(OFFSETS))
        moment = datetime.fromtimestamp(seconds, timezone(offset)) + timedelta(microseconds=micros)
        stamp = moment.isoformat().replace("+00:00", "Z")
        props = {
            name: draw(st.sampled_from(VALUE_LITERALS))
            for name in draw(st.lists(st.sampled_from(PROPERTY_NAMES), unique=True))
        }
        body = ",".join(f"{json.dumps(k)}:{v}" for k, v in props.items())
        aliased = draw(st.booleans())
        fields = [
            f'"{"customerEventId" if aliased else "id"}":"e{n}"',
            f'"eventType":{json.dumps(draw(st.sampled_from(EVENT_TYPES)))}',
            f'"{"customerAlias" if aliased else "customerId"}":{json.dumps(draw(st.sampled_from(CUSTOMERS)))}',
            f'"{"eventTimestamp" if aliased else "timestamp"}":"{stamp}"',
            f'"{"eventProperties" if aliased else "properties"}":{{{body}}}',
        ]
        result.append(("{" + ",".join(fields) + "}").encode())
    return result


def core_for(docs: list[dict[str, Any]]) -> Core:
    return new_core(MetricIndex([parse_metric(d) for d in docs]))


def aggregate(core: Core, raws: list[bytes]) -> Deltas:
    """Every event decoded (none may be refused) and applied, in one batch."""
    batch = core.decode(list(raws), NOW, LIMITS.native())
    assert batch.rejections == [], batch.rejections
    deltas = Deltas(core)
    assert core.apply(deltas, batch, bytes(len(batch))) == []
    return deltas


def as_reference_keys(
    deltas: Deltas, docs: list[dict[str, Any]]
) -> dict[reference.RefKey, tuple[Any, int]]:
    zones = {d["uid"]: d.get("timezone", "UTC") for d in docs}
    out: dict[reference.RefKey, tuple[Any, int]] = {}
    for (uid, customer, group, unit, start), (_end, events, value) in deltas.snapshot().items():
        label = reference.local_period(start, unit, zones[uid])
        key = (uid, customer, group, unit, label)
        assert key not in out, f"two periods of {unit} share the local start {label}"
        if isinstance(value, frozenset):
            value = Decimal(len(value))
        out[key] = (value, events)
    return out


SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(docs=definitions(), raws=raw_events())
def test_core_equals_reference(docs: list[dict[str, Any]], raws: list[bytes]) -> None:
    deltas = aggregate(core_for(docs), raws)
    expected = reference.reference_values(docs, raws)
    assert as_reference_keys(deltas, docs) == expected


@SETTINGS
@given(docs=definitions(), raws=raw_events(), cut=st.integers(0, 40))
def test_split_batches_merge_to_the_whole(
    docs: list[dict[str, Any]], raws: list[bytes], cut: int
) -> None:
    core = core_for(docs)
    whole = aggregate(core, raws)
    left = aggregate(core, raws[:cut])
    right = aggregate(core, raws[cut:])
    combined = merged(core, [left, right])
    assert combined.snapshot() == whole.snapshot()
    assert len(combined) == len(whole)
    assert (
        combined.members
        == whole.members
        == sum(
            len(value) for _, _, value in whole.snapshot().values() if isinstance(value, frozenset)
        )
    )
    assert combined.applied == whole.applied
    assert combined.skipped == whole.skipped
    assert combined.unmatched == whole.unmatched


@SETTINGS
@given(docs=definitions(), raws=raw_events(), data=st.data())
def test_merge_is_associative_and_order_free(
    docs: list[dict[str, Any]], raws: list[bytes], data: st.DataObject
) -> None:
    core = core_for(docs)
    parts = [aggregate(core, raws[i::3]) for i in range(3)]
    left_first = merged(core, [merged(core, parts[:2]), parts[2]])
    right_first = merged(core, [parts[0], merged(core, parts[1:])])
    shuffled = data.draw(st.permutations(parts))
    assert left_first.snapshot() == right_first.snapshot() == merged(core, shuffled).snapshot()


@SETTINGS
@given(docs=definitions(), raws=raw_events(min_size=1))
def test_every_event_is_applied_skipped_or_unmatched(
    docs: list[dict[str, Any]], raws: list[bytes]
) -> None:
    deltas = aggregate(core_for(docs), raws)
    assert deltas.events == len(raws)
    # An event no metric took is counted once as unmatched, never lost silently.
    taken_somewhere = len(raws) - deltas.unmatched
    assert 0 <= taken_somewhere <= len(raws)
    assert taken_somewhere <= sum(deltas.applied.values())


def test_deleted_metrics_do_not_aggregate() -> None:
    doc = {
        "uid": "gone",
        "name": "g",
        "eventType": "a",
        "aggregationType": "COUNT",
        "deletedAt": "2026-01-01T00:00:00Z",
    }
    raw = b'{"id":"1","eventType":"a","customerId":"c","timestamp":"2026-11-24T00:00:00Z"}'
    deltas = aggregate(core_for([doc]), [raw])
    assert deltas.snapshot() == {}
    assert deltas.unmatched == 1
