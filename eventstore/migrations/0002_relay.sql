-- The outbox relay's checkpoint: per relay name (the Convoy instance on the bus), the last
-- global position it published to JetStream and saw acknowledged. Written only by the relay
-- holding the instance's advisory lock, on the session that holds it (a relay that lost
-- its session cannot move the checkpoint), and only forward.
CREATE TABLE relay_checkpoints (
    name        text        PRIMARY KEY,
    position    bigint      NOT NULL CHECK (position >= 0),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
