-- Deployments (SPEC §3.4): one named app on one server, and its releases.
-- The `deployments` table of the platform migration grows into the model;
-- it has had no rows written by any route before this.

CREATE TYPE deployment_status AS ENUM
    ('queued', 'building', 'starting', 'running', 'failed', 'stopped', 'deleting');
CREATE TYPE release_state AS ENUM
    ('queued', 'building', 'starting', 'live', 'superseded', 'failed', 'cancelled');

-- A server with deployments is not forgotten silently: its deployments are
-- deleted first (a job that removes what they left on the server).
ALTER TABLE deployments DROP CONSTRAINT deployments_server_id_fkey;
ALTER TABLE deployments ADD CONSTRAINT deployments_server_id_fkey
    FOREIGN KEY (server_id) REFERENCES servers (id) ON DELETE RESTRICT;

ALTER TABLE deployments
    -- Projects arrive with SPEC §3.8; until then a free-standing id.
    ADD COLUMN project_id UUID,
    ADD COLUMN source_type TEXT NOT NULL DEFAULT 'git'
        CHECK (source_type IN ('git', 'image', 'upload')),
    ADD COLUMN repo_url TEXT,
    ADD COLUMN branch TEXT,
    ADD COLUMN image TEXT,
    -- Port, build and start commands, health check, drain, resources, kept
    -- releases: the checked request's settings (camelCase JSON).
    ADD COLUMN settings JSONB NOT NULL DEFAULT '{}',
    -- The env vars as a sealed JSON object, bound to (deployments, env, id).
    ADD COLUMN env_sealed TEXT NOT NULL DEFAULT '',
    -- The deploy key Berth generated (OpenSSH private key, sealed) and its
    -- public half, for private git repositories over SSH.
    ADD COLUMN deploy_key_sealed TEXT,
    ADD COLUMN deploy_key_public TEXT,
    -- The push webhook's HMAC secret, sealed.
    ADD COLUMN webhook_secret_sealed TEXT,
    ADD COLUMN status deployment_status NOT NULL DEFAULT 'queued',
    ADD COLUMN status_reason TEXT,
    ADD COLUMN live_release INT,
    -- Taken down by its user: the live release's container is stopped and
    -- its site removed until a restart or a new release.
    ADD COLUMN stopped BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN next_release INT NOT NULL DEFAULT 1;

CREATE UNIQUE INDEX deployments_server_name ON deployments (server_id, name);

CREATE TABLE releases (
    deployment_id UUID NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    number        INT NOT NULL CHECK (number >= 1),
    -- What made it: `create`, `redeploy`, `webhook`, `rollback`.
    trigger       TEXT NOT NULL CHECK (trigger IN ('create', 'redeploy', 'webhook', 'rollback')),
    -- The release a rollback runs again.
    rollback_of   INT,
    job_id        TEXT REFERENCES jobs (id) ON DELETE SET NULL,
    -- A commit to build (a webhook's push) instead of the branch's head.
    requested_commit TEXT,
    -- What it was made from: a commit SHA, an archive's sha256, an image digest.
    source_ref    TEXT,
    image_tag     TEXT,
    -- The env and settings it runs with, sealed, bound to (releases, snapshot,
    -- "<deployment>/<number>"): a rollback runs with these, not today's.
    snapshot_sealed TEXT NOT NULL,
    state         release_state NOT NULL DEFAULT 'queued',
    failed_step   TEXT,
    error         TEXT,
    container     TEXT,
    port          INT,
    -- `[{name, startedAt, ms}]` in order.
    steps         JSONB NOT NULL DEFAULT '[]',
    preflight     JSONB,
    -- Set once its image is pruned: it can no longer be rolled back to.
    image_pruned  BOOLEAN NOT NULL DEFAULT false,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    PRIMARY KEY (deployment_id, number)
);

-- An uploaded archive, normalized (a checked .tar.gz), until its release is
-- fetched by the deploy job; workers may run on other machines than the api.
CREATE TABLE release_archives (
    deployment_id UUID NOT NULL,
    number        INT NOT NULL,
    sha256        TEXT NOT NULL,
    bytes         BYTEA NOT NULL,
    PRIMARY KEY (deployment_id, number),
    FOREIGN KEY (deployment_id, number) REFERENCES releases (deployment_id, number) ON DELETE CASCADE
);

-- Push webhook deliveries seen, so a replayed delivery is ignored.
CREATE TABLE webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A release whose job ended without the job saying how (superseded or
-- cancelled while queued, its worker dead at the attempt cap) is not left
-- `queued`/`building`/`starting`: it takes its job's ending, and so does the
-- deployment when nothing else of it is on its way.
CREATE FUNCTION jobs_settle_release() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    settled UUID;
BEGIN
    UPDATE releases
       SET state = CASE WHEN NEW.state = 'cancelled' THEN 'cancelled'::release_state
                        ELSE 'failed'::release_state END,
           error = COALESCE(error, NEW.last_error,
                            CASE WHEN NEW.state = 'cancelled' THEN 'cancelled' END),
           finished_at = now()
     WHERE job_id = NEW.id AND state IN ('queued', 'building', 'starting')
    RETURNING deployment_id INTO settled;
    IF settled IS NOT NULL THEN
        UPDATE deployments d
           SET status = CASE WHEN d.live_release IS NOT NULL AND NOT d.stopped THEN 'running'::deployment_status
                             WHEN NEW.state = 'cancelled' OR d.stopped THEN 'stopped'::deployment_status
                             ELSE 'failed'::deployment_status END,
               updated_at = now()
         WHERE d.id = settled AND d.status IN ('queued', 'building', 'starting')
           AND NOT EXISTS (SELECT 1 FROM releases r WHERE r.deployment_id = d.id
                             AND r.state IN ('queued', 'building', 'starting'));
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_settle_release AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state
                       AND NEW.state IN ('failed', 'cancelled')
                       AND NEW.deployment_id IS NOT NULL)
    EXECUTE FUNCTION jobs_settle_release();
