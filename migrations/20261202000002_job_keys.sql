-- Serialization by key: at most one running job per concurrency key, across
-- all workers. A claim takes the key by inserting its row here (an insert
-- conflict is decided on the index, not on a statement's snapshot, so two
-- claims racing cannot both win); leaving `running` in any way gives it back.
ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
-- A newer job enqueued with the same key cancels this one while it is queued.
ALTER TABLE jobs ADD COLUMN supersedable BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX jobs_queued_key ON jobs (concurrency_key, id)
    WHERE concurrency_key IS NOT NULL AND state = 'queued';

CREATE TABLE job_keys (
    key      TEXT PRIMARY KEY,
    job_id   TEXT NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
    taken_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One place gives keys back, whatever path a job leaves `running` by
-- (success, failure, retry, deferral, cancellation, the reconciler), and
-- makes the next job waiting for the key due at once.
CREATE FUNCTION jobs_release_key() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    released TEXT;
BEGIN
    DELETE FROM job_keys WHERE job_id = NEW.id RETURNING key INTO released;
    IF released IS NOT NULL THEN
        UPDATE jobs SET run_after = now()
        WHERE id = (SELECT id FROM jobs
                    WHERE concurrency_key = released AND state = 'queued' AND id <> NEW.id
                    ORDER BY id LIMIT 1)
          AND pushed_at IS NULL AND run_after > now();
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_release_key AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (OLD.state = 'running' AND NEW.state <> 'running'
                       AND NEW.concurrency_key IS NOT NULL)
    EXECUTE FUNCTION jobs_release_key();

-- Cancellation of a running job: the api sets this, the job's worker stops
-- it (and its remote commands) and records it `cancelled`.
ALTER TABLE jobs ADD COLUMN cancel_requested_at TIMESTAMPTZ;
