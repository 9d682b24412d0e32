-- Tally's schema, version 2: what the HTTP API needs (docs/api.md).

-- Idempotency keys. A request with a key inserts its row first, in the same
-- transaction as its effect, and stores its response before commit. A retry
-- that arrives meanwhile waits on the row (unique index), then replays the
-- stored response; a refused request rolls back and leaves no row, so it can be
-- retried with the same key. Rows are kept at least 24 hours.
CREATE TABLE tally.api_idempotency (
    operation    text        NOT NULL,   -- e.g. 'POST /usage-metrics'
    key          text        NOT NULL,   -- the Idempotency-Key header
    fingerprint  bytea       NOT NULL,   -- SHA-256 of the operation and canonical body
    status       integer,                -- the stored response (NULL only before commit)
    body         bytea,
    headers      jsonb       NOT NULL DEFAULT '{}',
    principal    text        NOT NULL,   -- the token's name
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operation, key)
);
CREATE INDEX api_idempotency_created_at ON tally.api_idempotency (created_at);

-- Manual corrections of rollups, one row per adjustment, written in the same
-- transaction as `value = value + delta` on tally.metric_values. value_after is
-- the value right after this adjustment (flushes may have added to it before).
CREATE TABLE tally.value_adjustments (
    seq             bigserial   PRIMARY KEY,   -- the audit order, and the page cursor
    id              uuid        NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    metric_uid      text        NOT NULL,
    customer_id     text        NOT NULL,
    time_unit       text        NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    group_key       text        NOT NULL,
    delta           numeric     NOT NULL CHECK (delta <> 0),
    value_before    numeric     NOT NULL,
    value_after     numeric     NOT NULL,
    reason          text        NOT NULL,
    principal       text        NOT NULL,
    idempotency_key text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX value_adjustments_rollup
    ON tally.value_adjustments (metric_uid, customer_id, time_unit, period_start, group_key, seq);
