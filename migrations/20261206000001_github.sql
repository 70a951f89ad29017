-- SPEC §3.4 point 11: the linked GitHub account's repositories, listed and
-- cloned with the account's token. The token is sealed (berth-secrets,
-- bound to `<user>/github`) and never leaves Berth but on a clone's stdin.
ALTER TABLE oauth_identities
    ADD COLUMN login TEXT,
    ADD COLUMN token_sealed TEXT,
    -- What the provider said the token may do (GitHub's `scope`).
    ADD COLUMN token_scopes TEXT,
    ADD COLUMN token_updated_at TIMESTAMPTZ;

CREATE TABLE github_repos (
    user_id        UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    github_id      BIGINT NOT NULL,
    full_name      TEXT NOT NULL,
    private        BOOLEAN NOT NULL,
    default_branch TEXT NOT NULL,
    clone_url      TEXT NOT NULL,
    html_url       TEXT NOT NULL,
    description    TEXT,
    pushed_at      TIMESTAMPTZ,
    synced_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, github_id)
);
-- Deploys name a repository by its full name, as GitHub spells it or not.
CREATE UNIQUE INDEX github_repos_by_name ON github_repos (user_id, lower(full_name));

-- How a git source is reached: a deploy key (Berth's own, for ssh URLs) or
-- the owner's GitHub token (a synced repository, over https).
ALTER TABLE deployments
    ADD COLUMN git_access TEXT NOT NULL DEFAULT 'deploy_key'
        CHECK (git_access IN ('deploy_key', 'github')),
    ADD COLUMN github_repo TEXT;
