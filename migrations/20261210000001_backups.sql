-- Backups of Berth's own database (SPEC §3.9). A row is the catalogue entry
-- of one file in BERTH_BACKUP_DIR; a restore carries the whole table over, so
-- the catalogue keeps describing what is on disk whatever the restored data.
CREATE TABLE backups (
    id            UUID PRIMARY KEY,
    -- Why it was taken: on request, on the schedule, or just before a restore.
    trigger       TEXT NOT NULL CHECK (trigger IN ('manual', 'scheduled', 'pre_restore')),
    requested_by  UUID REFERENCES users (id) ON DELETE SET NULL,
    job_id        TEXT REFERENCES jobs (id) ON DELETE SET NULL,
    -- queued → dumping → verifying → verified | failed. Deleting a backup
    -- deletes its file and its row (the audit log keeps the record).
    status        TEXT NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'dumping', 'verifying', 'verified', 'failed')),
    file_name     TEXT,
    size_bytes    BIGINT CHECK (size_bytes >= 0),
    sha256        TEXT CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- Rows per table as the dump's snapshot saw them, and as the verifying restore found them.
    table_rows    JSONB,
    failure       TEXT,
    dump_ms       BIGINT,
    verify_ms     BIGINT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ,
    verified_at   TIMESTAMPTZ
);
CREATE INDEX backups_created ON backups (created_at DESC);

-- Admin lists filter users by role and status and search their names.
CREATE INDEX users_role_status ON users (role, status);
-- Audit filters by target.
CREATE INDEX audit_logs_target ON audit_logs (target_type, created_at DESC);
