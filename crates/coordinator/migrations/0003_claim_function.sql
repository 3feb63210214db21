-- Schema version 3: the claim as one function, so that a mover's claim
-- is one round trip. The rules are described in src/dispatch.rs and
-- docs/COORDINATOR.md. In PL/pgSQL every statement takes a new snapshot,
-- so the counts the claim reads after taking the dispatch lock include
-- every claim committed before it. Its start time is the clock's after
-- the lock (clock_timestamp(), not the transaction's now()), so recorded
-- runs never seem to overlap a run whose report it waited for.

CREATE FUNCTION strata_claim(p_mover text, p_host text, p_datastores text[], p_lease_secs double precision)
RETURNS TABLE (claimed_task bigint, claimed_job bigint, claimed_attempt integer,
               claimed_source text, claimed_kind text, claimed_path text)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    chosen record;
BEGIN
    -- Nothing this mover could reach is queued: no need for the lock.
    IF NOT EXISTS (SELECT 1 FROM tasks q WHERE q.state = 'queued' AND q.not_before <= now()
                   AND (q.host = p_host OR q.datastore = ANY (p_datastores))) THEN
        RETURN;
    END IF;
    -- One claim at a time: the limits it checks still hold when it takes
    -- the task.
    PERFORM pg_advisory_xact_lock(6004514643731611650);
    WITH ds_running AS (
        SELECT datastore, count(*) AS n FROM tasks WHERE state = 'running' GROUP BY datastore
    ), host_running AS (
        SELECT host, count(*) AS n FROM tasks WHERE state = 'running' GROUP BY host
    ), mover_running AS (
        SELECT mover, count(*) AS n FROM tasks WHERE state = 'running' GROUP BY mover
    ), idle_hosts AS (
        SELECT DISTINCT m.host FROM movers m LEFT JOIN mover_running r ON r.mover = m.name
        WHERE m.alive AND m.name <> p_mover AND coalesce(r.n, 0) < m.streams
    ), candidates AS (
        SELECT d.datastore, coalesce(dr.n, 0) AS running
        FROM (SELECT unnest(p_datastores) AS datastore
              UNION
              SELECT DISTINCT datastore FROM tasks WHERE state = 'queued' AND host = p_host) d
        LEFT JOIN ds_running dr ON dr.datastore = d.datastore
        WHERE coalesce(dr.n, 0) < coalesce(
            (SELECT max_tasks FROM limits WHERE scope = 'datastore' AND name = d.datastore),
            (SELECT max_tasks FROM limits WHERE scope = 'datastore' AND name = '*'), 1)
    )
    SELECT t.id, t.job_id, t.attempts, coalesce(t.source, t.restore_from) AS what,
           CASE WHEN t.kind = 'backup' THEN s.kind ELSE t.kind END AS task_kind,
           coalesce(s.path, t.restore_to) AS task_path
    INTO chosen
    FROM candidates c
    CROSS JOIN LATERAL (
        SELECT q.* FROM tasks q
        WHERE q.state = 'queued' AND q.datastore = c.datastore AND q.not_before <= now()
          AND (q.host = p_host OR q.datastore = ANY (p_datastores))
          AND (q.host = p_host OR q.host NOT IN (SELECT host FROM idle_hosts))
          AND coalesce((SELECT n FROM host_running hr WHERE hr.host = q.host), 0) < coalesce(
              (SELECT max_tasks FROM limits WHERE scope = 'host' AND name = q.host),
              (SELECT max_tasks FROM limits WHERE scope = 'host' AND name = '*'), 1)
        ORDER BY q.priority DESC, q.size_hint DESC, q.id
        LIMIT 1
    ) t
    LEFT JOIN sources s ON s.name = t.source
    ORDER BY (t.host = p_host) DESC, c.running, t.priority DESC, t.size_hint DESC, t.id
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- The row lock that makes the lease the mover's: a person cancelling
    -- the job may hold it, and then the task is not taken.
    PERFORM 1 FROM tasks WHERE id = chosen.id AND state = 'queued' FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE tasks SET state = 'running', mover = p_mover, attempts = chosen.attempts + 1, started = clock_timestamp(),
           lease_until = now() + make_interval(secs => p_lease_secs), error = NULL
     WHERE id = chosen.id;
    INSERT INTO task_runs (task_id, attempt, mover, started)
    VALUES (chosen.id, chosen.attempts + 1, p_mover, clock_timestamp());
    claimed_task := chosen.id;
    claimed_job := chosen.job_id;
    claimed_attempt := chosen.attempts + 1;
    claimed_source := chosen.what;
    claimed_kind := chosen.task_kind;
    claimed_path := chosen.task_path;
    RETURN NEXT;
END
$$;
