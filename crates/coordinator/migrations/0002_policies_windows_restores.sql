-- Schema version 2: policies that schedule jobs, the windows their tasks
-- must start in, and restore tasks.

CREATE TABLE policies (
    name            text PRIMARY KEY,
    -- A five-field cron expression (minute hour day month weekday), UTC.
    schedule        text NOT NULL,
    -- A glob over source names ('*' any run of characters, '?' one).
    sources         text NOT NULL,
    priority        integer NOT NULL DEFAULT 0,
    -- A task of a scheduled run that has not started this many seconds
    -- after the run's time is skipped, and reported.
    window_secs     bigint NOT NULL CHECK (window_secs > 0),
    next_run        timestamptz NOT NULL,
    created         timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE jobs ADD COLUMN policy text REFERENCES policies (name) ON DELETE SET NULL;
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('backup-now', 'scheduled', 'restore'));

-- A restore task has no source of the inventory: it names a restore
-- point and where to restore it, on a host (and datastore) a mover
-- reaches.
ALTER TABLE tasks ALTER COLUMN source DROP NOT NULL;
ALTER TABLE tasks ADD COLUMN kind text NOT NULL DEFAULT 'backup'
    CHECK (kind IN ('backup', 'restore-files', 'restore-vm'));
ALTER TABLE tasks ADD COLUMN restore_from text;
ALTER TABLE tasks ADD COLUMN restore_to text;
ALTER TABLE tasks ADD COLUMN deadline timestamptz;
CREATE INDEX tasks_deadline ON tasks (deadline) WHERE state = 'queued' AND deadline IS NOT NULL;

-- The claim looks at datastores and takes the best queued task of each
-- from this index; the second finds its own host's datastores.
CREATE INDEX tasks_queued_by_datastore ON tasks (datastore, priority DESC, size_hint DESC, id) WHERE state = 'queued';
CREATE INDEX tasks_queued_by_host ON tasks (host) WHERE state = 'queued';
