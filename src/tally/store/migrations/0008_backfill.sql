-- Tally's schema, version 8: where each worker started a metric, and
-- backfills (docs/backfill.md; docs/decisions.md, "Backfill").
--
-- tally.metric_starts: for each (metric, partition), the offset at which the
-- live workers started aggregating the metric. Written in the flush
-- transaction that first includes the metric (fenced by that flush's
-- compare-and-set on tally.partition_offsets), never changed after: records
-- below it were read without the metric, records from it on are counted live.
--
-- tally.backfills: one backfill per metric, its range and state (running,
-- done, cancelled). tally.backfill_partitions: its own progress per partition
-- [from_offset, end_offset), next_offset moved by compare-and-set in the
-- transaction that writes the deltas of the records below it, like a worker's.
-- Every statement may run again (IF NOT EXISTS).
SET LOCAL ROLE tally_migrator;

-- tally.metrics_before_starts: the metrics that existed when this migration
-- first ran. Workers counted them live before they recorded any start, so
-- the start row a worker writes later is not where counting began: a
-- backfill refuses them (it would count those records twice). Filled only
-- when tally.metric_starts does not exist yet, i.e. on the first run; a
-- re-run leaves it as it is.
DO $$
BEGIN
    IF to_regclass('tally.metric_starts') IS NULL THEN
        CREATE TABLE IF NOT EXISTS tally.metrics_before_starts (
            metric_uid  text        PRIMARY KEY,
            recorded_at timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO tally.metrics_before_starts (metric_uid)
            SELECT uid FROM tally.metrics ON CONFLICT DO NOTHING;
    END IF;
END
$$;
CREATE TABLE IF NOT EXISTS tally.metrics_before_starts (
    metric_uid  text        PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- tally.partition_offsets.epoch: a generation, bumped by every load and
-- every flush. A flush compares-and-sets (next_offset, epoch), so a flush
-- that does not move the offset (one that only records starts) still fences
-- a zombie that loaded the same offset earlier (docs/design.md section 3).
ALTER TABLE tally.partition_offsets ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS tally.metric_starts (
    metric_uid   text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    start_offset bigint      NOT NULL,  -- -1: from the partition's beginning
    owner        text,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (metric_uid, topic, partition)
);

CREATE TABLE IF NOT EXISTS tally.backfills (
    metric_uid   text        PRIMARY KEY,
    state        text        NOT NULL CHECK (state IN ('running', 'done', 'cancelled')),
    from_spec    text        NOT NULL,  -- 'earliest' or an ISO 8601 instant
    from_time    timestamptz,           -- NULL for earliest
    owner        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE TABLE IF NOT EXISTS tally.backfill_partitions (
    metric_uid   text        NOT NULL,  -- a tally.backfills row, created in the same transaction
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    from_offset  bigint      NOT NULL,  -- first offset counted
    end_offset   bigint      NOT NULL,  -- the metric's start offset: counted live from here
    next_offset  bigint      NOT NULL,  -- counted up to here (exclusive)
    records_total    bigint  NOT NULL DEFAULT 0,
    duplicates_total bigint  NOT NULL DEFAULT 0,
    owner        text,
    flushed_at   timestamptz,
    PRIMARY KEY (metric_uid, topic, partition)
);

GRANT SELECT, INSERT ON tally.metric_starts TO tally_worker;
GRANT SELECT ON tally.metrics_before_starts TO tally_worker;  -- a backfill's refusal
-- A backfill runs as tally_worker (it writes rollups); the API starts none
-- itself but reads status, cancels (state, finished_at, updated_at only),
-- and shows the partial marker. Neither the API nor a reader reads
-- metric_starts.
GRANT SELECT, INSERT, UPDATE ON tally.backfills, tally.backfill_partitions TO tally_worker;
GRANT SELECT, UPDATE (state, finished_at, updated_at) ON tally.backfills TO tally_api;
GRANT SELECT ON tally.backfill_partitions TO tally_api;
GRANT SELECT ON tally.backfills, tally.backfill_partitions TO tally_reader;  -- the partial marker
