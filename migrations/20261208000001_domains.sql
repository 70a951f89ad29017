-- Domains and certificates (SPEC §3.5): a name attached to one deployment
-- platform-wide, the nginx server block Berth writes for it, and its
-- certificate's life, every state a user can see.

CREATE TABLE domains (
    id              UUID PRIMARY KEY,
    deployment_id   UUID NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    owner_user_id   UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The ASCII (IDNA) form, lower case, no trailing dot.
    name            TEXT NOT NULL,
    -- `pending` until a site that serves it is installed, `active` after,
    -- `failed` when writing it failed, `deleting` while it is removed.
    status          TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'active', 'failed', 'deleting')),
    status_reason   TEXT,
    -- What the last DNS check found: `unchecked`, `ok`, `mismatch`.
    dns             TEXT NOT NULL DEFAULT 'unchecked'
        CHECK (dns IN ('unchecked', 'ok', 'mismatch')),
    dns_found       TEXT[] NOT NULL DEFAULT '{}',
    dns_checked_at  TIMESTAMPTZ,
    -- `none`, `pending` (being issued), `issued`, `failed`, `expiring`
    -- (issued, renewal due or failing, the expiry warning sent).
    certificate     TEXT NOT NULL DEFAULT 'none'
        CHECK (certificate IN ('none', 'pending', 'issued', 'failed', 'expiring')),
    -- The installed certificate (there may be one while a renewal fails).
    cert_installed  BOOLEAN NOT NULL DEFAULT false,
    cert_serial     TEXT,
    cert_not_before TIMESTAMPTZ,
    cert_expires_at TIMESTAMPTZ,
    -- The last failure, with the ACME problem type when the CA said why.
    cert_error      TEXT,
    cert_error_type TEXT,
    cert_failed_at  TIMESTAMPTZ,
    -- Set when the 21-day expiry warning went out; cleared by a renewal.
    expiry_warned_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX domains_name ON domains (name);
CREATE INDEX domains_deployment ON domains (deployment_id);
CREATE INDEX domains_owner ON domains (owner_user_id, created_at DESC);
CREATE INDEX domains_renewal ON domains (cert_expires_at) WHERE cert_installed;

-- Berth's ACME account per directory: the account key stays in Berth,
-- sealed (bound to (acme_accounts, credentials, directory URL)).
CREATE TABLE acme_accounts (
    directory_url      TEXT PRIMARY KEY,
    credentials_sealed TEXT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
