-- Accounts, servers and deployments start here with the columns the platform
-- routes need; the issues that build each capability extend them.

CREATE TABLE users (
    id              UUID PRIMARY KEY,
    email           TEXT NOT NULL,
    username        TEXT,
    name            TEXT NOT NULL,
    password_hash   TEXT,
    role            TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin', 'super_admin')),
    status          TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    email_verified  BOOLEAN NOT NULL DEFAULT false,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE UNIQUE INDEX users_username_key ON users (lower(username)) WHERE username IS NOT NULL;

CREATE TABLE servers (
    id              UUID PRIMARY KEY,
    owner_user_id   UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX servers_owner ON servers (owner_user_id);

CREATE TABLE deployments (
    id              UUID PRIMARY KEY,
    owner_user_id   UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    server_id       UUID NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX deployments_owner ON deployments (owner_user_id);
CREATE INDEX deployments_server ON deployments (server_id);

ALTER TABLE jobs
    ADD CONSTRAINT jobs_owner_fk FOREIGN KEY (owner_user_id) REFERENCES users (id) ON DELETE CASCADE,
    ADD CONSTRAINT jobs_server_fk FOREIGN KEY (server_id) REFERENCES servers (id) ON DELETE SET NULL,
    ADD CONSTRAINT jobs_deployment_fk FOREIGN KEY (deployment_id) REFERENCES deployments (id) ON DELETE SET NULL;

-- Messages from the public contact form (SPEC §3.9).
CREATE TABLE contact_messages (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    email       TEXT NOT NULL,
    subject     TEXT NOT NULL,
    message     TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'read', 'replied', 'archived')),
    client_ip   TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX contact_messages_created ON contact_messages (created_at DESC);
