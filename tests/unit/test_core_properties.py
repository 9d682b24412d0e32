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


# -- MAX, MIN, AVG, LATEST, paths, several grouping keys, presence filters ----------

# Paths into the nested properties `raw_kind_events` writes; each names a
# different property (a definition may not list one twice under two spellings).
PATHS = ["p", "q", "$.n.x", "$['n']['y']", "$.l[0]", "$.l[1].z", "$['odd key']", "$.n"]
NEW_KINDS = ["MAX", "MIN", "AVG", "LATEST", "STRING", "COUNT", "SUM", "UNIQUE"]
# Text values for groups and STRING values: case twins, escapes JSON must write.
TEXT_LITERALS = [
    '"ß"',
    '"SS"',
    '"ss"',
    '"İ"',
    '"i̇"',
    '"Ab"',
    '"aB"',
    '""',
    '"a\\"b"',
    '"\\n\\u0001"',
]
# Ids with non-ASCII characters; U+FF21 sorts before U+1F600 by code point
# but after it in UTF-16, so a UTF-16 comparison would be caught.
ID_ALPHABET = "aAzéß日\uff21😀"
# Few distinct instants (ties) and spread ones (late events, period boundaries).
INSTANTS = [1_800_000_000, 1_800_000_000, 1_800_003_600, 1_799_996_400, 1_800_086_400]


def kind_definition(draw: st.DrawFn, n: int, kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "uid": f"k{n}",
        "name": f"kind {n}",
        "eventType": draw(st.sampled_from(EVENT_TYPES[:2])),
        "aggregationType": "LATEST" if kind == "STRING" else kind,
        "caseSensitive": draw(st.booleans()),
        "timeUnits": draw(st.lists(st.sampled_from(UNITS), min_size=1, max_size=2, unique=True)),
        "timezone": draw(st.sampled_from(ZONES)),
    }
    if kind == "STRING":
        doc["valueType"] = "STRING"
    if kind != "COUNT":
        doc["aggregationProperty"] = draw(st.sampled_from(PATHS))
    grouping = draw(st.sampled_from(["none", "one", "several"]))
    if grouping == "one":
        doc["metricType"] = "GROUPED"
        key = draw(st.sampled_from(PATHS))
        if draw(st.booleans()):
            doc["groupingProperty"] = key
        else:
            doc["groupingProperties"] = [key]
    elif grouping == "several":
        doc["metricType"] = "GROUPED"
        doc["groupingProperties"] = draw(
            st.lists(st.sampled_from(PATHS), min_size=2, max_size=5, unique=True)
        )
    filtered = draw(st.lists(st.sampled_from(PATHS), max_size=1, unique=True))
    doc["propertyFilters"] = {
        name: draw(st.lists(st.sampled_from(FILTER_VALUES), min_size=1, max_size=4))
        for name in filtered
    }
    present = draw(
        st.lists(st.sampled_from([p for p in PATHS if p not in filtered]), max_size=2, unique=True)
    )
    doc["presenceFilters"] = {name: draw(st.booleans()) for name in present}
    return doc


@st.composite
def kind_definitions(draw: st.DrawFn, kinds: list[str] = NEW_KINDS) -> list[dict[str, Any]]:
    return [
        kind_definition(draw, n, draw(st.sampled_from(kinds)))
        for n in range(draw(st.integers(1, 4)))
    ]


@st.composite
def raw_kind_events(draw: st.DrawFn, max_size: int = 30, tied: bool = False) -> list[bytes]:
    """Events with nested properties, unique non-ASCII ids and tied timestamps
    (`tied`: two instants only, so most events tie with another)."""
    ids = draw(
        st.lists(st.text(ID_ALPHABET, min_size=1, max_size=3), max_size=max_size, unique=True)
    )
    scalar = st.sampled_from(VALUE_LITERALS + TEXT_LITERALS)
    result = []
    for event_id in ids:
        if tied:
            seconds, micros = draw(st.sampled_from(INSTANTS[1:3])), 0
        else:
            seconds = draw(st.sampled_from(INSTANTS)) + draw(st.sampled_from([0, 0, 1, 59]))
            micros = draw(st.sampled_from([0, 0, 1, 999_999]))
        offset = draw(st.sampled_from(OFFSETS))
        moment = datetime.fromtimestamp(seconds, timezone(offset)) + timedelta(microseconds=micros)
        stamp = moment.isoformat().replace("+00:00", "Z")
        shapes = {
            "p": scalar,
            "q": scalar,
            "odd key": scalar,
            # Objects, with a repeated key (the last counts), or not objects at all.
            "n": st.one_of(
                scalar,
                st.builds(lambda x, y: f'{{"x":{x},"y":{y}}}', scalar, scalar),
                st.builds(lambda x, y: f'{{"x":{x},"y":{{}},"x":{y}}}', scalar, scalar),
            ),
            "l": st.one_of(
                scalar,
                st.just("[]"),
                st.builds(lambda a, z: f'[{a},{{"z":{z}}}]', scalar, scalar),
                st.builds(lambda a: f"[[{a}],null]", scalar),
            ),
        }
        names = draw(st.lists(st.sampled_from(sorted(shapes)), unique=True))
        body = ",".join(f"{json.dumps(k)}:{draw(shapes[k])}" for k in names)
        fields = [
            f'"id":{json.dumps(event_id, ensure_ascii=False)}',
            f'"eventType":{json.dumps(draw(st.sampled_from(EVENT_TYPES[:2])))}',
            f'"customerId":{json.dumps(draw(st.sampled_from(CUSTOMERS[:2])))}',
            f'"timestamp":"{stamp}"',
            f'"properties":{{{body}}}',
        ]
        result.append(("{" + ",".join(fields) + "}").encode())
    return result


def core_rows(deltas: Deltas, docs: list[dict[str, Any]]) -> dict[reference.RefKey, reference.Row]:
    """Every rollup of a Deltas as the reference's Row: COUNT, SUM and UNIQUE
    from its snapshot, the other kinds from the columns the flush writes."""
    zones = {d["uid"]: d.get("timezone", "UTC") for d in docs}
    kinds = {d["uid"]: d["aggregationType"] for d in docs}
    out: dict[reference.RefKey, reference.Row] = {}
    for (uid, customer, group, unit, start), (_end, events, value) in deltas.snapshot().items():
        if isinstance(value, frozenset):
            value = Decimal(len(value))
        if kinds[uid] in ("COUNT", "SUM", "UNIQUE"):
            key = (uid, customer, group, unit, reference.local_period(start, unit, zones[uid]))
            out[key] = reference.Row(value, events)
    columns = deltas.kind_columns()
    for merge, uid, customer, group, unit, start, end, *rest in zip(*columns, strict=True):
        value, text, total, events, latest_at, latest_id = rest
        assert end > start
        kind = {"max": "MAX", "min": "MIN", "avg": "AVG", "latest": "LATEST"}[merge]
        assert kind == kinds[uid]
        key = (uid, customer, group, unit, reference.local_period(start, unit, zones[uid]))
        assert key not in out, f"two periods of {unit} share the local start {key[4]}"
        out[key] = reference.Row(
            None if value is None else Decimal(value),
            events,
            text,
            None if total is None else Decimal(total),
            latest_at,
            latest_id,
        )
    return out


def kind_rows(core: Core, docs: list[dict[str, Any]], raws: list[bytes]) -> dict[Any, Any]:
    return core_rows(aggregate(core, raws), docs)


@SETTINGS
@given(docs=kind_definitions(), raws=raw_kind_events())
def test_new_kinds_equal_the_reference(docs: list[dict[str, Any]], raws: list[bytes]) -> None:
    assert kind_rows(core_for(docs), docs, raws) == reference.reference_rows(docs, raws)


@SETTINGS
@given(docs=kind_definitions(), raws=raw_kind_events(), data=st.data())
def test_new_kinds_split_batches_merge_to_the_whole(
    docs: list[dict[str, Any]], raws: list[bytes], data: st.DataObject
) -> None:
    core = core_for(docs)
    cut = data.draw(st.integers(0, len(raws)))
    whole = aggregate(core, raws)
    combined = merged(core, [aggregate(core, raws[:cut]), aggregate(core, raws[cut:])])
    assert core_rows(combined, docs) == core_rows(whole, docs)
    assert core_rows(combined, docs) == reference.reference_rows(docs, raws)
    assert combined.snapshot() == whole.snapshot()


@SETTINGS
@given(docs=kind_definitions(), raws=raw_kind_events(), data=st.data())
def test_new_kinds_do_not_depend_on_arrival_order(
    docs: list[dict[str, Any]], raws: list[bytes], data: st.DataObject
) -> None:
    core = core_for(docs)
    shuffled = data.draw(st.permutations(raws))
    in_order = kind_rows(core, docs, raws)
    assert kind_rows(core, docs, shuffled) == in_order
    assert reference.reference_rows(docs, shuffled) == in_order


@SETTINGS
@given(
    docs=kind_definitions(kinds=["LATEST", "STRING"]),
    raws=raw_kind_events(tied=True),
    data=st.data(),
)
def test_latest_ties_and_late_events(
    docs: list[dict[str, Any]], raws: list[bytes], data: st.DataObject
) -> None:
    """Same instants with different ids, older events after newer ones, and a
    late older event offered to a delta that already has a winner."""
    core = core_for(docs)
    newest_first = sorted(raws, key=lambda raw: reference.event_micros(json.loads(raw)))[::-1]
    cut = data.draw(st.integers(0, len(raws)))
    late = merged(core, [aggregate(core, newest_first[:cut]), aggregate(core, newest_first[cut:])])
    expected = reference.reference_rows(docs, raws)
    assert core_rows(late, docs) == expected == kind_rows(core, docs, newest_first)
    for row in expected.values():
        assert row.latest_at is not None
        assert row.latest_id is not None


@SETTINGS
@given(
    docs=kind_definitions(kinds=["COUNT", "STRING", "UNIQUE"]),
    raws=raw_kind_events(),
)
def test_several_grouping_keys_and_case_folding(
    docs: list[dict[str, Any]], raws: list[bytes]
) -> None:
    """group_key encodes the keys as the spec's JSON array (null for a missing
    key, "" kept apart from it), texts case-folded like Python's casefold."""
    rows = kind_rows(core_for(docs), docs, raws)
    assert rows == reference.reference_rows(docs, raws)
    keys = {d["uid"]: d.get("groupingProperties") or [] for d in docs}
    for uid, _customer, group, _unit, _start in rows:
        if len(keys[uid]) > 1:
            decoded = json.loads(group)
            assert len(decoded) == len(keys[uid])
            assert group == json.dumps(decoded, ensure_ascii=False, separators=(",", ":"))


# Amounts whose averages land on a half at the 13th decimal (or near it).
HALF_LITERALS = [
    "0.0000000000005",
    "-0.0000000000005",
    "0.0000000000015",
    "0.0000000000025",
    "-0.0000000000035",
    "0.00000000000049",
    "0.0000000000001",
    "1",
    "-1",
    "2",
    '"0.0000000000005"',
    "0",
]


@SETTINGS
@given(
    amounts=st.lists(st.sampled_from(HALF_LITERALS), min_size=1, max_size=8),
    cut=st.integers(0, 8),
)
def test_avg_rounds_halves_away_from_zero(amounts: list[str], cut: int) -> None:
    doc = {
        "uid": "avg",
        "name": "avg",
        "eventType": "a",
        "aggregationType": "AVG",
        "aggregationProperty": "p",
        "timeUnits": ["day"],
    }
    raws = [
        (
            f'{{"id":"e{n}","eventType":"a","customerId":"c",'
            f'"timestamp":"2026-11-24T00:00:00Z","properties":{{"p":{amount}}}}}'
        ).encode()
        for n, amount in enumerate(amounts)
    ]
    core = core_for([doc])
    expected = reference.reference_rows([doc], raws)
    assert kind_rows(core, [doc], raws) == expected
    combined = merged(core, [aggregate(core, raws[:cut]), aggregate(core, raws[cut:])])
    assert core_rows(combined, [doc]) == expected
