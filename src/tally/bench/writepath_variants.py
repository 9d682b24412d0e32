"""The write-path candidates `tally.bench writepath` measures side by side.

Each variant writes one flush's UNIQUE members and rollup deltas, in two
phases inside the flush transaction, so the bench can read the backend's
CPU between them. The schema of each variant's database is the migrated
one, changed by `setup` where the variant is about the schema:

- `current`: the code before this work (`writepath_baseline`): unnest
  arrays, every pending member sent;
- `copy`: binary COPY into TEMP staging tables (ON COMMIT DELETE ROWS),
  the payloads written by the native core, then the same INSERT ... SELECT
  ... ON CONFLICT from them (`tally.store.flush`'s staged statements);
- `member cache`: unnest arrays as before, with a `MemberCache` that knows
  what earlier flushes stored, so only the other members are sent;
- `copy + member cache`: both, what `tally.store.flush.write_flush` does;
- `driver-encoded copy + member cache`: the same before the native
  payloads: Python lists, each value encoded by asyncpg
  (`copy_records_to_table`), and before the rows came sorted: in no key
  order, sorted by PostgreSQL (ORDER BY in the staged statements), as
  the store did until the payloads came sorted (docs/performance.md,
  "Run F");
- `int keys`: rollups in a copy of `tally.metric_values` keyed by integer
  metric ids and unit codes (is key width what the upsert pays for?);
- `collate "C"`: `tally.metric_values` with its text keys in the "C"
  collation (byte comparisons instead of the database's locale);
- `fillfactor 100`: `tally.metric_values` packed full (no room for HOT).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from tally.bench import writepath_baseline as baseline
from tally.core.engine import Deltas
from tally.store import flush
from tally.store.flush import MemberKey, value_columns
from tally.store.member_cache import MemberCache, MemberOffer, offer_all
from tally.store.pool import Connection

UNIT_CODES = {"hour": 1, "day": 2, "week": 3, "month": 4, "quarter": 5, "year": 6}

INT_KEYS_SETUP = (
    """
CREATE TABLE tally.metric_ids (metric_id int4 PRIMARY KEY, metric_uid text NOT NULL UNIQUE)
""",
    """
CREATE TABLE tally.metric_values_int (
    metric_id    int4        NOT NULL,
    customer_id  text        NOT NULL,
    group_key    text        NOT NULL DEFAULT '',
    time_unit    int2        NOT NULL,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    value        numeric     NOT NULL,
    event_count  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (metric_id, customer_id, time_unit, period_start, group_key),
    CHECK (period_end > period_start)
) WITH (fillfactor = 70)
""",
)
_UPSERT_INT = """
INSERT INTO tally.metric_values_int AS v
       (metric_id, customer_id, group_key, time_unit, period_start, period_end, value, event_count, updated_at)
SELECT u.metric_id, u.customer_id, u.group_key, u.time_unit, to_timestamp(u.period_start),
       to_timestamp(u.period_end), u.value::numeric, u.event_count, now()
  FROM unnest($1::int4[], $2::text[], $3::text[], $4::int2[], $5::int8[], $6::int8[], $7::text[], $8::int8[])
       AS u(metric_id, customer_id, group_key, time_unit, period_start, period_end, value, event_count)
 ORDER BY u.metric_id, u.customer_id, u.time_unit, u.period_start, u.group_key
ON CONFLICT (metric_id, customer_id, time_unit, period_start, group_key) DO UPDATE
   SET value = v.value + EXCLUDED.value,
       event_count = v.event_count + EXCLUDED.event_count,
       updated_at = EXCLUDED.updated_at
"""
INT_KEYS_FILL = (
    """
INSERT INTO tally.metric_ids SELECT row_number() OVER (ORDER BY metric_uid), metric_uid
  FROM (SELECT DISTINCT metric_uid FROM tally.metric_values) AS m
""",
    """
INSERT INTO tally.metric_values_int
SELECT i.metric_id, v.customer_id, v.group_key,
       array_position(ARRAY['hour', 'day', 'week', 'month', 'quarter', 'year'], v.time_unit),
       v.period_start, v.period_end, v.value, v.event_count, v.updated_at
  FROM tally.metric_values AS v JOIN tally.metric_ids AS i USING (metric_uid)
 ORDER BY 1, 2, 4, 5, 3
""",
    "TRUNCATE tally.metric_values",
)
COLLATE_C_SETUP = (
    'ALTER TABLE tally.metric_values ALTER COLUMN metric_uid TYPE text COLLATE "C",'
    ' ALTER COLUMN customer_id TYPE text COLLATE "C", ALTER COLUMN group_key TYPE text COLLATE "C",'
    ' ALTER COLUMN time_unit TYPE text COLLATE "C"',
)
FILLFACTOR_100_SETUP = (
    "ALTER TABLE tally.metric_values SET (fillfactor = 100)",
    "VACUUM FULL tally.metric_values",
)

Added = Counter[MemberKey]
Members = Callable[[Connection, Deltas, MemberCache | None], Awaitable[tuple[Added, MemberOffer]]]
Values = Callable[[Connection, Deltas, Counter[MemberKey]], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    members: Members
    values: Values
    cache: bool = False  # keeps a MemberCache across flushes
    setup: tuple[str, ...] = ()  # on its database, once filled
    table: str = "tally.metric_values"  # where its rollups are

    async def write(
        self, connection: Connection, deltas: Deltas, cache: MemberCache | None
    ) -> tuple[MemberOffer, int]:
        """Both phases, in the caller's transaction; the caller passes the
        offer to `cache.remember` once it has committed."""
        added, offer = await self.members(connection, deltas, cache)
        return offer, await self.values(connection, deltas, added)


def _offer(deltas: Deltas, cache: MemberCache | None) -> MemberOffer:
    rollups = flush.member_rollups(deltas)
    return cache.offer(rollups) if cache is not None else offer_all(rollups)


async def _baseline_members(
    connection: Connection, deltas: Deltas, _cache: MemberCache | None
) -> tuple[Added, MemberOffer]:
    added = await baseline._write_members(connection, deltas)
    return added, MemberOffer(sent=deltas.members)  # every one


async def _unnest_members(
    connection: Connection, deltas: Deltas, cache: MemberCache | None
) -> tuple[Added, MemberOffer]:
    """The store's statements fed by unnest arrays, as before."""
    offer = _offer(deltas, cache)
    return await flush._write_members(connection, offer), offer


async def _staged_members(
    connection: Connection, deltas: Deltas, cache: MemberCache | None
) -> tuple[Added, MemberOffer]:
    """The store's path: binary COPY into its TEMP staging tables, the
    payload written by the native core."""
    offer = _offer(deltas, cache)
    staged = await flush._staging(connection)
    return await flush._write_members(connection, offer, staged), offer


async def _staged_values(connection: Connection, deltas: Deltas, added: Added) -> int:
    return await flush._write_values(connection, deltas, added, await flush._staging(connection))


# The staged statements as they were before the native payloads came sorted:
# PostgreSQL sorted the rows itself, in the database's collation.
_SORTED_IN_SQL_MEMBERS = flush._INSERT_MEMBERS_FROM.format(
    source="tally_flush_members AS u", order="\n     ORDER BY 1, 2, 3, 4, 5, 6"
)
_SORTED_IN_SQL_VALUES = flush._UPSERT_VALUES_FROM.format(
    source="tally_flush_values AS u",
    order="\n ORDER BY u.metric_uid, u.customer_id, u.time_unit, u.period_start, u.group_key",
)


def _shuffled(rows: Iterable[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """Rows in no key order (a fixed uniform shuffle, so every run is the
    same), standing in for the hash order the native tables gave before the
    payloads were sorted. The shuffle is the client's work, inside the
    variant's timing: compare its PostgreSQL CPU, not its client CPU."""
    shuffled = list(rows)
    random.Random(7).shuffle(shuffled)
    return shuffled


async def _driver_members(
    connection: Connection, deltas: Deltas, cache: MemberCache | None
) -> tuple[Added, MemberOffer]:
    """The store's path before the native payloads: Python lists, encoded
    by the driver (`copy_records_to_table`), in no key order, sorted by
    PostgreSQL."""
    offer = _offer(deltas, cache)
    await flush._staging(connection)
    added: Added = Counter()
    if offer.sent:
        await connection.copy_records_to_table(
            "tally_flush_members", records=_shuffled(zip(*offer.columns, strict=True))
        )
        for row in await connection.fetch(_SORTED_IN_SQL_MEMBERS):
            key = (row[0], row[1], row[2], row[3], row[4])
            added[key] = row["added"]
    return added, offer


async def _driver_values(connection: Connection, deltas: Deltas, added: Added) -> int:
    columns = value_columns(deltas, added)
    if not columns[0]:
        return 0
    await flush._staging(connection)
    await connection.copy_records_to_table(
        "tally_flush_values", records=_shuffled(zip(*columns, strict=True))
    )
    await connection.execute(_SORTED_IN_SQL_VALUES)
    return len(columns[0])


async def _int_values(connection: Connection, deltas: Deltas, added: Added) -> int:
    uids, customers, groups, units, starts, ends, values, counts = value_columns(deltas, added)
    if not uids:
        return 0
    ids = {r[1]: r[0] for r in await connection.fetch("SELECT * FROM tally.metric_ids")}
    missing = sorted(set(uids) - ids.keys())
    if missing:
        await connection.executemany(
            "INSERT INTO tally.metric_ids SELECT coalesce(max(metric_id), 0) + 1, $1 FROM tally.metric_ids",
            [(uid,) for uid in missing],
        )
        ids = {r[1]: r[0] for r in await connection.fetch("SELECT * FROM tally.metric_ids")}
    await connection.execute(
        _UPSERT_INT,
        [ids[u] for u in uids],
        customers,
        groups,
        [UNIT_CODES[u] for u in units],
        starts,
        ends,
        values,
        counts,
    )
    return len(uids)


def variants() -> list[Variant]:
    return [
        Variant("current", _baseline_members, baseline._write_values),
        Variant("copy", _staged_members, _staged_values),
        Variant("member cache", _unnest_members, flush._write_values, cache=True),
        Variant("copy + member cache", _staged_members, _staged_values, cache=True),
        Variant("driver-encoded copy + member cache", _driver_members, _driver_values, cache=True),
        Variant(
            "int keys",
            _baseline_members,
            _int_values,
            setup=INT_KEYS_SETUP + INT_KEYS_FILL,
            table="tally.metric_values_int",
        ),
        Variant('collate "C"', _baseline_members, baseline._write_values, setup=COLLATE_C_SETUP),
        Variant(
            "fillfactor 100", _baseline_members, baseline._write_values, setup=FILLFACTOR_100_SETUP
        ),
    ]
