-- Servers (SPEC §3.3): connection settings, sealed credentials, the pinned host
-- key, what validation found, and probe history; notifications (§3.6).

ALTER TABLE servers
    ADD COLUMN host                  TEXT NOT NULL,
    ADD COLUMN port                  INT NOT NULL DEFAULT 22 CHECK (port BETWEEN 1 AND 65535),
    ADD COLUMN username              TEXT NOT NULL,
    ADD COLUMN auth_type             TEXT NOT NULL CHECK (auth_type IN ('password', 'key')),
    -- The password or private key, sealed with BERTH_MASTER_KEY and bound to
    -- this row and column (berth-secrets); the key id is kept beside it so
    -- rows sealed with an old key can be found after a rotation.
    ADD COLUMN secret                TEXT NOT NULL,
    ADD COLUMN passphrase            TEXT,
    ADD COLUMN secret_key_id         TEXT NOT NULL,
    -- `SHA256:…`, recorded on the first successful validation.
    ADD COLUMN host_key              TEXT,
    -- A different key the server presented, kept so the owner can re-pin it.
    ADD COLUMN host_key_offered      TEXT,
    ADD COLUMN status                TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'online', 'offline', 'error')),
    ADD COLUMN status_reason         TEXT,
    ADD COLUMN os                    TEXT,
    ADD COLUMN arch                  TEXT,
    ADD COLUMN docker_version        TEXT,
    ADD COLUMN nginx_version         TEXT,
    ADD COLUMN validated_at          TIMESTAMPTZ,
    ADD COLUMN last_probe_at         TIMESTAMPTZ;
-- No server rows exist before this migration (no route created them), so the
-- NOT NULL columns need no defaults.

CREATE TABLE notifications (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    data        JSONB NOT NULL DEFAULT '{}',
    read_at     TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX notifications_user ON notifications (user_id, created_at DESC);
CREATE INDEX notifications_unread ON notifications (user_id, created_at DESC) WHERE read_at IS NULL;

-- One row per probe; pruned past BERTH_METRICS_RETENTION_DAYS.
CREATE TABLE server_metrics (
    server_id         UUID NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    at                TIMESTAMPTZ NOT NULL,
    cpu_percent       REAL NOT NULL,
    memory_percent    REAL NOT NULL,
    swap_percent      REAL NOT NULL,
    disk_percent      REAL NOT NULL,
    load1             REAL NOT NULL,
    load5             REAL NOT NULL,
    load15            REAL NOT NULL,
    uptime_secs       BIGINT NOT NULL,
    docker_running    BOOLEAN NOT NULL,
    containers        INT NOT NULL,
    PRIMARY KEY (server_id, at)
);
CREATE INDEX server_metrics_at ON server_metrics (at);

-- Per-user alert thresholds and delivery (SPEC §3.6). The defaults here are
-- the only ones: a user's row is created with them when first read.
CREATE TABLE alert_rules (
    user_id          UUID PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    cpu_threshold    REAL NOT NULL DEFAULT 90 CHECK (cpu_threshold BETWEEN 1 AND 100),
    ram_threshold    REAL NOT NULL DEFAULT 90 CHECK (ram_threshold BETWEEN 1 AND 100),
    disk_threshold   REAL NOT NULL DEFAULT 90 CHECK (disk_threshold BETWEEN 1 AND 100),
    swap_threshold   REAL NOT NULL DEFAULT 80 CHECK (swap_threshold BETWEEN 1 AND 100),
    email_alerts     BOOLEAN NOT NULL DEFAULT true,
    browser_alerts   BOOLEAN NOT NULL DEFAULT true,
    realtime_alerts  BOOLEAN NOT NULL DEFAULT true,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Which alerts are raised now, so each breach notifies once when it starts
-- and once when it clears.
CREATE TABLE alert_states (
    server_id   UUID NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    metric      TEXT NOT NULL CHECK (metric IN ('cpu', 'ram', 'disk', 'swap', 'offline', 'host_key')),
    active      BOOLEAN NOT NULL,
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, metric)
);
