-- Claims count an owner's running jobs of a kind (the per-user share of a
-- queue); few jobs run at once, so this partial index stays small.
CREATE INDEX jobs_running_owner ON jobs (kind, owner_user_id) WHERE state = 'running';
