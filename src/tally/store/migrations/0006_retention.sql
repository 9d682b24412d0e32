-- Tally's schema, version 6: retention (tally/store/retention.py).
--
-- Retention deletes the UNIQUE members of periods that ended long ago. The
-- primary key starts with (metric_uid, customer_id), so it cannot find them
-- without reading the whole table. This index finds each period of a metric
-- (time unit, period start, metric) and its members. Flushes insert members
-- of recent periods, at the right edge of each unit's range, so it costs
-- them little (docs/performance.md, "Retention").
--
-- On a large existing tally.unique_members, build it first without blocking
-- flushes; this migration then finds it in place:
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS unique_members_period
--       ON tally.unique_members (time_unit, period_start, metric_uid);
SET LOCAL ROLE tally_migrator;

CREATE INDEX IF NOT EXISTS unique_members_period
    ON tally.unique_members (time_unit, period_start, metric_uid);

-- Workers run the passes: members of old periods go (segments already may).
GRANT DELETE ON tally.unique_members TO tally_worker;
