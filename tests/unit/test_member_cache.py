"""MemberCache, alone: it learns only what a committed flush offered, skips
only that, forgets safely (room, age, clear), and builds the same insert
columns as the native core's Deltas (`member_columns()`, what a flush
without it sends)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.contracts.metric import parse_metric
from tally.core.engine import Deltas, aggregate, new_core
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tally.store.flush import member_columns, member_rollups
from tally.store.member_cache import MemberCache, MemberKey, MemberRollup, offer_all

DAY = 86400
START = 1_795_000_000 - 1_795_000_000 % DAY
KEY: MemberKey = ("users", "acme", "day", START, "")
OTHER: MemberKey = ("users", "globex", "day", START, "")


def rollup(key: MemberKey, *members: str, end: int = START + DAY) -> MemberRollup:
    return key, end, set(members)


def sent(offer_columns: tuple[list[str], ...]) -> set[tuple[str, str]]:
    return {(c, m) for c, m in zip(offer_columns[1], offer_columns[5], strict=True)}


def test_an_empty_cache_sends_everything() -> None:
    cache = MemberCache()
    offer = cache.offer([rollup(KEY, "a", "b"), rollup(OTHER, "c")])
    assert sent(offer.columns) == {("acme", "a"), ("acme", "b"), ("globex", "c")}
    assert (offer.sent, offer.skipped) == (3, 0)


def test_offer_alone_teaches_nothing() -> None:
    """A flush that never committed (rolled back, fenced, cancelled) must
    not make the next one skip its members."""
    cache = MemberCache()
    cache.offer([rollup(KEY, "a")])
    assert len(cache) == 0
    assert cache.offer([rollup(KEY, "a")]).sent == 1


def test_remembered_members_are_skipped_and_new_ones_sent() -> None:
    cache = MemberCache()
    cache.remember(cache.offer([rollup(KEY, "a", "b")]))
    offer = cache.offer([rollup(KEY, "a", "b", "c"), rollup(OTHER, "a")])
    assert sent(offer.columns) == {("acme", "c"), ("globex", "a")}
    assert (offer.sent, offer.skipped) == (2, 2)
    assert (KEY, "a") in cache
    assert (OTHER, "a") not in cache
    cache.remember(offer)
    assert set(cache.known()) == {(KEY, "a"), (KEY, "b"), (KEY, "c"), (OTHER, "a")}
    assert (cache.hits, cache.sent) == (2, 4)


def test_an_offer_made_before_a_clear_teaches_nothing() -> None:
    """A fence between an offer and its commit: the database is the truth."""
    cache = MemberCache()
    offer = cache.offer([rollup(KEY, "a")])
    cache.clear()
    cache.remember(offer)
    assert len(cache) == 0
    assert cache.clears == 1


def test_full_cache_forgets_the_rollups_flushed_longest_ago() -> None:
    cache = MemberCache(max_members=4)
    cache.remember(cache.offer([rollup(KEY, "a", "b")]))
    cache.remember(cache.offer([rollup(OTHER, "c", "d")]))
    cache.remember(cache.offer([rollup(KEY, "a")]))  # KEY is now the most recent
    third: MemberKey = ("users", "initech", "day", START, "")
    cache.remember(cache.offer([rollup(third, "e")]))
    assert len(cache) == 3
    assert (OTHER, "c") not in cache
    assert (KEY, "a") in cache
    assert (third, "e") in cache
    assert cache.evicted == 2


def test_rollups_whose_period_ended_beyond_the_horizon_are_dropped() -> None:
    now = [float(START + 20 * DAY)]
    cache = MemberCache(horizon=35 * DAY, clock=lambda: now[0])
    old: MemberKey = ("users", "acme", "day", START - 21 * DAY, "")
    cache.remember(cache.offer([rollup(old, "a", end=START - 20 * DAY), rollup(KEY, "b")]))
    assert (old, "a") not in cache  # its day ended 40 days ago
    assert (KEY, "b") in cache
    now[0] += 30 * DAY  # KEY's day ended 49 days ago
    cache.remember(cache.offer([]))
    assert len(cache) == 0


def test_a_zero_sized_cache_holds_nothing() -> None:
    cache = MemberCache(max_members=0)
    cache.remember(cache.offer([rollup(KEY, "a")]))
    assert cache.offer([rollup(KEY, "a")]).sent == 1


members_lists = st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    flushes=st.lists(
        st.tuples(members_lists, members_lists, st.booleans()), min_size=1, max_size=12
    ),
    capacity=st.integers(0, 10),
)
def test_skips_only_what_committed_flushes_offered(
    flushes: list[tuple[list[str], list[str], bool]], capacity: int
) -> None:
    """Against a model of the table: whatever the order of commits and
    failures, every member the cache skips was offered by a committed flush,
    and a flush sends every member the table lacks."""
    cache = MemberCache(max_members=capacity)
    table: set[tuple[MemberKey, str]] = set()
    for ours, theirs, commits in flushes:
        offer = cache.offer([rollup(KEY, *ours), rollup(OTHER, *theirs)])
        wanted = {(KEY, m) for m in ours} | {(OTHER, m) for m in theirs}
        offered = {((u, c, un, s, g), m) for u, c, un, s, g, m in zip(*offer.columns, strict=True)}
        assert wanted - table <= offered  # nothing missing from the table is skipped
        assert offer.sent + offer.skipped == len(wanted)
        if commits:
            table |= offered
            cache.remember(offer)
        assert set(cache.known()) <= table
        assert len(cache) <= capacity


CORE = new_core(
    MetricIndex(
        parse_metric(m)
        for m in (
            {
                "uid": "users",
                "name": "Users by region",
                "eventType": "call",
                "aggregationType": "UNIQUE",
                "aggregationProperty": "user",
                "metricType": "GROUPED",
                "groupingProperty": "region",
                "timeUnits": ["day", "month"],
            },
            {
                "uid": "emails",
                "name": "Emails (case-folded)",
                "eventType": "call",
                "aggregationType": "UNIQUE",
                "aggregationProperty": "user",
                "caseSensitive": False,
                "timeUnits": ["hour"],
                "timezone": "Asia/Kathmandu",
            },
            {
                "uid": "calls",
                "name": "Calls",
                "eventType": "call",
                "aggregationType": "COUNT",
                "timeUnits": ["day"],
            },
        )
    )
)
WIDE = DecodeLimits(max_lateness_seconds=1e12, max_future_seconds=1e12)


def _deltas(seed: int) -> Deltas:
    """A few customers, each in one region or none, three calls each from
    random users over two days, through the core."""
    rng = random.Random(seed)
    values = []
    for c in range(rng.randrange(1, 5)):
        region = rng.choice(["", "eu"])
        for n in range(3):
            properties = {"user": rng.choice(["u", "U"]) + str(rng.randrange(9))}
            if region:
                properties["region"] = region
            when = START + rng.randrange(2 * DAY)
            document = {
                "id": f"{seed}-{c}-{n}",
                "eventType": "call",
                "customerId": f"c{c}",
                "timestamp": datetime.fromtimestamp(when, UTC).isoformat(),
                "properties": properties,
            }
            values.append(orjson.dumps(document))
    deltas = aggregate(CORE, values, START + 3 * DAY, WIDE)
    assert deltas.events == len(values)
    return deltas


Row = tuple[str, str, str, int, str, str]


def _rows(
    columns: tuple[list[str], list[str], list[str], list[int], list[str], list[str]],
) -> list[Row]:
    return sorted(zip(*columns, strict=True))


def test_member_columns_are_the_native_cores() -> None:
    """The store's columns (`offer_all` over `member_rollups`) are the
    native Deltas' `member_columns()`, member for member, and both are the
    members of the UNIQUE rollups in `snapshot()`."""
    for seed in range(50):
        deltas = _deltas(seed)
        native = _rows(deltas.member_columns())
        assert _rows(member_columns(deltas)) == native
        assert offer_all(member_rollups(deltas)).columns == member_columns(deltas)
        assert len(set(native)) == len(native) == deltas.members
        snapshot = deltas.snapshot()
        unique = {k: v for k, v in snapshot.items() if isinstance(v[2], frozenset)}
        assert {k[0] for k in unique} == {"users", "emails"}
        assert set(native) == {
            (uid, customer, unit, start, group, m)
            for (uid, customer, group, unit, start), (_end, _events, members) in unique.items()
            for m in members
        }
        assert {key: end for key, end, _ in member_rollups(deltas)} == {
            (uid, customer, unit, start, group): end
            for (uid, customer, group, unit, start), (end, _events, _members) in unique.items()
        }
