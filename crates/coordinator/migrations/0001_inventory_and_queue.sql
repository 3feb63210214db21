-- Strata coordinator schema, version 1: the inventory (movers, sources),
-- throttling limits, and the queue (jobs, tasks, and every attempt of a
-- task). docs/COORDINATOR.md describes each table.

CREATE TABLE movers (
    name            text PRIMARY KEY,
    host            text NOT NULL,
    cores           integer NOT NULL CHECK (cores > 0),
    memory_mib      bigint NOT NULL CHECK (memory_mib > 0),
    streams         integer NOT NULL CHECK (streams > 0),
    datastores      text[] NOT NULL DEFAULT '{}',
    transports      text[] NOT NULL DEFAULT '{}',
    registered      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    alive           boolean NOT NULL DEFAULT true
);

CREATE TABLE sources (
    name        text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('files', 'vm', 'image')),
    path        text NOT NULL,
    host        text NOT NULL,
    datastore   text NOT NULL,
    size_hint   bigint NOT NULL DEFAULT 0 CHECK (size_hint >= 0),
    priority    integer NOT NULL DEFAULT 0
);

-- At most max_tasks running tasks per datastore or per host; the row
-- named '*' is the default of its scope.
CREATE TABLE limits (
    scope       text NOT NULL CHECK (scope IN ('datastore', 'host')),
    name        text NOT NULL,
    max_tasks   integer NOT NULL CHECK (max_tasks > 0),
    PRIMARY KEY (scope, name)
);
INSERT INTO limits VALUES ('datastore', '*', 1), ('host', '*', 2);

CREATE TABLE jobs (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('backup-now', 'scheduled')),
    created     timestamptz NOT NULL DEFAULT now(),
    finished    timestamptz,
    state       text NOT NULL DEFAULT 'running'
                CHECK (state IN ('running', 'done', 'failed', 'cancelled'))
);

-- One task per source of a job. The source's host and datastore are
-- copied at creation: the throttle counts running tasks by them.
CREATE TABLE tasks (
    id              bigserial PRIMARY KEY,
    job_id          bigint NOT NULL REFERENCES jobs (id),
    source          text NOT NULL REFERENCES sources (name),
    host            text NOT NULL,
    datastore       text NOT NULL,
    size_hint       bigint NOT NULL,
    priority        integer NOT NULL,
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled', 'skipped')),
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 3,
    not_before      timestamptz NOT NULL DEFAULT now(),
    mover           text,
    lease_until     timestamptz,
    started         timestamptz,
    finished        timestamptz,
    restore_point   text,
    bytes_read      bigint,
    bytes_new       bigint,
    bytes_stored    bigint,
    error           text
);
CREATE INDEX tasks_queued ON tasks (priority DESC, size_hint DESC, id) WHERE state = 'queued';
CREATE INDEX tasks_running ON tasks (mover) WHERE state = 'running';
CREATE INDEX tasks_of_job ON tasks (job_id);

-- Every attempt of a task, with the mover that ran it: what reports and
-- the throttle's audit read.
CREATE TABLE task_runs (
    task_id     bigint NOT NULL REFERENCES tasks (id),
    attempt     integer NOT NULL,
    mover       text NOT NULL,
    started     timestamptz NOT NULL,
    finished    timestamptz,
    result      text CHECK (result IN ('done', 'failed', 'lost', 'cancelled')),
    error       text,
    PRIMARY KEY (task_id, attempt)
);
