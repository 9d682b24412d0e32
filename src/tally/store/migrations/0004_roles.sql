-- Tally's schema, version 4: least privilege (docs/operations.md, "Roles").
--
--   tally_migrator  owns the schema and everything in it: DDL, `tally migrate`
--   tally_worker    `tally run`: rollups, offsets, dedup state; reads definitions
--   tally_api       `tally api serve`, `tally metrics`: definitions, adjustments,
--                   idempotency keys; reads values
--   tally_reader    billing: reads tally.metric_values and tally.metrics
--
-- They are NOLOGIN group roles; operators create login users in them
-- (CREATE USER ... IN ROLE tally_worker). Roles belong to the whole cluster:
-- they are created only when missing, and another database of the cluster
-- creating the same role at the same moment is not an error.
--
-- Later migrations start with `SET LOCAL ROLE tally_migrator;`, so what they
-- create is owned by it too, and grant on what they add: privileges are
-- granted table by table, never by default (docs/decisions.md).

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['tally_migrator', 'tally_worker', 'tally_api', 'tally_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created by a migration of another database meanwhile
            END;
        END IF;
    END LOOP;
    -- Whoever runs this migration can become the owner below (a superuser
    -- already can). Needs CREATEROLE, or the membership granted beforehand.
    IF NOT pg_has_role(current_user, 'tally_migrator', 'MEMBER') THEN
        BEGIN
            EXECUTE format('GRANT tally_migrator TO %I', current_user);
        EXCEPTION WHEN unique_violation THEN
            NULL;  -- granted by a migration of another database meanwhile
        END;
    END IF;
END
$$;

-- Ownership: the schema, every table and view in it (a table's own sequences
-- and indexes follow it), the other sequences, and the functions.
ALTER SCHEMA tally OWNER TO tally_migrator;
DO $$
DECLARE
    object record;
BEGIN
    FOR object IN
        SELECT c.oid::regclass AS name FROM pg_catalog.pg_class AS c
         WHERE c.relnamespace = 'tally'::regnamespace AND c.relkind IN ('r', 'p', 'v')
         ORDER BY c.relname
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO tally_migrator', object.name);
    END LOOP;
    FOR object IN
        SELECT c.oid::regclass AS name FROM pg_catalog.pg_class AS c
         WHERE c.relnamespace = 'tally'::regnamespace AND c.relkind = 'S'
           AND c.relowner <> 'tally_migrator'::regrole
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend AS d
                            WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                              AND d.deptype IN ('a', 'i'))
         ORDER BY c.relname
    LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO tally_migrator', object.name);
    END LOOP;
    FOR object IN
        SELECT p.oid::regprocedure AS name FROM pg_catalog.pg_proc AS p
         WHERE p.pronamespace = 'tally'::regnamespace
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO tally_migrator', object.name);
    END LOOP;
END
$$;

SET LOCAL ROLE tally_migrator;

GRANT USAGE ON SCHEMA tally TO tally_worker, tally_api, tally_reader;
-- `tally run --no-migrate` and `tally api serve --no-migrate` check the version.
GRANT SELECT ON tally.schema_migrations TO tally_worker, tally_api;

-- The worker: what a flush writes, what a partition load reads, definitions.
GRANT SELECT ON tally.metrics, tally.definitions_revision TO tally_worker;
GRANT SELECT, INSERT, UPDATE ON tally.metric_values TO tally_worker;
GRANT SELECT, INSERT ON tally.unique_members TO tally_worker;
GRANT SELECT, INSERT, UPDATE ON tally.partition_offsets TO tally_worker;
GRANT SELECT, INSERT, DELETE ON tally.dedup_segments TO tally_worker;
GRANT USAGE ON SEQUENCE tally.dedup_segments_segment_id_seq TO tally_worker;

-- The API: definitions (the revision row is locked and moved by each write),
-- adjustments (an upsert of the rollup and an audit row), idempotency keys
-- (deleted when expired), and the values it serves.
GRANT SELECT, INSERT, UPDATE ON tally.metrics TO tally_api;
GRANT SELECT, UPDATE ON tally.definitions_revision TO tally_api;
GRANT SELECT, INSERT, UPDATE ON tally.metric_values TO tally_api;
GRANT SELECT, INSERT ON tally.value_adjustments TO tally_api;
GRANT USAGE ON SEQUENCE tally.value_adjustments_seq_seq TO tally_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON tally.api_idempotency TO tally_api;

-- Billing.
GRANT SELECT ON tally.metric_values, tally.metrics TO tally_reader;
