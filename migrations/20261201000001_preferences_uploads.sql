-- Per-user display and notification choices (SPEC §3.2 "preferences"). As
-- with alert_rules, the defaults here are the only ones: a row is made with
-- them when first read.
CREATE TABLE user_preferences (
    user_id               UUID PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    theme                 TEXT NOT NULL DEFAULT 'system' CHECK (theme IN ('system', 'light', 'dark')),
    timezone              TEXT NOT NULL DEFAULT 'UTC',
    -- Notices that a server went offline or came back.
    notify_server_status  BOOLEAN NOT NULL DEFAULT true,
    -- Notices that a raised alert (or an offline server) cleared.
    notify_recoveries     BOOLEAN NOT NULL DEFAULT true,
    -- Security notices are always kept in the app; this says whether they are
    -- also mailed.
    email_security        BOOLEAN NOT NULL DEFAULT true,
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Uploaded images (avatars). Kept in Postgres so every api instance serves
-- them and a database backup holds them; the size limit keeps rows small.
CREATE TABLE uploads (
    id            UUID PRIMARY KEY,
    user_id       UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content_type  TEXT NOT NULL,
    original_name TEXT NOT NULL,
    size          INT NOT NULL,
    width         INT NOT NULL,
    height        INT NOT NULL,
    sha256        TEXT NOT NULL,
    data          BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX uploads_user ON uploads (user_id, created_at DESC);
