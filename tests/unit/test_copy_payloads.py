"""The native COPY payloads hold exactly the rows of the flush's columns.

A flush stages its rows by binary COPY with payloads the native core writes
(`Deltas.value_copy`, `kind_copy`, `tally._native.member_copy`). This reads
them back with a parser of PostgreSQL's binary COPY format written here from
the format's documentation, and compares them with the unnest columns
(`value_columns`, `kind_columns`, `MemberOffer.columns`), which the property
tests check against the reference. Real PostgreSQL reads them in the
integration tests (every staged flush).

Every payload is in the order of the rollup key (uid, customer, unit, period
start, group; then member), strings by their UTF-8 bytes, which is Python's
order of str: the staged statements insert the rows as they come, with no
sort in PostgreSQL (docs/decisions.md, "Flush rows sorted by the worker").
"""

from __future__ import annotations

import struct
from collections import Counter
from itertools import pairwise
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tally.core.engine import member_copy
from tally.store.flush import member_rollups
from tally.store.member_cache import offer_all
from tests.unit.test_core_properties import (
    SETTINGS,
    aggregate,
    core_for,
    definitions,
    kind_definitions,
    raw_events,
    raw_kind_events,
)

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def parse_copy(payload: bytes, types: str) -> list[tuple[Any, ...]]:
    """Rows of a binary COPY payload; `types` has one letter per column:
    t = text (UTF-8), i = int8."""
    assert payload[:11] == SIGNATURE
    flags, extension = struct.unpack_from(">ii", payload, 11)
    assert (flags, extension) == (0, 0)
    at = 19
    rows = []
    while True:
        (fields,) = struct.unpack_from(">h", payload, at)
        at += 2
        if fields == -1:
            break
        assert fields == len(types)
        row: list[Any] = []
        for kind in types:
            (length,) = struct.unpack_from(">i", payload, at)
            at += 4
            if length == -1:
                row.append(None)
                continue
            raw = payload[at : at + length]
            at += length
            if kind == "i":
                assert length == 8
                row.append(struct.unpack(">q", raw)[0])
            else:
                row.append(raw.decode("utf-8"))
        rows.append(tuple(row))
    assert at == len(payload), "bytes after the trailer"
    return rows


def _added(deltas: Any, data: st.DataObject) -> Counter[tuple[str, str, str, int, str]]:
    added: Counter[tuple[str, str, str, int, str]] = Counter()
    for key, _end, members in member_rollups(deltas):
        added[key] = data.draw(st.integers(0, len(members)))
    return added


@SETTINGS
@given(docs=definitions(), raws=raw_events(), data=st.data())
def test_value_and_member_payloads_are_the_columns(
    docs: list[dict[str, Any]], raws: list[bytes], data: st.DataObject
) -> None:
    deltas = aggregate(core_for(docs), raws)
    added = _added(deltas, data)
    count, payload = deltas.value_copy(added)
    columns = list(zip(*deltas.value_columns(added), strict=True))
    assert count == len(columns)
    rows = parse_copy(payload, "ttttiiti")
    assert rows == columns
    keys = [(uid, customer, unit, start, group) for uid, customer, group, unit, start, *_ in rows]
    assert_strictly_increasing(keys)

    offer = offer_all(member_rollups(deltas))
    sent, members = member_copy(offer.sent_by_rollup)
    assert sent == offer.sent == deltas.members
    member_rows = parse_copy(members, "tttitt")
    assert sorted(member_rows) == sorted(zip(*offer.columns, strict=True))
    assert_strictly_increasing(member_rows)


@SETTINGS
@given(docs=kind_definitions(), raws=raw_kind_events())
def test_kind_payload_is_the_columns(docs: list[dict[str, Any]], raws: list[bytes]) -> None:
    deltas = aggregate(core_for(docs), raws)
    count, merges, payload = deltas.kind_copy()
    columns = list(zip(*deltas.kind_columns(), strict=True))
    assert count == len(columns)
    assert sorted(merges) == sorted({row[0] for row in columns})
    rows = parse_copy(payload, "tttttiitttiit")
    assert rows == columns
    assert_strictly_increasing([(r[1], r[2], r[4], r[5], r[3]) for r in rows])


def assert_strictly_increasing(keys: list[Any]) -> None:
    assert all(a < b for a, b in pairwise(keys)), "rows out of key order"


def test_an_empty_flush_is_header_and_trailer() -> None:
    assert member_copy([]) == (0, SIGNATURE + b"\x00" * 8 + b"\xff\xff")
