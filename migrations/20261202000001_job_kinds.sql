-- A job's kind (what it does: `server.validate`) is separate from its queue
-- (which workers run it: `probe`). Rows written before this carried the
-- queue's name as their kind.
ALTER TABLE jobs ADD COLUMN queue TEXT;
UPDATE jobs SET queue = kind;
UPDATE jobs SET kind = CASE
    WHEN queue = 'probe' AND payload->>'action' = 'validate' THEN 'server.validate'
    WHEN queue = 'probe' THEN 'server.probe'
    WHEN queue = 'email' THEN 'email.send'
    WHEN queue = 'diagnostic' THEN 'diagnostic.sleep'
    ELSE kind
END;
ALTER TABLE jobs ALTER COLUMN queue SET NOT NULL;

UPDATE job_outcome_totals SET kind = CASE kind
    WHEN 'email' THEN 'email.send'
    WHEN 'diagnostic' THEN 'diagnostic.sleep'
    WHEN 'probe' THEN 'server.probe'
    ELSE kind
END;

DROP INDEX jobs_unfinished;
CREATE INDEX jobs_unfinished ON jobs (state, queue) WHERE state IN ('queued', 'running');
DROP INDEX jobs_running_owner;
CREATE INDEX jobs_running_owner ON jobs (queue, owner_user_id) WHERE state = 'running';

-- Why a queued job is not running yet ("the server is busy", later a held
-- concurrency key or slot); cleared when it starts.
ALTER TABLE jobs ADD COLUMN waiting_for TEXT;
