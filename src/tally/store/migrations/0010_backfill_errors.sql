-- Tally's schema, version 10: backfills started from the API (docs/backfill.md,
-- "From the API"; docs/decisions.md, "Backfill from the API (issue 16)").
--
-- tally.backfills.last_error: why the last run of a backfill stopped short
-- (a refusal found after the backfill was stored: retention deleted records
-- it still needed, another process moved its progress), and when. Written by
-- the backfill process (tally_worker), cleared when a run starts reading
-- again, shown by GET /backfills and `tally backfill status`. A backfill
-- started by the API runs in a child process, so this is where a refusal it
-- finds later becomes visible to the one who started it.
--
-- The API server checks what a backfill would refuse at once before it
-- launches one, among them a metric that existed before migration 0008: it
-- reads tally.metrics_before_starts.
-- Every statement may run again (IF NOT EXISTS).
SET LOCAL ROLE tally_migrator;

ALTER TABLE tally.backfills
    ADD COLUMN IF NOT EXISTS last_error    text,
    ADD COLUMN IF NOT EXISTS last_error_at timestamptz;

GRANT SELECT ON tally.metrics_before_starts TO tally_api;
