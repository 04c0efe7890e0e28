-- The append fast path (eventstore/postgres.py): one statement, so one round trip and one
-- transaction per batch when the committer's assumptions about the stored state hold.
-- The caller planned the batch against assumed state: the versions of the streams it
-- appends to, the checkpoints it moves, no stored event under its event ids, no receipt
-- under its keys. Under the append lock (each statement of a VOLATILE function takes a new
-- snapshot, so the checks after LOCK see every commit made before it) this checks exactly
-- those assumptions; if any is wrong it writes nothing and returns NULL (the caller then
-- reads the real state and decides again). Otherwise it writes the batch with positions
-- head + offset, and returns head: gapless and in commit order as before, since the lock
-- is held until the transaction's commit is visible.
CREATE FUNCTION append_batch(
    streams text[], stream_versions bigint[], ids uuid[], names text[], name_positions bigint[],
    scopes text[], keys text[],
    e_offset bigint[], e_stream text[], e_version bigint[], e_id uuid[], e_type text[], e_schema int[],
    e_data bytea[], e_actor text[], e_causation uuid[], e_correlation uuid[],
    cp_names text[], cp_positions bigint[],
    r_scope text[], r_key text[], r_method text[], r_sha bytea[], r_response bytea[], r_offset bigint[],
    channel text
) RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
-- Generic plans of the checks below (cached after five calls) scan far more than the
-- custom ones for the arrays at hand: 7 ms against 1.5 ms per 64-event batch, measured.
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    head bigint;
    n int := cardinality(e_offset);
BEGIN
    LOCK TABLE append_lock IN EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM unnest(streams, stream_versions) AS s(id, v)
                WHERE coalesce((SELECT max(e.version) FROM events e WHERE e.stream_id = s.id), 0) <> s.v)
       OR EXISTS (SELECT 1 FROM events e WHERE e.event_id = ANY(ids || e_id))
       OR EXISTS (SELECT 1 FROM unnest(names, name_positions) AS c(name, p)
                   WHERE coalesce((SELECT t.position FROM tracking t WHERE t.name = c.name), 0) <> c.p)
       OR EXISTS (SELECT 1 FROM api_idempotency i JOIN unnest(scopes, keys) AS k(scope, key)
                    ON i.token_id = k.scope AND i.key = k.key)
    THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(max(position), 0) INTO head FROM events;
    IF n > 0 THEN
        INSERT INTO events (position, stream_id, category, version, event_id, type, schema_version,
                            data, actor, causation_id, correlation_id)
        SELECT head + p, s, split_part(s, '/', 1), v, i, t, sv, d, a, c, r
          FROM unnest(e_offset, e_stream, e_version, e_id, e_type, e_schema, e_data, e_actor,
                      coalesce(e_causation, array_fill(NULL::uuid, ARRAY[n])),
                      coalesce(e_correlation, array_fill(NULL::uuid, ARRAY[n])))
               AS e(p, s, v, i, t, sv, d, a, c, r);
        PERFORM pg_notify(channel, (head + n)::text);
    END IF;
    IF cardinality(cp_names) > 0 THEN
        INSERT INTO tracking (name, position) SELECT * FROM unnest(cp_names, cp_positions)
        ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = clock_timestamp();
    END IF;
    IF cardinality(r_scope) > 0 THEN
        INSERT INTO api_idempotency (token_id, key, method, request_sha256, response, position)
        SELECT s, k, m, h, b, CASE WHEN p > 0 THEN head + p ELSE 0 END
          FROM unnest(r_scope, r_key, r_method, r_sha, r_response, r_offset) AS r(s, k, m, h, b, p);
    END IF;
    RETURN head;
END;
$$;
