-- The log. One row per event; `position` is global, gapless and in commit order
-- (assigned under the append lock, see eventstore/postgres.py).
CREATE TABLE events (
    position        bigint      PRIMARY KEY,
    stream_id       text        NOT NULL,
    category        text        NOT NULL,
    version         bigint      NOT NULL,
    event_id        uuid        NOT NULL UNIQUE,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    data            bytea       NOT NULL,
    actor           text        NOT NULL,
    causation_id    uuid,
    correlation_id  uuid,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream_id, version)
);
CREATE INDEX events_category_position ON events (category, position);
CREATE INDEX events_recorded_at ON events USING brin (recorded_at);

-- The log is append-only: no UPDATE, no DELETE, not even by mistake.
CREATE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();

-- Processors' tracking records: the last input position each one fully handled.
-- Written in the same transaction as the processor's output events.
CREATE TABLE tracking (
    name        text        PRIMARY KEY,
    position    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
