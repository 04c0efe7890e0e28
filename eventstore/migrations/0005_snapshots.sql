-- Snapshots of folded read models (eventstore/snapshots.py): the API's catalog and the
-- planner's state after `position`, so a restart folds only the log's tail. A cache,
-- never the record: `body` is a SnapshotEnvelope (schemas/convoy/v1/snapshots.proto)
-- with a SHA-256 of its payload, and a reader ignores any row whose kind, format or
-- fold version it does not fold. The newest two per (name, kind) are kept.
CREATE TABLE snapshots (
    name            text        NOT NULL,
    kind            text        NOT NULL,
    position        bigint      NOT NULL CHECK (position >= 0),
    format_version  integer     NOT NULL,
    fold_version    text        NOT NULL,
    taken_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    body            bytea       NOT NULL,
    PRIMARY KEY (name, kind, position)
);
