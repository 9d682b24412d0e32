-- Tally's schema, version 1. Applied once, inside one transaction, under the
-- migration advisory lock (see tally/store/migrate.py).

CREATE SCHEMA IF NOT EXISTS tally;

-- Every change to a definition takes a new revision, so workers can poll
-- max(revision) cheaply to notice created, changed and deleted metrics.
CREATE SEQUENCE tally.metric_revision;

CREATE TABLE tally.metrics (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    uid         text        NOT NULL UNIQUE,
    definition  jsonb       NOT NULL,          -- the wire form, without deletedAt
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    revision    bigint      NOT NULL DEFAULT nextval('tally.metric_revision')
);

-- What billing reads (docs/design.md §2.3). Flushes add deltas; never overwrite.
CREATE TABLE tally.metric_values (
    metric_uid   text        NOT NULL,
    customer_id  text        NOT NULL,
    group_key    text        NOT NULL DEFAULT '',
    time_unit    text        NOT NULL CHECK (time_unit IN ('hour', 'day', 'week', 'month', 'quarter', 'year')),
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    value        numeric     NOT NULL,
    event_count  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (metric_uid, customer_id, time_unit, period_start, group_key),
    CHECK (period_end > period_start)
) WITH (fillfactor = 70);  -- room on each page for HOT updates: flushes update rows in place

-- Members of UNIQUE rollups: a member adds to the value only when its row
-- is first inserted.
CREATE TABLE tally.unique_members (
    metric_uid   text        NOT NULL,
    customer_id  text        NOT NULL,
    time_unit    text        NOT NULL,
    period_start timestamptz NOT NULL,
    group_key    text        NOT NULL,
    member       text        NOT NULL,
    PRIMARY KEY (metric_uid, customer_id, time_unit, period_start, group_key, member)
);

-- The consumed position of each partition, written in the same transaction
-- as the rollups it produced. next_offset = -1: nothing stored yet, start at
-- the beginning. Updated only by compare-and-set (fencing, docs/design.md §3).
CREATE TABLE tally.partition_offsets (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    next_offset  bigint      NOT NULL DEFAULT -1,
    owner        text,
    flushed_at   timestamptz,
    -- Durable outcome counts of the records up to next_offset (Prometheus
    -- counters restart with the process; these do not).
    records_total      bigint NOT NULL DEFAULT 0,
    duplicates_total   bigint NOT NULL DEFAULT 0,
    dead_letters_total bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, partition)
);

-- The dedup window of each partition: sorted 16-byte id hashes, one blob per
-- flush, merged per hour bucket once the hour is over, deleted when expired.
CREATE TABLE tally.dedup_segments (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    segment_id   bigserial   NOT NULL,
    bucket       bigint      NOT NULL,   -- POSIX hour of the flushes it holds
    id_count     integer     NOT NULL,
    ids          bytea       NOT NULL,
    PRIMARY KEY (topic, partition, segment_id)
);
