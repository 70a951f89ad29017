-- Projects, members and invitations (SPEC §3.8). Roles are an ordered enum
-- so "at least DEVELOPER" is one comparison in SQL and in Rust.

CREATE TYPE project_role AS ENUM ('VIEWER', 'DEVELOPER', 'ADMIN', 'OWNER');

CREATE TABLE projects (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT,
    -- The creator is never removed nor demoted by anyone else.
    created_by  UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE project_members (
    project_id UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       project_role NOT NULL,
    added_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, user_id)
);
-- Membership by user: every authorization of a project resource asks it.
CREATE INDEX project_members_user ON project_members (user_id, project_id);
-- One OWNER; ownership moves only by a transfer, in one transaction.
CREATE UNIQUE INDEX project_members_one_owner ON project_members (project_id) WHERE role = 'OWNER';

CREATE TABLE project_invites (
    id          UUID PRIMARY KEY,
    project_id  UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    -- Lowercased; matched against a signed-in user's verified address.
    email       TEXT NOT NULL,
    role        project_role NOT NULL CHECK (role <> 'OWNER'),
    -- sha256 of the mailed single-use token; the token itself is never stored.
    token_hash  TEXT NOT NULL,
    invited_by  UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    -- A new invite for the same address replaces the old one.
    UNIQUE (project_id, email)
);
CREATE INDEX project_invites_email ON project_invites (email);

-- The free-standing project id of the deployments migration becomes a
-- reference. A deleted project hands its deployments back to their owners.
UPDATE deployments SET project_id = NULL WHERE project_id IS NOT NULL;
ALTER TABLE deployments ADD CONSTRAINT deployments_project_id_fkey
    FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE SET NULL;
CREATE INDEX deployments_project ON deployments (project_id) WHERE project_id IS NOT NULL;
-- A member's job list asks for the jobs of the project's deployments.
CREATE INDEX jobs_deployment ON jobs (deployment_id, id DESC) WHERE deployment_id IS NOT NULL;
