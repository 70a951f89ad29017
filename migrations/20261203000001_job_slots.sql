-- Slots of bounded pools (e.g. builds per server): a job that names a pool
-- runs only while it holds one of the pool's `slot_capacity` slots. A claim
-- takes a slot by inserting its row here; the primary key decides races, as
-- `job_keys` does for concurrency keys. A job waiting for a slot stays queued
-- without spending an attempt, and its place in line is shown.
ALTER TABLE jobs ADD COLUMN slot_pool TEXT;
ALTER TABLE jobs ADD COLUMN slot_capacity INT
    CHECK (slot_capacity BETWEEN 1 AND 64);
ALTER TABLE jobs ADD CONSTRAINT jobs_slot_pool_capacity
    CHECK ((slot_pool IS NULL) = (slot_capacity IS NULL));
CREATE INDEX jobs_queued_slot ON jobs (slot_pool, id)
    WHERE slot_pool IS NOT NULL AND state = 'queued';

CREATE TABLE job_slots (
    pool     TEXT NOT NULL,
    slot     INT NOT NULL CHECK (slot >= 0),
    job_id   TEXT NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
    taken_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (pool, slot)
);

-- How many builds a server runs at once (the `builds:<server>` pool).
ALTER TABLE servers ADD COLUMN build_slots INT NOT NULL DEFAULT 1
    CHECK (build_slots BETWEEN 1 AND 16);

-- One place gives keys and slots back. A job takes both in one claim and may
-- be put back holding one while it waits for the other (it was first in that
-- line anyway), so they are given back whenever the state changes to anything
-- but `running`: success, failure, retry, deferral, cancellation of a queued
-- job, the reconciler. The next job waiting for what was freed is due at once.
CREATE OR REPLACE FUNCTION jobs_release_key() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    released TEXT;
BEGIN
    IF NEW.concurrency_key IS NOT NULL THEN
        DELETE FROM job_keys WHERE job_id = NEW.id RETURNING key INTO released;
        IF released IS NOT NULL THEN
            UPDATE jobs SET run_after = now()
            WHERE id = (SELECT id FROM jobs
                        WHERE concurrency_key = released AND state = 'queued' AND id <> NEW.id
                        ORDER BY id LIMIT 1)
              AND pushed_at IS NULL AND run_after > now();
        END IF;
    END IF;
    IF NEW.slot_pool IS NOT NULL THEN
        released := NULL;
        DELETE FROM job_slots WHERE job_id = NEW.id RETURNING pool INTO released;
        IF released IS NOT NULL THEN
            UPDATE jobs SET run_after = now()
            WHERE id = (SELECT j.id FROM jobs j
                        WHERE j.slot_pool = released AND j.state = 'queued' AND j.id <> NEW.id
                          AND NOT EXISTS (SELECT 1 FROM job_slots s WHERE s.job_id = j.id)
                        ORDER BY j.id LIMIT 1)
              AND pushed_at IS NULL AND run_after > now();
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER jobs_release_key ON jobs;
CREATE TRIGGER jobs_release_key AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state AND NEW.state <> 'running'
                       AND (NEW.concurrency_key IS NOT NULL OR NEW.slot_pool IS NOT NULL))
    EXECUTE FUNCTION jobs_release_key();
