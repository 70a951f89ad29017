#!/usr/bin/env bash
# Brings Berth up on this machine. With a Docker engine: `docker compose up`.
# Without one: installs Postgres and Redis from Debian packages when missing,
# runs them from ./data (Postgres on 127.0.0.1:$BERTH_PG_PORT, Redis with AOF on
# 127.0.0.1:$BERTH_REDIS_PORT), writes .env with fresh secrets and a first
# administrator on first run, builds the release binaries, applies migrations
# and starts berth-api, berth-worker and berth-scheduler under a restart loop.
# Re-running it restarts the processes whose binary or .env changed.
# Logs: ./data/logs. Stop everything with scripts/down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
umask 077

step() { printf '==> %s\n' "$*"; }

admin_email=${BERTH_ADMIN_EMAIL:-admin@berth.localhost}
new_admin_password=""

# .env with generated secrets, mode 0600; `$1` is the address the api listens on.
write_env() {
    local api_addr=$1 database_url=$2 redis_url=$3 mail_dir=$4 backup_dir=$5
    secret() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }
    new_admin_password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
    cat > .env <<EOT
DATABASE_URL=$database_url
REDIS_URL=$redis_url
BERTH_API_ADDR=$api_addr
BERTH_PUBLIC_URL=http://127.0.0.1:8080
BERTH_MASTER_KEY=$(secret 32)
JWT_SECRET=$(secret 48)
METRICS_TOKEN=$(secret 24 | tr -d '/+=')
# Plain HTTP on this machine; set true (and an https BERTH_PUBLIC_URL) behind TLS.
COOKIE_SECURE=false
BERTH_MAIL_DIR=$mail_dir
BERTH_BACKUP_DIR=$backup_dir
MAIL_FROM="Berth <berth@localhost>"
# The first administrator, created on the first start while no user exists.
DEFAULT_ADMIN_EMAIL=$admin_email
DEFAULT_ADMIN_PASSWORD=$new_admin_password
EOT
    chmod 600 .env
    step "wrote .env (mode 0600) with generated secrets and a first administrator"
}

say_admin() {
    if [ -n "$new_admin_password" ]; then
        echo "    sign in as $admin_email with password: $new_admin_password"
        echo "    (shown once; it is also in .env as DEFAULT_ADMIN_PASSWORD, mode 0600)"
    else
        echo "    sign in with DEFAULT_ADMIN_EMAIL / DEFAULT_ADMIN_PASSWORD from .env,"
        echo "    or make an account: ./target/release/berth-api admin create --email you@example.com"
    fi
}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    step "Docker engine found: running docker-compose.yml"
    if [ ! -f .env ]; then
        write_env 0.0.0.0:8080 postgres://berth:berth@postgres:5432/berth redis://redis:6379 \
            /var/lib/berth/mail /var/lib/berth/backups
    fi
    # Prometheus reads the token from a file of its own.
    grep '^METRICS_TOKEN=' .env | cut -d= -f2- | tr -d '\n' > .env.metrics-token
    chmod 644 .env.metrics-token
    if docker compose version >/dev/null 2>&1; then
        docker compose up -d --build
    else
        docker-compose up -d --build
    fi
    step "Berth is starting: http://127.0.0.1:8080/api/docs (docker compose logs -f api)"
    say_admin
    exit 0
fi

step "checking packages (Postgres, Redis, build headers)"
berth_install_runtime_packages
pg_port=${BERTH_PG_PORT:-55432}
redis_port=${BERTH_REDIS_PORT:-56379}
mkdir -p data/logs data/run data/mail data/backups
# Not world-readable; Postgres (its own user) still needs to pass through data/.
chmod 711 data
chmod 700 data/mail data/backups data/logs data/run

if [ ! -f .env ]; then
    write_env 127.0.0.1:8080 "postgres://postgres@127.0.0.1:$pg_port/berth" \
        "redis://127.0.0.1:$redis_port" "$PWD/data/mail" "$PWD/data/backups"
fi
set -a
. ./.env
set +a

if "$(berth_pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U postgres; then
    step "Postgres already running on 127.0.0.1:$pg_port"
else
    step "starting Postgres on 127.0.0.1:$pg_port (data/postgres)"
    berth_start_postgres data/postgres "$pg_port"
fi
psql -h 127.0.0.1 -p "$pg_port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'berth'" | grep -q 1 \
    || psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "CREATE DATABASE berth"
if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    step "Redis already running on 127.0.0.1:$redis_port"
else
    step "starting Redis on 127.0.0.1:$redis_port (data/redis, AOF on)"
    berth_start_redis data/redis "$redis_port"
fi

step "building the release binaries (cargo build --release)"
cargo build --release --bins
step "applying migrations"
./target/release/berth-api migrate

# What a process runs: a change to its binary or to .env restarts it.
stamp() { cat "$1" .env | sha256sum | cut -d' ' -f1; }

# Runs a binary in its own process group, restarted when it exits, so a worker
# that stops (it exits non-zero when a queue worker dies) comes back.
supervise() {
    local name=$1 binary=$2
    shift 2
    local pidfile="data/run/$name.pid" stampfile="data/run/$name.stamp" now
    now=$(stamp "$binary")
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        if [ "$(cat "$stampfile" 2>/dev/null)" = "$now" ]; then
            step "$name already running, unchanged (log: $BERTH_LOG_DIR/$name.log)"
            return 0
        fi
        step "$name: binary or .env changed, restarting"
        kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
    else
        step "starting $name (log: $BERTH_LOG_DIR/$name.log, rotated daily)"
    fi
    setsid bash -c 'while :; do "$@"; echo "$(date -Is) exited with $?; restarting in 2 s"; sleep 2; done' \
        "$name" "$binary" "$@" >>"data/logs/$name.out" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    echo "$now" > "$stampfile"
}
# Migrations ran above; replicas must not race on them at start.
export BERTH_RUN_MIGRATIONS=false
# Each process writes daily files there and keeps the newest
# BERTH_LOG_KEEP_FILES; what runs before logging starts (a bad setting, a
# crash, the restarts) goes to data/logs/<process>.out.
export BERTH_LOG_DIR="${BERTH_LOG_DIR:-$PWD/data/logs}"
supervise berth-api ./target/release/berth-api
supervise berth-worker ./target/release/berth-worker
supervise berth-scheduler ./target/release/berth-scheduler

step "waiting for http://$BERTH_API_ADDR/api/v1/health/ready"
for _ in $(seq 60); do
    if curl -fsS "http://$BERTH_API_ADDR/api/v1/health/ready" >/dev/null 2>&1; then
        step "Berth is up: $BERTH_PUBLIC_URL"
        echo "    API docs:  $BERTH_PUBLIC_URL/api/docs"
        say_admin
        echo "    mail:      no SMTP_URL set, so messages are .eml files in $BERTH_MAIL_DIR"
        echo "    logs:      $BERTH_LOG_DIR/berth-{api,worker,scheduler}.log (rotated daily, ${BERTH_LOG_KEEP_FILES:-7} days kept)"
        echo "    stop:      scripts/down.sh   (scripts/down.sh --purge also deletes data/ and .env)"
        exit 0
    fi
    sleep 1
done
echo "berth-api did not become ready; see data/logs/berth-api.out and $BERTH_LOG_DIR/berth-api.log" >&2
exit 1
