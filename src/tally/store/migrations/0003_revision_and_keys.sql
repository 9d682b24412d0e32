-- Tally's schema, version 3: a transactional definitions revision, and
-- idempotency keys scoped by principal.

-- The revision workers poll (tally/store/definitions.py). One row, moved by
-- the transaction that changes a definition and locked by it until commit,
-- so the counter moves in commit order. A sequence cannot do this: numbers
-- are drawn when a row is written but transactions commit in any order, and a
-- poll that saw 11 before 10 committed never noticed 10.
CREATE TABLE tally.definitions_revision (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    revision  bigint  NOT NULL
);
-- Above every revision drawn so far, so workers of the previous version, which
-- poll max(tally.metrics.revision), still see changes move forward.
INSERT INTO tally.definitions_revision (revision)
SELECT greatest(coalesce(max(m.revision), 0), (SELECT last_value FROM tally.metric_revision))
  FROM tally.metrics AS m;

-- Every statement that writes tally.metrics moves the revision, whoever runs
-- it (the API, `tally metrics`, or SQL by hand). BEFORE, so a statement takes
-- the counter before any row lock; Tally's own writers lock the counter first
-- thing in the transaction (lock_definitions), which keeps one lock order.
CREATE FUNCTION tally.definitions_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tally.definitions_revision SET revision = revision + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER definitions_changed
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON tally.metrics
    FOR EACH STATEMENT EXECUTE FUNCTION tally.definitions_changed();

-- A row's revision is the one of the transaction that last changed it.
CREATE FUNCTION tally.stamp_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.revision := (SELECT revision FROM tally.definitions_revision);
    RETURN NEW;
END
$$;
CREATE TRIGGER stamp_revision
    BEFORE INSERT OR UPDATE ON tally.metrics
    FOR EACH ROW EXECUTE FUNCTION tally.stamp_revision();

-- The trigger sets it; tally.metric_revision is no longer drawn from (kept
-- until no process of the previous version can be running).
ALTER TABLE tally.metrics ALTER COLUMN revision SET DEFAULT 0;

-- Idempotency keys are per principal: the same key sent with another token is
-- another key, and never replays the first principal's response.
ALTER TABLE tally.api_idempotency
    DROP CONSTRAINT api_idempotency_pkey,
    ADD PRIMARY KEY (principal, operation, key);
