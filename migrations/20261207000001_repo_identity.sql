-- A git deployment's repository reduced to host and path (what the push
-- webhook matches on), so a push finds its deployments by index instead of
-- reading every git deployment. The same reduction as the api's
-- `repo_identity`: scheme, user and port dropped, a trailing `/` and `.git`
-- dropped, lower case; scp-like `git@host:owner/repo` read as host/path.
ALTER TABLE deployments ADD COLUMN repo_identity TEXT;

WITH trimmed AS (
    SELECT id, regexp_replace(regexp_replace(btrim(repo_url), '/+$', ''), '\.git$', '') AS url
    FROM deployments WHERE repo_url IS NOT NULL
), located AS (
    SELECT id,
           regexp_replace(
               CASE WHEN position('://' IN url) > 0 THEN substr(url, position('://' IN url) + 3)
                    ELSE regexp_replace(url, ':', '/') END,
               '^.*@', '') AS rest
    FROM trimmed
)
UPDATE deployments d
SET repo_identity = lower(split_part(split_part(l.rest, '/', 1), ':', 1)) || '/'
                    || lower(substr(l.rest, length(split_part(l.rest, '/', 1)) + 2))
FROM located l WHERE d.id = l.id;

CREATE INDEX deployments_repo_identity ON deployments (repo_identity)
    WHERE repo_identity IS NOT NULL;
