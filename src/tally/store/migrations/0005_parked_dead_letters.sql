-- Tally's schema, version 5: dead letters Kafka would not take.
--
-- A dead letter whose send failed for good (a DLQ topic with a lower size
-- limit, a missing write permission) or transiently five times is parked
-- here, in the flush transaction that moves its partition's offset past it,
-- so no retry goes on forever and nothing is lost. Operators read, replay
-- and delete these rows (docs/operations.md).
SET LOCAL ROLE tally_migrator;

CREATE TABLE tally.parked_dead_letters (
    id             bigserial   PRIMARY KEY,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    reason         text        NOT NULL,   -- why the record was dead-lettered
    detail         text        NOT NULL,
    send_error     text        NOT NULL,   -- why Kafka did not take the dead letter
    record_key     bytea,
    record_value   bytea,
    header_names   text[]      NOT NULL,
    header_values  bytea[]     NOT NULL,
    record_timestamp bigint    NOT NULL,   -- the source record's, in ms
    parked_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX parked_dead_letters_source ON tally.parked_dead_letters (topic, partition, "offset");

-- Workers park them in their flush transaction; billing never reads them.
GRANT INSERT ON tally.parked_dead_letters TO tally_worker;
GRANT USAGE ON SEQUENCE tally.parked_dead_letters_id_seq TO tally_worker;
