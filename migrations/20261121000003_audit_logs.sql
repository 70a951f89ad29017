-- Every state-changing call writes one row, in the transaction of the change.
CREATE TABLE audit_logs (
    id             UUID PRIMARY KEY,
    actor_user_id  UUID REFERENCES users (id) ON DELETE SET NULL,
    action         TEXT NOT NULL,
    target_type    TEXT,
    target_id      TEXT,
    client_ip      TEXT,
    request_id     TEXT,
    details        JSONB NOT NULL DEFAULT '{}',
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_created ON audit_logs (created_at DESC);
CREATE INDEX audit_logs_actor ON audit_logs (actor_user_id, created_at DESC) WHERE actor_user_id IS NOT NULL;
CREATE INDEX audit_logs_action ON audit_logs (action, created_at DESC);
