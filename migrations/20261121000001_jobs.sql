-- Job state: Postgres is the source of truth; Redis only carries deliveries.

CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    payload         JSONB NOT NULL,
    -- The Redis task id of the job's current delivery; only that delivery may run it.
    delivery_id     TEXT NOT NULL UNIQUE,
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts    INTEGER NOT NULL CHECK (max_attempts > 0),
    timeout_ms      BIGINT NOT NULL CHECK (timeout_ms > 0),
    last_error      TEXT,
    worker          TEXT,
    owner_user_id   UUID,
    server_id       UUID,
    deployment_id   UUID,
    dedupe_key      TEXT,
    run_after       TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((finished_at IS NULL) = (state IN ('queued', 'running')))
);

CREATE UNIQUE INDEX jobs_pending_dedupe_key ON jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('queued', 'running');
CREATE INDEX jobs_unfinished ON jobs (state, kind) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_owner_created ON jobs (owner_user_id, created_at DESC);
CREATE INDEX jobs_created ON jobs (created_at DESC);

-- Deliveries written in the enqueueing transaction and moved to Redis by the relay.
CREATE TABLE job_outbox (
    delivery_id TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    queue       TEXT NOT NULL,
    run_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX job_outbox_run_at ON job_outbox (run_at);
CREATE INDEX job_outbox_job ON job_outbox (job_id);

-- Finished jobs that pruning deleted, by duration bucket, so metrics counters stay monotonic.
CREATE TABLE job_outcome_totals (
    kind                 TEXT NOT NULL,
    outcome              TEXT NOT NULL,
    bucket               INTEGER NOT NULL,
    finished             BIGINT NOT NULL,
    duration_seconds_sum DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, outcome, bucket)
);

-- One row per fired schedule tick: the primary key makes a tick fire once, whatever
-- number of schedulers run.
CREATE TABLE schedule_ticks (
    schedule  TEXT NOT NULL,
    tick      TIMESTAMPTZ NOT NULL,
    fired_by  TEXT NOT NULL,
    fired_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, tick)
);
