"""Fuzzing decode -> aggregate -> merge -> flush encoding with hostile records.

No exception may escape any step, whatever the bytes; every accepted event
must give exactly what `tests/reference.py` computes (MAX, MIN, AVG and LATEST
by every column `kind_columns()` gives); split batches must merge
to the whole; and every value the flush would write must be the reference's.

`make test` runs FUZZ_EXAMPLES (5,000) examples. The long run is
`TALLY_FUZZ_EXAMPLES=200000 make test PYTEST_ARGS=tests/unit/test_fuzz.py`
(docs/testing.md). Every crash found goes into tests/corpus/ and is replayed
by `test_corpus_replays_cleanly`.
"""

from __future__ import annotations

import os
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally.contracts.metric import parse_metric
from tally.core.engine import Core, Deltas, aggregate, merged, new_core
from tally.core.events import DecodeLimits, Rejection, RejectReason, UsageEvent, decode_event
from tally.core.metrics import MetricIndex
from tally.store.flush import MemberKey, member_columns, value_columns
from tests import reference
from tests.hostile import COUNTED, COUNTED_METRICS, DEAD_LETTERS, NOW, hostile_records
from tests.unit.test_core_properties import core_rows, definitions, kind_definitions

FUZZ_EXAMPLES = int(os.environ.get("TALLY_FUZZ_EXAMPLES", "5000"))
CORPUS = Path(__file__).resolve().parents[1] / "corpus"
DEFAULT_LIMITS = DecodeLimits()
WIDE_LIMITS = DecodeLimits(max_lateness_seconds=1e12, max_future_seconds=1e12)


def flushed_values(deltas: Deltas, docs: list[dict[str, Any]]) -> dict[Any, tuple[Decimal, int]]:
    """What the flush would write into an empty values table, keyed like the reference."""
    uids, customers, units, starts, groups, members = member_columns(deltas)
    added: Counter[MemberKey] = Counter(zip(uids, customers, units, starts, groups, strict=True))
    assert len(set(zip(uids, customers, units, starts, groups, members, strict=True))) == len(
        members
    ), "a member is sent twice"
    zones = {d["uid"]: d.get("timezone", "UTC") for d in docs}
    out: dict[Any, tuple[Decimal, int]] = {}
    columns = value_columns(deltas, added)
    for uid, customer, group, unit, start, end, value, count in zip(*columns, strict=True):
        assert end > start
        label = reference.local_period(start, unit, zones[uid])
        key = (uid, customer, group, unit, label)
        assert key not in out
        out[key] = (Decimal(value), count)
    return out


def decoded(core: Core, raws: list[bytes | None], limits: DecodeLimits) -> list[bytes]:
    """The values the core accepts; every refusal has a reason and a detail."""
    batch = core.decode(list(raws), NOW, limits.native())
    for _, reason, detail in batch.rejections:
        assert RejectReason(reason) is not RejectReason.INTERNAL_ERROR, detail
        assert detail
    accepted = [raws[n] for n in batch.accepted]
    assert len(accepted) + len(batch.rejections) == len(raws)
    return [raw for raw in accepted if raw is not None]


def check(docs: list[dict[str, Any]], raws: list[bytes | None], cut: int, wide: bool) -> None:
    core = new_core(MetricIndex([parse_metric(d) for d in docs]))
    limits = WIDE_LIMITS if wide else DEFAULT_LIMITS
    accepted = decoded(core, raws, limits)
    whole = aggregate(core, accepted, NOW, limits)
    assert whole.events == len(accepted)
    left = aggregate(core, accepted[:cut], NOW, limits)
    right = aggregate(core, accepted[cut:], NOW, limits)
    assert merged(core, [left, right]).snapshot() == whole.snapshot()
    expected = reference.reference_rows(docs, accepted)
    added = {d["uid"] for d in docs if d["aggregationType"] in ("COUNT", "SUM", "UNIQUE")}
    assert flushed_values(whole, docs) == {
        key: (row.value, row.events) for key, row in expected.items() if key[0] in added
    }
    # MAX, MIN, AVG and LATEST: every column of Deltas.kind_columns.
    kinds = {key: row for key, row in core_rows(whole, docs).items() if key[0] not in added}
    assert kinds == {key: row for key, row in expected.items() if key[0] not in added}


FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(
    docs=st.one_of(definitions(), kind_definitions()),
    raws=st.lists(hostile_records(), max_size=6),
    cut=st.integers(0, 6),
    wide=st.booleans(),
)
def test_no_exception_escapes_and_accepted_events_equal_the_reference(
    docs: list[dict[str, Any]], raws: list[bytes | None], cut: int, wide: bool
) -> None:
    check(docs, raws, cut, wide)


def test_every_catalogued_dead_letter_gets_its_reason() -> None:
    assert len(DEAD_LETTERS) >= 30
    for kind, (raw, reason) in DEAD_LETTERS.items():
        result = decode_event(raw, NOW, DEFAULT_LIMITS)
        assert isinstance(result, Rejection), kind
        assert result.reason.value == reason, (kind, result)


def test_every_catalogued_odd_event_is_counted_as_the_reference_says() -> None:
    raws = list(COUNTED.values())
    for kind, raw in COUNTED.items():
        assert isinstance(decode_event(raw, NOW, DEFAULT_LIMITS), UsageEvent), kind
    check(COUNTED_METRICS, raws, len(raws) // 2, wide=False)


def corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.bin"))


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.stem)
def test_corpus_replays_cleanly(path: Path) -> None:
    """Each file is one record that once raised; with every metric shape reading it."""
    raw = path.read_bytes()
    check(COUNTED_METRICS, [raw], 0, wide=True)
    check(COUNTED_METRICS, [raw], 0, wide=False)
