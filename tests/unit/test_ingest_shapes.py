"""POST /events bodies into candidate messages, and the worker's decoder's verdict on
them (no services): shapes, the CloudEvents mapping, limits and field names."""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from tally.config import Settings
from tally.core.events import DecodeLimits, Rejection, RejectReason, decode_event
from tally.ingest import shapes
from tally.ingest.service import build_ingest
from tests import hostile

NOW = time.time()
STAMP = "2026-12-02T00:00:00Z"


def event(n: int, **fields: object) -> dict[str, object]:
    return {
        "id": f"e-{n}",
        "eventType": "api_call",
        "customerId": "acme",
        "timestamp": STAMP,
        "properties": {"n": n},
        **fields,
    }


def test_an_array_keeps_each_events_bytes_as_sent() -> None:
    body = b' [ {"id":"a", "x": 1.50000000000000000001} ,\n{"id":"b"} ] '
    candidates, batch = shapes.split(shapes.JSON, body)
    assert batch
    assert [c.value for c in candidates] == [
        b'{"id":"a", "x": 1.50000000000000000001}',
        b'{"id":"b"}',
    ]


def test_a_huge_integer_in_one_event_leaves_the_rest_of_the_batch() -> None:
    """Python's int() refuses literals over 4,300 digits; the splitter must not
    turn that one event's refusal into the whole request's (found in review)."""
    body = b'[{"id":"a","n":' + b"9" * 5000 + b'},{"id":"b"}]'
    candidates, batch = shapes.split(shapes.JSON, body)
    assert batch
    assert [c.value[:8] for c in candidates] == [b'{"id":"a', b'{"id":"b']


def test_a_huge_integer_in_a_cloudevent_is_that_events_refusal_not_a_crash() -> None:
    """json.loads' int() raised past the splitter's text-only numbers (found in review)."""
    data = b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"c",'
    data += b'"time":"2026-11-18T08:00:00Z","data":{"n":' + b"9" * 5000 + b"}}"
    for media, body in ((shapes.CLOUDEVENT, data), (shapes.CLOUDEVENTS_BATCH, b"[" + data + b"]")):
        (candidate,), _ = shapes.split(media, body)
        assert candidate.value is not None
        assert b"9" * 5000 in candidate.value


def test_one_object_is_one_event_not_a_batch() -> None:
    candidates, batch = shapes.split(shapes.JSON, orjson.dumps(event(1)))
    assert not batch
    assert candidates[0].value == orjson.dumps(event(1))


def test_ndjson_lines_are_events_and_blank_lines_are_skipped() -> None:
    body = b'{"id":"a"}\r\n\n  \n{"id":"b"}\nnot json\n'
    candidates, batch = shapes.split(shapes.NDJSON, body)
    assert batch
    assert [c.value for c in candidates] == [b'{"id":"a"}', b'{"id":"b"}', b"not json"]


@pytest.mark.parametrize(
    ("media", "body", "status", "kind"),
    [
        (shapes.JSON, b"[" + b"{}," * shapes.MAX_EVENTS + b"{}]", 413, "too_many"),
        (shapes.NDJSON, b"{}\n" * (shapes.MAX_EVENTS + 1), 413, "too_many"),
        (shapes.JSON, b"[]", 422, "no_events"),
        (shapes.NDJSON, b"\n\n", 422, "no_events"),
        (shapes.JSON, b'[{"id": 1}', 422, "json_invalid"),
        (shapes.JSON, b'{"id": ', 422, "json_invalid"),
        (shapes.JSON, b"5", 422, "model_attributes_type"),
        (shapes.JSON, b"\xff", 422, "body_encoding"),
        (shapes.CLOUDEVENTS_BATCH, b"{}", 422, "array_type"),
    ],
)
def test_bodies_that_hold_no_events_to_judge(
    media: str, body: bytes, status: int, kind: str
) -> None:
    with pytest.raises(shapes.BodyError) as refused:
        shapes.split(media, body)
    assert (refused.value.status, refused.value.type) == (status, kind)


def test_exactly_the_batch_limit_is_taken() -> None:
    body = b"[" + b",".join([b"{}"] * shapes.MAX_EVENTS) + b"]"
    assert len(shapes.split(shapes.JSON, body)[0]) == shapes.MAX_EVENTS


def test_a_cloudevent_maps_as_openmeter_does() -> None:
    ce: dict[str, object] = {
        "specversion": "1.0",
        "id": "ce-1",
        "source": "billing/eu",
        "type": "api_call",
        "subject": "acme",
        "time": STAMP,
        "data": {"tokens": 12345678901234567890123, "cost": 0.1000000000000000000001},
    }
    (candidate,), batch = shapes.split(shapes.CLOUDEVENT, _dump(ce))
    assert not batch
    assert candidate.headers == [("ce_source", b"billing/eu")]
    decoded = decode_event(candidate.value, NOW, DecodeLimits(max_lateness_seconds=1e10))
    assert not isinstance(decoded, Rejection)
    assert (decoded.id, decoded.event_type, decoded.customer_id) == ("ce-1", "api_call", "acme")
    assert str(decoded.properties["tokens"]) == "12345678901234567890123"
    assert str(decoded.properties["cost"]) == "0.1000000000000000000001"


def _dump(ce: dict[str, object]) -> bytes:
    text = orjson.dumps({k: v for k, v in ce.items() if k != "data"}).decode()
    return (
        text[:-1] + ',"data":{"tokens":12345678901234567890123,"cost":0.1000000000000000000001}}'
    ).encode()


def test_reasons_are_the_decoders_and_fields_use_the_clients_names() -> None:
    ingest = build_ingest(Settings(), CollectorRegistry(), clock=lambda: NOW)
    ok = event(1, timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW)))
    bad = [
        ok,
        {k: v for k, v in ok.items() if k != "customerId"},
        {**ok, "timestamp": "yesterday"},
        {**ok, "eventType": 7},
    ]
    ces = [
        {"specversion": "1.0", "id": "c", "source": "s", "type": "t", "time": ok["timestamp"]},
        {"specversion": "1.0", "id": "c", "type": "t", "subject": "x", "time": ok["timestamp"]},
        {"specversion": "0.3", "id": "c", "source": "s", "type": "t"},
    ]
    raw_events = shapes.split(shapes.JSON, orjson.dumps(bad))[0]
    raw_ces = shapes.split(shapes.CLOUDEVENTS_BATCH, orjson.dumps(ces))[0]
    judged = ingest.judge(raw_events + raw_ces + [shapes.Candidate(b"x" * 70_000)])
    got = [(s["status"], s.get("reason"), s.get("field")) for s in judged.statuses]
    assert got == [
        ("accepted", None, None),
        ("rejected", "missing_field", "customerId"),
        ("rejected", "bad_timestamp", "timestamp"),
        ("rejected", "invalid_field", "eventType"),
        ("rejected", "missing_field", "subject"),
        ("rejected", "missing_field", "source"),
        ("rejected", "invalid_field", "specversion"),
        ("rejected", "oversized", None),
    ]
    # The same reason and detail as the decoder the worker runs.
    for candidate, status in zip(raw_events, judged.statuses, strict=False):
        if status["status"] == "rejected":
            why = decode_event(candidate.value, NOW, DecodeLimits())
            assert isinstance(why, Rejection)
            assert (why.reason.value, why.detail) == (status["reason"], status["detail"])
    assert [i for i, _ in judged.records] == [0]
    assert judged.records[0][1].key == b"acme"
    assert RejectReason.OVERSIZED.value == judged.statuses[-1]["reason"]


def _one_by_one(value: bytes, now: float) -> tuple[str, str | None, str | None, str | None]:
    """(status, reason or id, detail, key) by the one-value decoder."""
    outcome = decode_event(value, now, DecodeLimits())
    if isinstance(outcome, Rejection):
        return ("rejected", outcome.reason.value, outcome.detail, None)
    return ("accepted", outcome.id, None, outcome.customer_id)


def _judged(
    values: list[bytes], now: float
) -> list[tuple[str, str | None, str | None, str | None]]:
    """judge's verdicts on `values`: each one posted as an array element where the
    array splits (id and key then come from the split's parse), else as is."""
    candidates = []
    for value in values:
        try:
            (candidate,), _ = shapes.split(shapes.JSON, b"[" + value + b"]")
        except (shapes.BodyError, UnicodeDecodeError):
            candidate = shapes.Candidate(value)
        candidates.append(candidate)
    ingest = build_ingest(Settings(), CollectorRegistry(), clock=lambda: now)
    judged = ingest.judge(candidates)
    keys = {index: record.key.decode() for index, record in judged.records}
    return [
        ("rejected", s["reason"], s["detail"], None)
        if s["status"] == "rejected"
        else ("accepted", s["id"], None, keys[s["index"]])
        for s in judged.statuses
    ]


def test_a_batch_is_judged_as_the_one_value_decoder_judges_each_event() -> None:
    """judge decodes a request in one batch call and reads only id and key of
    what it accepts; the corpus of dead letters and counted events agrees."""
    values = [v for v, _ in hostile.DEAD_LETTERS.values() if v is not None]
    values += list(hostile.COUNTED.values())
    values += [
        b'{"customerEventId":"e9","eventType":"a","customerAlias":"k",'
        b'"eventTimestamp":"2026-11-25T11:00:00Z","properties":{}}',
        b'{"id":null,"customerEventId":"e8","eventType":"a","customerId":"c",'
        b'"customerId":"d","timestamp":"2026-11-25T11:00:00Z","properties":{"n":1e400}}',
        b'{"id":"e7","eventType":"a","customerId":"c","timestamp":"2026-11-25T11:00:00Z",'
        b'"properties":{"big":123456789012345678901234567890}}',
        b'{"id":"\\ud800","eventType":"a","customerId":"c","timestamp":"2026-11-25T11:00:00Z"}',
    ]
    assert _judged(values, hostile.NOW) == [_one_by_one(v, hostile.NOW) for v in values]


@settings(max_examples=300, deadline=None)
@given(st.lists(hostile.hostile_json(), min_size=1, max_size=8))
def test_hostile_batches_are_judged_as_the_one_value_decoder_judges_them(
    values: list[bytes],
) -> None:
    assert _judged(values, hostile.NOW) == [_one_by_one(v, hostile.NOW) for v in values]


@pytest.mark.parametrize("media", [shapes.JSON, shapes.NDJSON, shapes.CLOUDEVENTS_BATCH])
def test_one_too_deep_event_is_refused_alone_and_the_rest_accepted(media: str) -> None:
    # Inside: strings holding a bracket and an escaped quote before one.
    nested = "[" * 5000 + '"a", "]", "b\\"]{"' + "]" * 5000
    ok = event(1, timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW)))
    deep = {**ok, "id": "e-2", "properties": {"x": "REPLACE"}}
    if media == shapes.CLOUDEVENTS_BATCH:
        items = [
            {"specversion": "1.0", "id": i, "source": "s", "type": "api_call",
             "subject": "acme", "time": ok["timestamp"], "data": {"x": "REPLACE"}}
            for i in ("e-1", "e-2")
        ]  # fmt: skip
        items[0]["data"] = {"n": 1}
        texts = [orjson.dumps(i) for i in items]
    else:
        texts = [orjson.dumps(ok), orjson.dumps(deep)]
    texts[1] = texts[1].replace(b'"REPLACE"', nested.encode())
    joiner = b"\n" if media == shapes.NDJSON else b" , "
    body = texts[0] + joiner + texts[1]
    if media != shapes.NDJSON:
        body = b"[" + body + b"]"
    candidates, batch = shapes.split(media, body)
    assert batch
    judged = build_ingest(Settings(), CollectorRegistry(), clock=lambda: NOW).judge(candidates)
    got = [(s["status"], s.get("reason")) for s in judged.statuses]
    assert got == [("accepted", None), ("rejected", "too_deep")]
    if media != shapes.CLOUDEVENTS_BATCH:
        # The element's bytes as sent, judged as the worker's decoder judges them.
        assert candidates[1].value == texts[1]
        why = decode_event(texts[1], NOW, DecodeLimits())
        assert isinstance(why, Rejection)
        assert (why.reason, why.detail) == (RejectReason.TOO_DEEP, judged.statuses[1]["detail"])


@pytest.mark.parametrize(
    "body",
    [b'[{"a": ' + b"[" * 5000, b'[{"a": "' + b"[" * 5000, b'[{"a": ' + b"[" * 5000 + b"]" * 4999],
)
def test_a_too_deep_element_that_never_ends_is_the_bodys_fault(body: bytes) -> None:
    with pytest.raises(shapes.BodyError) as raised:
        shapes.split(shapes.JSON, body)
    assert (raised.value.status, raised.value.type) == (422, "json_invalid")
