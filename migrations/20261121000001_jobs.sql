-- Job state: Postgres is the source of truth; Redis only carries deliveries.
-- A job row is its own outbox: `pushed_at IS NULL` until a delivery of it reached
-- Redis, and the relay sweeps such rows (see ARCHITECTURE.md).

CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    payload         JSONB NOT NULL,
    -- The Redis task id of the job's current delivery; only that delivery may run it.
    delivery_id     TEXT NOT NULL,
    -- When the current delivery was confirmed in Redis; NULL while it may not be.
    pushed_at       TIMESTAMPTZ,
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
CREATE INDEX jobs_unpushed ON jobs (run_after) WHERE pushed_at IS NULL AND state = 'queued';
CREATE INDEX jobs_unfinished ON jobs (state, kind) WHERE state IN ('queued', 'running');
-- Job ids are ULIDs, so ordering by id is ordering by creation time: listing and
-- pruning (oldest first) walk the primary key; no finished_at index that every
-- finishing job would have to write to.
CREATE INDEX jobs_owner ON jobs (owner_user_id, id DESC) WHERE owner_user_id IS NOT NULL;

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
