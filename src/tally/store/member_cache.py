"""UNIQUE members a worker knows are stored, so a flush sends only the others.

On a live workload the same members come back flush after flush (a user
active all day is in every flush's day and month rollups), and each one
re-sent costs PostgreSQL an index probe that finds it already there
(docs/performance.md, "Write path"). `MemberCache` remembers, per rollup
(metric uid, customer, time unit, period start, group), the members this
worker's own committed flushes offered, and `offer` leaves those out.

Exactness rests on one invariant: every member the cache holds is in
`tally.unique_members`, committed. The insert's ON CONFLICT DO NOTHING stays
the arbiter of what is new; the cache only skips what is certainly there.

- Members are learned only by `remember`, called after COMMIT returned. A
  flush that failed, was fenced or was cancelled, even one whose commit may
  have landed unseen, teaches nothing.
- A flush learns every member it offered, not only those its insert
  returned: a member that conflicted was committed by someone else (ON
  CONFLICT waits for an uncommitted inserter and inserts if it rolls back).
- Other workers' members of the same rollup (producers that misroute a
  customer to several partitions) are not known here, so they are sent and
  the insert finds them: never skipped wrongly, only not skipped.
- Retention deletes members of periods that ended `member_retention` ago
  (at least `max_lateness` + 1 day). Rollups whose period ended more than
  `horizon` ago are dropped from the cache, so with `horizon` at most
  `member_retention` the cache never holds a member retention may delete.
  No event can reach such a period anyway: it would be too late.
- A database that went back in time (a commit lost by a crash with
  synchronous_commit = off, a failover to a lagging replica, a restore)
  breaks the invariant; the compare-and-set fences the worker, and
  `clear()` on every fence and reload restores it (docs/decisions.md).

Memory is bounded: at most `max_members` members. When a commit would go
over it, the rollups flushed longest ago are forgotten first, whole. Any
forgetting is safe: a member not in the cache is sent and the insert
decides. Members are the flush's own strings (shared with the deltas until
those are dropped); each costs about 130 bytes (127 measured by
`tally.bench writepath`), so the default million is about 130 MB.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field

MemberKey = tuple[str, str, str, int, str]
"""uid, customer, unit, period start (POSIX seconds), group: one UNIQUE rollup"""

MemberColumns = tuple[list[str], list[str], list[str], list[int], list[str], list[str]]
"""uid, customer, unit, period start, group, member: one entry per member to insert"""

MemberRollup = tuple[MemberKey, int, Collection[str]]
"""A UNIQUE rollup of a flush: its key, its period end, its distinct members"""

SWEEP_SECONDS = 60.0


@dataclass(slots=True)
class MemberOffer:
    """What one flush sends, and what the cache learns if it commits."""

    sent_by_rollup: list[tuple[MemberKey, int, list[str]]] = field(default_factory=list)
    sent: int = 0  # members to insert
    skipped: int = 0  # members left out: known to be stored
    generation: int = -1  # the cache's, when offered (-1: no cache)

    @property
    def columns(self) -> MemberColumns:
        """The members to insert as unnest arrays (a flush that stages them
        sends `tally._native.member_copy(sent_by_rollup)` instead)."""
        columns: MemberColumns = ([], [], [], [], [], [])
        uids, customers, units, starts, groups, members = columns
        for (uid, customer, unit, start, group), _end, new in self.sent_by_rollup:
            count = len(new)
            uids += [uid] * count
            customers += [customer] * count
            units += [unit] * count
            starts += [start] * count
            groups += [group] * count
            members += new
        return columns


def offer_all(rollups: Iterable[MemberRollup]) -> MemberOffer:
    """Every member, as a flush without a cache sends them."""
    return _offer(rollups, None, -1)


def _offer(
    rollups: Iterable[MemberRollup], known: dict[MemberKey, _Entry] | None, generation: int
) -> MemberOffer:
    by_rollup: list[tuple[MemberKey, int, list[str]]] = []
    sent = skipped = 0
    for key, end, distinct in rollups:
        entry = known.get(key) if known is not None else None
        if entry is not None:
            stored = entry.members
            new = [m for m in distinct if m not in stored]
            skipped += len(distinct) - len(new)
        else:
            new = list(distinct)
        by_rollup.append((key, end, new))  # a rollup with nothing new still counts as recent
        sent += len(new)
    return MemberOffer(by_rollup, sent, skipped, generation)


@dataclass(slots=True)
class _Entry:
    end: int  # the period's end (POSIX seconds)
    members: set[str]


class MemberCache:
    """Members known committed in `tally.unique_members`, per UNIQUE rollup.

    One per worker, passed to every `write_flush` (which calls `offer`
    before its transaction, `remember` after its commit and `clear` when
    fenced). The worker calls `clear` whenever it drops its pending work and
    reloads partitions. Not for sharing between workers or processes.
    """

    def __init__(
        self,
        max_members: int = 1_000_000,
        horizon: float = 35 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_members < 0 or horizon < 0:
            raise ValueError("max_members and horizon must not be negative")
        self.max_members = max_members
        self.horizon = horizon
        self.clock = clock
        self._known: dict[MemberKey, _Entry] = {}  # oldest remembered first
        self._members = 0
        self._swept = float("-inf")
        self._generation = 0  # moves at every clear: older offers teach nothing
        self.hits = 0  # members skipped by committed flushes, since start
        self.sent = 0  # members sent by committed flushes, since start
        self.evicted = 0  # members forgotten for room or age, since start
        self.clears = 0

    def __len__(self) -> int:
        """Members held."""
        return self._members

    @property
    def rollups(self) -> int:
        return len(self._known)

    def __contains__(self, item: tuple[MemberKey, str]) -> bool:
        key, member = item
        entry = self._known.get(key)
        return entry is not None and member in entry.members

    def known(self) -> Iterator[tuple[MemberKey, str]]:
        """Every (rollup, member) held (for checks and tests)."""
        for key, entry in self._known.items():
            for member in entry.members:
                yield key, member

    def offer(self, rollups: Iterable[MemberRollup]) -> MemberOffer:
        """The members of `rollups` not known to be stored, as insert columns.
        Changes nothing here: only `remember` does, after the commit."""
        return _offer(rollups, self._known, self._generation)

    def remember(self, offer: MemberOffer) -> None:
        """The flush that sent `offer` committed: its members are stored.

        Only the members it sent are added (those it skipped are here
        already), and nothing from an offer made before the last `clear`."""
        if offer.generation != self._generation:
            return
        self.hits += offer.skipped
        self.sent += offer.sent
        if self.max_members == 0:
            return
        known = self._known
        for key, end, new in offer.sent_by_rollup:
            entry = known.pop(key, None)  # and put back last: the most recent
            if entry is None:
                entry = _Entry(end, set(new))
            else:
                self._members -= len(entry.members)
                entry.members.update(new)
            known[key] = entry
            self._members += len(entry.members)
        now = self.clock()
        if now - self._swept >= SWEEP_SECONDS:
            self._swept = now
            self._expire(now - self.horizon)
        while self._members > self.max_members and known:
            self._drop(next(iter(known)))

    def clear(self) -> None:
        """Forget everything (a fence, a reload: the database is the truth)."""
        self._known.clear()
        self._members = 0
        self._generation += 1
        self.clears += 1

    def _expire(self, before: float) -> None:
        for key in [k for k, e in self._known.items() if e.end <= before]:
            self._drop(key)

    def _drop(self, key: MemberKey) -> None:
        entry = self._known.pop(key)
        self._members -= len(entry.members)
        self.evicted += len(entry.members)
