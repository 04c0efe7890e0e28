-- The log stays append-only for every role, the table's owner included: 0001's row
-- trigger refuses UPDATE and DELETE; TRUNCATE fires no row trigger, so refuse it here.
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();

-- The instance's secret. LISTEN/NOTIFY channels and advisory locks are database-wide
-- (any role may listen on any channel or take any lock key), so the store derives its
-- notification channel and lock keys from this secret by HMAC (PostgresEventStore.
-- instance_key): another instance's role cannot read this table, so it cannot compute
-- them. 2 x 122 random bits from gen_random_uuid (a strong random source, built in
-- since PostgreSQL 13).
CREATE TABLE instance_secret (
    only_row    boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    secret      bytea       NOT NULL CHECK (length(secret) >= 32),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO instance_secret (secret) VALUES (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

-- The append lock (eventstore/postgres.py): `LOCK TABLE append_lock IN EXCLUSIVE MODE` at
-- the start of every append transaction. An advisory lock key, however secret, shows in
-- pg_locks to every role of the cluster, which could then take it and stall the appends;
-- a table lock in this schema can only be taken by a role granted UPDATE on it (only this
-- instance's). The table holds nothing.
CREATE TABLE append_lock ();
