-- Tally's schema, version 9: external values (docs/decisions.md, "External
-- values"). A metric whose source is EXTERNAL gets its values from the API
-- (POST /metrics/values/{context_type}/{entity_uid}), one row of
-- tally.metric_values per value, never from a worker. Beside the rollup
-- columns such a row keeps what Exante's value carries:
--   external_uid    the value's own id (Exante's `uid`)
--   metric_date     the date the value represents, as sent
--   value_timezone  the zone it was computed in, as sent (periods are the metric's)
--   metadata        `_metadata`, the calculation context, as sent
-- They are NULL on rollups that events produced. Every create also writes
-- one audit row. Every statement may run again (IF NOT EXISTS).
SET LOCAL ROLE tally_migrator;

ALTER TABLE tally.metric_values
    ADD COLUMN IF NOT EXISTS external_uid   uuid,
    ADD COLUMN IF NOT EXISTS metric_date    date,
    ADD COLUMN IF NOT EXISTS value_timezone text,
    ADD COLUMN IF NOT EXISTS metadata       jsonb;

CREATE TABLE IF NOT EXISTS tally.external_value_audit (
    seq            bigserial   PRIMARY KEY,
    value_uid      uuid        NOT NULL,
    metric_uid     text        NOT NULL,
    context_type   text        NOT NULL,
    entity_uid     text        NOT NULL,
    time_unit      text        NOT NULL,
    metric_date    date        NOT NULL,
    period_start   timestamptz NOT NULL,
    value          numeric,
    value_text     text,
    value_timezone text,
    metadata       jsonb       NOT NULL,
    principal      text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT ON tally.external_value_audit TO tally_api;
GRANT USAGE ON SEQUENCE tally.external_value_audit_seq_seq TO tally_api;
