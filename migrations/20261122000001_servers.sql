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
