-- Tally's schema, version 3: retention (tally/store/retention.py).
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
CREATE INDEX IF NOT EXISTS unique_members_period
    ON tally.unique_members (time_unit, period_start, metric_uid);
