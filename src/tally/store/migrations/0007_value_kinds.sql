-- Tally's schema, version 7: MAX, MIN, AVG and LATEST rollups, and STRING
-- values (docs/decisions.md, "The values of MAX, MIN, AVG and LATEST").
--
-- tally.metric_values keeps one row per rollup, whatever its kind; readers of
-- COUNT, SUM and UNIQUE see nothing new. What the new kinds need to merge a
-- flush's delta into the stored row goes beside `value`:
--   value_sum  AVG: the exact sum (`value` is value_sum / event_count rounded
--              to 12 decimals, halves away from zero: tally.average_value)
--   latest_at  LATEST: the winner's timestamp, POSIX microseconds
--   latest_id  LATEST: the winner's event id (ties of latest_at are broken by
--              it, compared by code point: COLLATE "C")
--   value_text a STRING LATEST's value; its `value` is NULL
-- They are NULL for the kinds that do not use them. Adding NULL columns and
-- dropping NOT NULL touch the catalog only, not the rows. Every statement
-- may run again (IF NOT EXISTS, OR REPLACE): a test re-applies the last migration.
SET LOCAL ROLE tally_migrator;

ALTER TABLE tally.metric_values
    ALTER COLUMN value DROP NOT NULL,
    ADD COLUMN IF NOT EXISTS value_text text,
    ADD COLUMN IF NOT EXISTS value_sum  numeric,
    ADD COLUMN IF NOT EXISTS latest_at  bigint,
    ADD COLUMN IF NOT EXISTS latest_id  text;

-- Every row before this migration has a value (the column was NOT NULL), so
-- the constraint needs no scan of them; it holds for every row written after.
ALTER TABLE tally.metric_values
    DROP CONSTRAINT IF EXISTS metric_values_value_given,
    ADD CONSTRAINT metric_values_value_given CHECK (value IS NOT NULL OR value_text IS NOT NULL) NOT VALID;

-- AVG's value, exactly: the integer quotient of total x 10^12 by events and
-- its remainder decide the last decimal, with no division rounded on the way.
CREATE OR REPLACE FUNCTION tally.average_value(total numeric, events bigint) RETURNS numeric
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT trim_scale((d.q + CASE WHEN 2 * abs(d.s - d.q * events) >= events THEN sign(d.s) ELSE 0 END)
                      * 0.000000000001)
      FROM (SELECT total * 1000000000000 AS s, div(total * 1000000000000, events) AS q) AS d
$$;
