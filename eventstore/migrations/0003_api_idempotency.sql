-- The API's idempotency keys: per calling token, the first answer to a mutating request
-- sent with an `Idempotency-Key`, so a retry gets that answer instead of a second
-- command. `request_sha256` covers the method and the request message; the same key with
-- a different request is refused. `response` is the answer's protobuf bytes (secrets
-- stripped: a created token's or credential's secret is never stored).
CREATE TABLE api_idempotency (
    token_id        text        NOT NULL,
    key             text        NOT NULL,
    method          text        NOT NULL,
    request_sha256  bytea       NOT NULL,
    response        bytea       NOT NULL,
    position        bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (token_id, key)
);
CREATE INDEX api_idempotency_created_at ON api_idempotency USING brin (created_at);
