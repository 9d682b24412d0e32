"""Hostile records: a named catalogue, and Hypothesis strategies that make more.

The catalogue (`DEAD_LETTERS`, `COUNTED`) names each kind of bad or odd record
a producer can send and what Tally must do with it: dead-letter it with a
reason, or count it (exactly, or as a skip). The bad-input integration tests
send all of them; the fuzzer (tests/unit/test_fuzz.py) draws records from
`hostile_records()`, which mixes arbitrary bytes with structure-aware JSON:
numbers of every shape and length, Unicode case twins, surrogates, NUL, deep
nesting, huge keys, duplicate keys, every alias combination and odd timestamps.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp()
EVENT_TYPES = ["a", "b"]
PROPERTY_NAMES = ["p", "q", "r"]
CUSTOMERS = ["c1", "C1", "ß", "ss", "k"]


def stamp(seconds: float, offset_minutes: int = 0) -> str:
    zone = timezone(timedelta(minutes=offset_minutes))
    text = datetime.fromtimestamp(seconds, zone).isoformat()
    return text.replace("+00:00", "Z")


def event_text(
    *,
    now: float = NOW,
    id: str = '"e1"',
    event_type: str = '"a"',
    customer: str = '"c1"',
    timestamp: str | None = None,
    properties: str = "{}",
    extra: str = "",
) -> bytes:
    """An event written field by field as JSON text (values are literal text)."""
    stamp_text = timestamp if timestamp is not None else json.dumps(stamp(now - 3600))
    fields = [
        f'"id":{id}',
        f'"eventType":{event_type}',
        f'"customerId":{customer}',
        f'"timestamp":{stamp_text}',
        f'"properties":{properties}',
    ]
    if extra:
        fields.append(extra)
    return ("{" + ",".join(fields) + "}").encode()


def _without(field: str, now: float) -> bytes:
    doc = json.loads(event_text(now=now))
    del doc[field]
    return json.dumps(doc).encode()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Under the default limits: 64 KiB, 35 days back, 5 minutes ahead.
def dead_letters(now: float = NOW) -> dict[str, tuple[bytes | None, str]]:
    """kind -> (record value, the dead-letter reason it must get)."""
    e = functools.partial(event_text, now=now)
    return {
        "tombstone": (None, "empty"),
        "empty value": (b"", "empty"),
        "oversized": (e(properties='{"p":"' + "x" * 70_000 + '"}'), "oversized"),
        "binary junk": (bytes(range(256)) * 4, "not_json"),
        "invalid UTF-8 in a string": (e().replace(b'"c1"', b'"\xff\xfe"'), "not_json"),
        "lone surrogate": (e(customer='"\\ud800"'), "not_json"),
        "NaN literal": (e(properties='{"p":NaN}'), "not_json"),
        "Infinity literal": (e(properties='{"p":-Infinity}'), "not_json"),
        "trailing garbage": (e() + b"}", "not_json"),
        "truncated document": (e()[:-7], "not_json"),
        "integer of 5000 digits": (e(properties='{"p":' + "9" * 5000 + "}"), "not_json"),
        "JSON array": (b"[" + e() + b"]", "not_an_object"),
        "JSON string": (b'"an event"', "not_an_object"),
        "JSON null": (b"null", "not_an_object"),
        "JSON number": (b"12.5", "not_an_object"),
        "missing id": (_without("id", now), "missing_field"),
        "missing eventType": (_without("eventType", now), "missing_field"),
        "missing customerId": (_without("customerId", now), "missing_field"),
        "missing timestamp": (_without("timestamp", now), "missing_field"),
        "null id": (e(id="null"), "missing_field"),
        "empty id": (e(id='""'), "invalid_field"),
        "id of 257 characters": (e(id=json.dumps("i" * 257)), "invalid_field"),
        "numeric id": (e(id="12"), "invalid_field"),
        "customerId an object": (e(customer='{"id":"c1"}'), "invalid_field"),
        "alias that differs": (e(extra='"customerEventId":"other"'), "invalid_field"),
        "properties an array": (e(properties="[1,2]"), "invalid_field"),
        "NUL in a string": (e(customer='"c\\u0000"'), "invalid_field"),
        "NUL in a property name": (e(properties='{"p\\u0000":1}'), "invalid_field"),
        "timestamp without offset": (e(timestamp='"2026-11-25T10:00:00"'), "bad_timestamp"),
        "timestamp a number": (e(timestamp="1795000000"), "bad_timestamp"),
        "week date": (e(timestamp='"2026-W48-3T10:00:00Z"'), "bad_timestamp"),
        "dot then offset at 20 characters": (
            e(timestamp='"2024-01-01T00:-0::0."'),
            "bad_timestamp",
        ),
        "seconds then a dot": (e(timestamp='"2026-11-25T10:00:00.Z"'), "bad_timestamp"),
        "leap second not at a minute's end": (
            e(timestamp='"2026-11-25T10:58:60Z"'),
            "bad_timestamp",
        ),
        "leap second at minute 59 of a +05:30 clock": (
            e(timestamp='"2026-11-25T10:59:60+05:30"'),
            "bad_timestamp",
        ),
        "non-ASCII digits": (e(timestamp='"２０２６-11-25T10:00:00Z"'), "bad_timestamp"),
        "year 9999": (e(timestamp='"9999-06-01T00:00:00Z"'), "bad_timestamp"),
        "year 10000": (e(timestamp='"10000-01-01T00:00:00Z"'), "bad_timestamp"),
        "year 1899": (e(timestamp='"1899-12-31T23:59:59Z"'), "bad_timestamp"),
        "too late": (e(timestamp=json.dumps(stamp(now - 400 * 86400))), "too_late"),
        "too far ahead": (
            e(timestamp=json.dumps(stamp(now + 86400))),
            "too_far_in_future",
        ),
        "nested 100 levels": (e(extra='"x":' + _nested(100)), "too_deep"),
        "nested 5000 levels": (e(extra='"x":' + _nested(5000)), "too_deep"),
    }


# kind -> an event that is valid and counted (or skipped for one metric), whose
# numbers and texts once crashed the core or take its rare paths. Read by the
# metrics of `COUNTED_METRICS`; the expected result is the reference's.
def counted(now: float = NOW) -> dict[str, bytes]:
    """kind -> an odd but valid event (counted, or skipped for one metric)."""
    e = functools.partial(event_text, now=now)
    good = stamp(now - 3600)
    return {
        "zero with a tiny exponent": e(properties='{"p":0e-300}'),
        "zero with a tiny exponent, exact path": e(
            properties='{"p":0e-300,"q":1.2345678901234567}'
        ),
        "zero with a huge exponent": e(properties='{"p":0e999999999,"q":1e400}'),
        "400-digit decimal": e(properties='{"p":1.' + "1" * 400 + "}"),
        "400-digit decimal, exact path": e(properties='{"p":1.' + "1" * 400 + ',"q":1e400}'),
        "trailing zeros past 30 decimals": e(properties='{"p":2.' + "0" * 60 + "}"),
        "negative zero": e(properties='{"p":-0.0,"q":"-0"}'),
        "sum string with exponent": e(properties='{"p":"1e-9999","q":"0e9999"}'),
        "tiny decimal": e(properties='{"p":1e-999999999}'),
        "huge decimal": e(properties='{"p":1e999999999}'),
        "64-bit overflow integer": e(properties='{"p":18446744073709551616}'),
        "duplicate keys": e(properties='{"p":1,"p":2}', extra='"id":"e1"'),
        "case twins": e(properties='{"p":"STRASSE","q":"straße"}'),
        "dotted i": e(properties='{"p":"İ","q":"i̇"}'),
        "group value of 600 bytes": e(properties='{"r":' + json.dumps("é" * 300) + "}"),
        "huge property name": e(properties='{"' + "k" * 5000 + '":1,"p":3}'),
        "leap second": e(timestamp=json.dumps(stamp(now - 7260)[:14] + "59:60Z")),
        "leap second with fraction at an offset": e(
            timestamp='"' + stamp(now - 7260, 330)[:14] + '29:60.25+05:30"'
        ),
        "lower-case t and z": e(timestamp=json.dumps(good.lower())),
        "nested 31 levels": e(extra='"x":' + _nested(30)),
        "property an array": e(properties='{"p":[1]}'),
        "property an object, LLM usage": e(
            properties='{"usage":{"input_tokens":12,"output_tokens":3},"items":[{"sku":"a"}]}'
        ),
        "properties nested 30 levels": e(properties='{"p":' + _nested(29) + "}"),
        "aliases only": (
            '{"customerEventId":"e1","eventType":"a","customerAlias":"c1",'
            f'"eventTimestamp":{json.dumps(good)},"eventProperties":{{"p":5}}}}'
        ).encode(),
        "aliases equal to the fields": e(
            properties='{"p":5}', extra='"customerEventId":"e1","customerAlias":"c1"'
        ),
        "null properties": e(properties="null"),
        "byte order mark": b"\xef\xbb\xbf" + e(properties='{"p":4}'),
        "escaped backslash before u0000": e(properties='{"p":"C:\\\\u0000"}'),
    }


DEAD_LETTERS = dead_letters()
COUNTED = counted()

COUNTED_METRICS: list[dict[str, Any]] = [
    {"uid": "h_count", "name": "count", "eventType": "a", "aggregationType": "COUNT"},
    {
        "uid": "h_sum_p",
        "name": "sum p",
        "eventType": "a",
        "aggregationType": "SUM",
        "aggregationProperty": "p",
    },
    {
        "uid": "h_sum_q",
        "name": "sum q",
        "eventType": "a",
        "aggregationType": "SUM",
        "aggregationProperty": "q",
        "timeUnits": ["hour", "month"],
        "timezone": "Asia/Kathmandu",
    },
    {
        "uid": "h_unique_p",
        "name": "unique p",
        "eventType": "a",
        "aggregationType": "UNIQUE",
        "aggregationProperty": "p",
        "caseSensitive": False,
    },
    {
        "uid": "h_group_r",
        "name": "by r",
        "eventType": "a",
        "aggregationType": "COUNT",
        "metricType": "GROUPED",
        "groupingProperty": "r",
    },
    {
        "uid": "h_group_p",
        "name": "by p",
        "eventType": "a",
        "aggregationType": "SUM",
        "aggregationProperty": "q",
        "metricType": "GROUPED",
        "groupingProperty": "p",
        "caseSensitive": False,
    },
    {
        "uid": "h_filter",
        "name": "filtered",
        "eventType": "a",
        "aggregationType": "COUNT",
        "propertyFilters": {"p": [1, 0, "straße", 2.0], "q": [True, "x"]},
        "propertiesToNegate": ["q"],
    },
]


# --- strategies ------------------------------------------------------------------------


def _digits(draw: st.DrawFn, low: int, high: int) -> str:
    size = draw(st.integers(low, high))
    if size > 40:  # long runs: cheap to build, varied enough at both ends
        head = draw(st.text("0123456789", min_size=1, max_size=20))
        tail = draw(st.text("0123456789", min_size=1, max_size=20))
        return (head + draw(st.sampled_from("0123456789")) * size + tail)[:size]
    return draw(st.text("0123456789", min_size=size, max_size=size))


@st.composite
def number_literals(draw: st.DrawFn) -> str:
    """JSON number literals of every shape: long mantissas, extreme exponents, zeros."""
    sign = draw(st.sampled_from(["", "", "-"]))
    whole = draw(st.sampled_from(["0", "1", "7"])) if draw(st.booleans()) else None
    if whole is None:
        whole = str(draw(st.integers(1, 9))) + _digits(draw, 0, draw(st.sampled_from([3, 20, 400])))
    text = sign + whole
    if draw(st.booleans()):
        text += "." + _digits(draw, 1, draw(st.sampled_from([2, 16, 40, 500])))
    if draw(st.booleans()):
        exponent = draw(
            st.one_of(
                st.integers(-30, 30),
                st.integers(-400, 400),
                st.sampled_from([999999999, -999999999, 1000000, -1000000, 308, 309, -324]),
            )
        )
        text += (
            draw(st.sampled_from(["e", "E"]))
            + draw(st.sampled_from(["", "+"])) * (exponent >= 0)
            + str(exponent)
        )
    return text


_CASE_TWINS = ["ß", "SS", "ss", "ẞ", "İ", "i̇", "K", "K", "ﬁ", "FI", "ς", "σ", "Σ", "ǅ", "ǆ", "Ǆ"]


@st.composite
def string_literals(draw: st.DrawFn) -> str:
    """JSON string literals: case twins, escapes, surrogates, NUL, long text."""
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return json.dumps(draw(st.sampled_from(_CASE_TWINS)) * draw(st.integers(1, 3)))
    if kind == 1:
        return json.dumps(draw(st.text(max_size=20)), ensure_ascii=draw(st.booleans()))
    if kind == 2:
        escape = draw(
            st.sampled_from(
                ["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000", "\\\\u0000", "\\u00df"]
            )
        )
        return '"a' + escape + 'b"'
    if kind == 3:
        return json.dumps(draw(st.sampled_from(["x", "é", "ß", "€"])) * draw(st.integers(100, 700)))
    if kind == 4:
        return json.dumps(draw(number_literals()))  # a number as a string
    if kind == 5:
        return json.dumps(draw(st.sampled_from(["NaN", "Infinity", " 1", "1,5", "٣", "0x10", ""])))
    return json.dumps(draw(st.sampled_from(["a", "A", "1", "true", "12.50"])))


@st.composite
def scalar_literals(draw: st.DrawFn) -> str:
    return draw(
        st.one_of(
            number_literals(),
            string_literals(),
            st.sampled_from(["true", "false", "null", "1", "1.0", "0", "-0.0", "1e23", "1e400"]),
        )
    )


@st.composite
def timestamp_literals(draw: st.DrawFn) -> str:
    """Valid RFC 3339 times near NOW at odd offsets, and near misses."""
    seconds = NOW + draw(st.integers(-40 * 86400, 600))
    offset = draw(st.sampled_from([0, 0, 330, 345, -480, 780, -720, 840]))
    text = stamp(seconds, offset)
    mutation = draw(st.integers(0, 9))
    if mutation == 1:
        text = text.lower()
    elif mutation == 2:
        text = text[:19] + "." + _digits(draw, 1, 12) + text[19:]
    elif mutation == 3:
        text = text[:17] + "60" + text[19:]  # a leap second (valid only at minute 59)
    elif mutation == 4:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=3)) + text[cut + draw(st.integers(0, 3)) :]
    elif mutation == 5:
        text = draw(st.text(max_size=45))
    elif mutation == 6:
        text = text[:10] + draw(st.sampled_from(["t", " ", "_"])) + text[11:]
    elif mutation == 7:
        text = draw(st.sampled_from(["0001", "1899", "1970", "9999", "10000"])) + text[4:]
    if draw(st.integers(0, 20)) == 0:
        return draw(st.sampled_from(["null", "1795000000", "[]", '""']))
    return json.dumps(text, ensure_ascii=draw(st.booleans()))


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


@st.composite
def hostile_json(draw: st.DrawFn) -> bytes:
    """A structure-aware hostile event: mostly valid, every field a chance to be odd."""
    names = draw(st.lists(st.sampled_from(PROPERTY_NAMES), max_size=3))  # repeats: duplicate keys
    pairs = [(json.dumps(name), draw(scalar_literals())) for name in names]
    if draw(st.integers(0, 8)) == 0:
        pairs.append((json.dumps("k" * draw(st.integers(200, 3000))), draw(scalar_literals())))
    if draw(st.integers(0, 10)) == 0:
        pairs.append(
            (
                json.dumps(draw(st.sampled_from(PROPERTY_NAMES))),
                draw(st.sampled_from(["{}", "[1]", '{"a":1}'])),
            )
        )
    properties = _object(pairs)
    if draw(st.integers(0, 15)) == 0:
        properties = draw(st.sampled_from(["null", "[]", '"x"', "1"]))

    def text_field(values: list[str]) -> str:
        if draw(st.integers(0, 12)) == 0:
            return draw(st.one_of(string_literals(), st.sampled_from(["null", "1", "{}", '""'])))
        return json.dumps(draw(st.sampled_from(values)), ensure_ascii=draw(st.booleans()))

    fields = {
        ("id", "customerEventId"): text_field([f"e{n}" for n in range(6)]),
        ("eventType", None): text_field(EVENT_TYPES),
        ("customerId", "customerAlias"): text_field(CUSTOMERS),
        ("timestamp", "eventTimestamp"): draw(timestamp_literals()),
        ("properties", "eventProperties"): properties,
    }
    out: list[tuple[str, str]] = []
    for (name, alias), value in fields.items():
        # name only, alias only, both equal, both different, or neither
        choice = draw(st.sampled_from(["name"] * 6 + ["alias", "both", "differ", "none"]))
        if alias is None and choice in ("alias", "both", "differ"):
            choice = "name"
        if choice in ("name", "both", "differ"):
            out.append((json.dumps(name), value))
        if choice in ("alias", "both"):
            out.append((json.dumps(alias), value))
        if choice == "differ":
            out.append((json.dumps(alias), draw(scalar_literals())))
    if draw(st.integers(0, 10)) == 0:
        depth = draw(st.sampled_from([20, 31, 32, 33, 200, 1000, 1100]))
        out.append(('"deep"', "[" * depth + "]" * depth))
    if draw(st.integers(0, 10)) == 0:
        out.append((json.dumps("extra" * draw(st.integers(1, 50))), draw(scalar_literals())))
    order = draw(st.permutations(out))
    text = _object(list(order))
    if draw(st.integers(0, 30)) == 0:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=4)) + text[cut:]
    return text.encode("utf-8", "surrogatepass")


def hostile_records() -> st.SearchStrategy[bytes | None]:
    """Any record value: mostly hostile JSON, some arbitrary bytes, a few tombstones."""
    return st.one_of(
        hostile_json(),
        hostile_json(),
        hostile_json(),
        st.binary(max_size=300),
        st.sampled_from([v for v, _ in DEAD_LETTERS.values() if v is None or len(v) < 20_000]),
        st.sampled_from(list(COUNTED.values())),
    )
