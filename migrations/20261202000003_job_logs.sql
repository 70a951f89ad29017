-- A job's log: its steps and its commands' output lines, in order, across
-- attempts. `jobs.log_seq` hands out sequence numbers; `log_bytes` counts
-- toward the per-job cap, past which one marker line is kept and the rest
-- dropped.
CREATE TABLE job_logs (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    at     TIMESTAMPTZ NOT NULL,
    stream TEXT NOT NULL CHECK (stream IN ('step', 'stdout', 'stderr')),
    line   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
ALTER TABLE jobs ADD COLUMN log_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN log_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN log_truncated BOOLEAN NOT NULL DEFAULT false;
