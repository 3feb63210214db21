-- Schema version 4: a claim takes as many tasks as the mover has free
-- streams and reads the limits once per claim, not once per queued task
-- it looks at; policies carry retention and tiering, run after each of
-- their scheduled runs as a maintenance task by a mover that may
-- maintain the repository.

ALTER TABLE policies
    ADD COLUMN keep_last integer NOT NULL DEFAULT 0 CHECK (keep_last >= 0),
    ADD COLUMN keep_hourly integer NOT NULL DEFAULT 0 CHECK (keep_hourly >= 0),
    ADD COLUMN keep_daily integer NOT NULL DEFAULT 0 CHECK (keep_daily >= 0),
    ADD COLUMN keep_weekly integer NOT NULL DEFAULT 0 CHECK (keep_weekly >= 0),
    ADD COLUMN keep_monthly integer NOT NULL DEFAULT 0 CHECK (keep_monthly >= 0),
    ADD COLUMN keep_yearly integer NOT NULL DEFAULT 0 CHECK (keep_yearly >= 0),
    -- Restore points of the policy's sources older than this many days go
    -- to the cold tier; NULL: the policy does not tier.
    ADD COLUMN tier_after_days integer CHECK (tier_after_days > 0);

-- A mover started with --maintenance holds an admin token: it may run
-- forget, prune and tier run.
ALTER TABLE movers ADD COLUMN maintenance boolean NOT NULL DEFAULT false;

-- The source name a backup records its restore points under (a VM's is
-- its display name): what a policy's retention applies to.
ALTER TABLE sources ADD COLUMN recorded_as text;

-- A maintenance task belongs to a scheduled job; its host and datastore
-- are empty (no throttle applies) and its arguments are in args.
ALTER TABLE tasks DROP CONSTRAINT tasks_kind_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_kind_check
    CHECK (kind IN ('backup', 'restore-files', 'restore-vm', 'maintenance'));
ALTER TABLE tasks ADD COLUMN args jsonb;

-- What a claim counts: running tasks per datastore and per host, and its
-- own host's queued datastores.
CREATE INDEX tasks_running_by_datastore ON tasks (datastore) WHERE state = 'running';
CREATE INDEX tasks_running_by_host ON tasks (host) WHERE state = 'running';
DROP INDEX tasks_queued_by_host;
CREATE INDEX tasks_queued_by_host ON tasks (host, datastore) WHERE state = 'queued';

DROP FUNCTION strata_claim(text, text, text[], double precision);

-- The claim: up to p_max tasks for mover p_mover on host p_host reaching
-- p_datastores. The rules are in src/dispatch.rs and docs/COORDINATOR.md.
-- Under the dispatch lock it reads once which datastores are under their
-- limit (with their running counts) and which hosts are closed to this
-- mover (at their limit, or with an idle mover of their own), then takes
-- the best task of those datastores as often as it may, updating the two
-- lists after each, so each task costs one index probe per open
-- datastore.
CREATE FUNCTION strata_claim(p_mover text, p_host text, p_datastores text[], p_lease_secs double precision,
                             p_max integer)
RETURNS TABLE (claimed_task bigint, claimed_job bigint, claimed_attempt integer,
               claimed_source text, claimed_kind text, claimed_path text, claimed_args text)
-- Its statements are written to be planned once: replanning them on
-- every call (PostgreSQL's custom plans for statements with parameters)
-- cost a quarter of the coordinator's CPU.
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    chosen record;
    may_maintain boolean;
    datastore_default integer;
    host_default integer;
    -- The datastores this mover may take from that are under their
    -- limit: each one's running tasks, limit, and whether the mover
    -- reaches it (if not, only its own host's tasks there are its).
    open_datastores text[];
    open_running integer[];
    open_limit integer[];
    open_reached boolean[];
    closed_hosts text[];
    taken integer := 0;
    i integer;
BEGIN
    SELECT m.maintenance INTO may_maintain FROM movers m WHERE m.name = p_mover;
    may_maintain := coalesce(may_maintain, false);
    -- Nothing this mover could take is queued: no need for the lock.
    IF NOT (EXISTS (SELECT 1 FROM tasks q WHERE q.state = 'queued' AND q.host = p_host AND q.not_before <= now())
            OR EXISTS (SELECT 1 FROM tasks q WHERE q.state = 'queued' AND q.datastore = ANY (p_datastores)
                       AND q.not_before <= now())
            OR (may_maintain AND EXISTS (SELECT 1 FROM tasks q WHERE q.state = 'queued' AND q.host = ''
                                         AND q.kind = 'maintenance' AND q.not_before <= now()))) THEN
        RETURN;
    END IF;
    -- One claim at a time: the limits it checks still hold when it takes
    -- the task.
    PERFORM pg_advisory_xact_lock(6004514643731611650);

    -- Maintenance first, one at a time in the whole pool: the repository
    -- server runs one maintenance operation at a time anyway.
    IF may_maintain AND NOT EXISTS (SELECT 1 FROM tasks r WHERE r.state = 'running' AND r.host = ''
                                                            AND r.kind = 'maintenance') THEN
        SELECT q.id, q.job_id, q.attempts, q.args INTO chosen FROM tasks q
        WHERE q.state = 'queued' AND q.host = '' AND q.kind = 'maintenance' AND q.not_before <= now()
        ORDER BY q.id LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            UPDATE tasks SET state = 'running', mover = p_mover, attempts = chosen.attempts + 1,
                   started = clock_timestamp(), lease_until = now() + make_interval(secs => p_lease_secs), error = NULL
             WHERE id = chosen.id;
            INSERT INTO task_runs (task_id, attempt, mover, started)
            VALUES (chosen.id, chosen.attempts + 1, p_mover, clock_timestamp());
            claimed_task := chosen.id;
            claimed_job := chosen.job_id;
            claimed_attempt := chosen.attempts + 1;
            claimed_source := '';
            claimed_kind := 'maintenance';
            claimed_path := '';
            claimed_args := chosen.args::text;
            RETURN NEXT;
            taken := 1;
        END IF;
    END IF;
    IF taken >= p_max THEN
        RETURN;
    END IF;

    SELECT coalesce((SELECT max_tasks FROM limits WHERE scope = 'datastore' AND name = '*'), 1),
           coalesce((SELECT max_tasks FROM limits WHERE scope = 'host' AND name = '*'), 1)
      INTO datastore_default, host_default;
    -- Hosts this mover may not take from: those at their limit, and
    -- (placement) other hosts with an idle mover of their own.
    -- (A maintenance task's empty host may be among them: no other task
    -- has it.)
    SELECT coalesce(array_agg(h.host), '{}') INTO closed_hosts FROM (
        SELECT r.host FROM (SELECT host, count(*) AS n FROM tasks WHERE state = 'running' GROUP BY host) r
        LEFT JOIN limits l ON l.scope = 'host' AND l.name = r.host
        WHERE r.n >= coalesce(l.max_tasks, host_default)
        UNION
        SELECT m.host FROM movers m
        LEFT JOIN (SELECT r.mover, count(*) AS n FROM tasks r WHERE r.state = 'running' GROUP BY r.mover) busy
               ON busy.mover = m.name
        WHERE m.alive AND m.name <> p_mover AND m.host <> p_host AND coalesce(busy.n, 0) < m.streams
    ) h;
    -- A restore given no datastore has the empty one: only its host's
    -- limit applies to it.
    SELECT coalesce(array_agg(c.datastore), '{}'), coalesce(array_agg(c.running), '{}'),
           coalesce(array_agg(c.max_tasks), '{}'), coalesce(array_agg(c.reached), '{}')
      INTO open_datastores, open_running, open_limit, open_reached
    FROM (
        SELECT d.datastore, d.datastore = ANY (p_datastores) AS reached,
               (SELECT count(*) FROM tasks r WHERE r.state = 'running' AND r.datastore = d.datastore)::integer
                   AS running,
               CASE WHEN d.datastore = '' THEN 2147483647 ELSE coalesce(l.max_tasks, datastore_default) END
                   AS max_tasks
        FROM (SELECT unnest(p_datastores) AS datastore
              UNION
              -- Its own host's queued datastores, one index probe each.
              (WITH RECURSIVE own (datastore) AS (
                   (SELECT q.datastore FROM tasks q WHERE q.state = 'queued' AND q.host = p_host
                    ORDER BY q.datastore LIMIT 1)
                   UNION ALL
                   SELECT (SELECT q.datastore FROM tasks q
                           WHERE q.state = 'queued' AND q.host = p_host AND q.datastore > own.datastore
                           ORDER BY q.datastore LIMIT 1)
                   FROM own WHERE own.datastore IS NOT NULL)
               SELECT own.datastore FROM own WHERE own.datastore IS NOT NULL)) d
        LEFT JOIN limits l ON l.scope = 'datastore' AND l.name = d.datastore
    ) c
    WHERE c.running < c.max_tasks;

    WHILE taken < p_max AND cardinality(open_datastores) > 0 LOOP
        SELECT t.id, t.job_id, t.attempts, t.host, t.datastore,
               coalesce(t.source, t.restore_from) AS what,
               CASE WHEN t.kind = 'backup' THEN s.kind ELSE t.kind END AS task_kind,
               coalesce(s.path, t.restore_to) AS task_path
        INTO chosen
        FROM unnest(open_datastores, open_running, open_reached) AS c(datastore, running, reached)
        CROSS JOIN LATERAL (
            -- In the order of tasks_queued_by_datastore: one probe.
            SELECT q.id, q.job_id, q.attempts, q.host, q.datastore, q.source, q.restore_from, q.restore_to,
                   q.kind, q.priority, q.size_hint
            FROM tasks q
            WHERE q.state = 'queued' AND q.datastore = c.datastore AND q.not_before <= now()
              AND q.kind <> 'maintenance' AND (c.reached OR q.host = p_host)
              AND q.host <> ALL (closed_hosts)
            ORDER BY q.datastore, q.priority DESC, q.size_hint DESC, q.id
            LIMIT 1
        ) t
        LEFT JOIN sources s ON s.name = t.source
        ORDER BY (t.host = p_host) DESC, c.running, t.priority DESC, t.size_hint DESC, t.id
        LIMIT 1;
        EXIT WHEN NOT FOUND;
        -- The row lock makes the lease the mover's: a person cancelling
        -- the job may hold it, and then the task is not taken.
        WITH taken AS (
            UPDATE tasks SET state = 'running', mover = p_mover, attempts = chosen.attempts + 1,
                   started = clock_timestamp(), lease_until = now() + make_interval(secs => p_lease_secs),
                   error = NULL
             WHERE id = (SELECT l.id FROM tasks l WHERE l.id = chosen.id AND l.state = 'queued'
                         FOR UPDATE SKIP LOCKED)
            RETURNING id, attempts
        )
        INSERT INTO task_runs (task_id, attempt, mover, started)
        SELECT id, attempts, p_mover, clock_timestamp() FROM taken;
        EXIT WHEN NOT FOUND;
        claimed_task := chosen.id;
        claimed_job := chosen.job_id;
        claimed_attempt := chosen.attempts + 1;
        claimed_source := chosen.what;
        claimed_kind := chosen.task_kind;
        claimed_path := chosen.task_path;
        claimed_args := NULL;
        RETURN NEXT;
        taken := taken + 1;
        -- Its datastore and host may be full now.
        i := array_position(open_datastores, chosen.datastore);
        open_running[i] := open_running[i] + 1;
        IF open_running[i] >= open_limit[i] THEN
            open_datastores := open_datastores[:i - 1] || open_datastores[i + 1:];
            open_running := open_running[:i - 1] || open_running[i + 1:];
            open_limit := open_limit[:i - 1] || open_limit[i + 1:];
            open_reached := open_reached[:i - 1] || open_reached[i + 1:];
        END IF;
        IF (SELECT count(*) FROM tasks r WHERE r.state = 'running' AND r.host = chosen.host)
           >= coalesce((SELECT max_tasks FROM limits WHERE scope = 'host' AND name = chosen.host), host_default) THEN
            closed_hosts := closed_hosts || chosen.host;
        END IF;
    END LOOP;
END
$$;

-- The report of a run, one round trip like the claim: 'done' with what
-- it made, or 'failed' with why (the task goes back to the queue after
-- p_retry_after_secs, or fails for good after its last attempt). Only
-- the run holding the lease may report: false (and nothing changed) if
-- the task was taken from it. The run's end is recorded either way,
-- unless it was already (as lost by the coordinator, or cancelled). Run
-- times are the clock's when written, not the transaction's start: a
-- claim that waited for the dispatch lock starts after the report it
-- waited for, and the recorded times must say so.
CREATE FUNCTION strata_report(p_task bigint, p_mover text, p_attempt integer, p_result text,
                              p_restore_point text, p_bytes_read bigint, p_bytes_new bigint,
                              p_bytes_stored bigint, p_recorded_source text, p_error text,
                              p_retry_after_secs double precision)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    held boolean;
    reported_source text;
BEGIN
    IF p_result = 'done' THEN
        UPDATE tasks SET state = 'done', finished = clock_timestamp(), lease_until = NULL,
               restore_point = p_restore_point, bytes_read = p_bytes_read, bytes_new = p_bytes_new,
               bytes_stored = p_bytes_stored
         WHERE id = p_task AND mover = p_mover AND attempts = p_attempt AND state = 'running'
        RETURNING source INTO reported_source;
        held := FOUND;
        IF held AND p_recorded_source IS NOT NULL THEN
            UPDATE sources SET recorded_as = p_recorded_source
             WHERE name = reported_source AND recorded_as IS DISTINCT FROM p_recorded_source;
        END IF;
    ELSIF p_result = 'failed' THEN
        UPDATE tasks SET
               state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
               finished = CASE WHEN attempts >= max_attempts THEN clock_timestamp() END,
               not_before = now() + make_interval(secs => p_retry_after_secs),
               mover = NULL, lease_until = NULL, error = p_error
         WHERE id = p_task AND mover = p_mover AND attempts = p_attempt AND state = 'running';
        held := FOUND;
    ELSE
        RAISE EXCEPTION 'strata_report: result % is not done or failed', p_result;
    END IF;
    UPDATE task_runs SET finished = clock_timestamp(), result = p_result, error = p_error
     WHERE task_id = p_task AND attempt = p_attempt AND finished IS NULL;
    RETURN held;
END
$$;
