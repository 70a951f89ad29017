-- Accounts and sessions (SPEC §3.2). Tokens and codes are stored hashed; the TOTP
-- secret is sealed with BERTH_MASTER_KEY (berth-secrets), bound to its row.

ALTER TABLE users
    ADD COLUMN avatar_url           TEXT,
    ADD COLUMN totp_secret          TEXT,
    ADD COLUMN totp_pending_secret  TEXT,
    ADD COLUMN totp_enabled         BOOLEAN NOT NULL DEFAULT false,
    -- The last accepted RFC 6238 time step: only a later one is accepted, so a
    -- code is never accepted twice.
    ADD COLUMN totp_last_step       BIGINT,
    ADD COLUMN password_changed_at  TIMESTAMPTZ;

-- A session is one sign-in on one device: the family of refresh tokens that
-- rotate from it. Access tokens carry its id (`sid`) and stop working once it is
-- revoked.
CREATE TABLE sessions (
    id              UUID PRIMARY KEY,
    user_id         UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    auth_method     TEXT NOT NULL,
    user_agent      TEXT,
    client_ip       TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Absolute lifetime of the family, however often it is refreshed.
    expires_at      TIMESTAMPTZ NOT NULL,
    revoked_at      TIMESTAMPTZ,
    revoked_reason  TEXT
);
CREATE INDEX sessions_user ON sessions (user_id, last_used_at DESC) WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    token_hash   TEXT PRIMARY KEY,
    session_id   UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    -- Set when the token is exchanged; presenting it again is reuse.
    rotated_at   TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Six-digit codes sent by mail: registration, passwordless sign-in, account
-- deletion. One live code per user and purpose; a new one replaces it.
CREATE TABLE email_codes (
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose      TEXT NOT NULL CHECK (purpose IN ('verify_email', 'login', 'delete_account')),
    code_hash    TEXT NOT NULL,
    attempts     INT NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, purpose)
);

CREATE TABLE password_resets (
    token_hash   TEXT PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    used_at      TIMESTAMPTZ
);
CREATE INDEX password_resets_user ON password_resets (user_id);

-- Second step of a sign-in when 2FA is on.
CREATE TABLE login_challenges (
    id_hash      TEXT PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    auth_method  TEXT NOT NULL,
    attempts     INT NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX login_challenges_user ON login_challenges (user_id);

CREATE TABLE recovery_codes (
    code_hash    TEXT PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    used_at      TIMESTAMPTZ
);
CREATE INDEX recovery_codes_user ON recovery_codes (user_id);

CREATE TABLE api_tokens (
    id            UUID PRIMARY KEY,
    user_id       UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    -- The first characters, so users can tell their tokens apart.
    token_prefix  TEXT NOT NULL,
    scopes        TEXT[] NOT NULL,
    expires_at    TIMESTAMPTZ,
    last_used_at  TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX api_tokens_user ON api_tokens (user_id, created_at DESC);

CREATE TABLE oauth_identities (
    provider          TEXT NOT NULL CHECK (provider IN ('github', 'google')),
    provider_user_id  TEXT NOT NULL,
    user_id           UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email             TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, provider_user_id),
    UNIQUE (user_id, provider)
);
