#!/usr/bin/env bash
# Brings Berth up on this machine. With a Docker engine: `docker compose up`.
# Without one: installs Postgres and Redis from Debian packages when missing,
# runs them from ./data (Postgres on 127.0.0.1:$BERTH_PG_PORT, Redis with AOF on
# 127.0.0.1:$BERTH_REDIS_PORT), writes .env with fresh secrets on first run,
# builds the release binaries, applies migrations and starts berth-api,
# berth-worker and berth-scheduler under a restart loop. Logs: ./data/logs.
# Stop everything with scripts/down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    [ -f .env ] || cp .env.example .env
    exec docker compose up -d --build
fi

berth_install_packages
pg_port=${BERTH_PG_PORT:-55432}
redis_port=${BERTH_REDIS_PORT:-56379}
mkdir -p data/logs data/run data/mail data/backups
chmod 755 data

if [ ! -f .env ]; then
    secret() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }
    cat > .env <<EOT
DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/berth
REDIS_URL=redis://127.0.0.1:$redis_port
BERTH_API_ADDR=127.0.0.1:8080
BERTH_PUBLIC_URL=http://127.0.0.1:8080
BERTH_MASTER_KEY=$(secret 32)
JWT_SECRET=$(secret 48)
METRICS_TOKEN=$(secret 24 | tr -d '/+=')
COOKIE_SECURE=false
BERTH_MAIL_DIR=$PWD/data/mail
BERTH_BACKUP_DIR=$PWD/data/backups
MAIL_FROM="Berth <berth@localhost>"
EOT
    chmod 600 .env
    echo "wrote .env with generated secrets"
fi
set -a
. ./.env
set +a

if ! "$(berth_pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; then
    berth_start_postgres data/postgres "$pg_port"
fi
psql -h 127.0.0.1 -p "$pg_port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'berth'" | grep -q 1 \
    || psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "CREATE DATABASE berth"
if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    berth_start_redis data/redis "$redis_port"
fi

cargo build --release --bins
./target/release/berth-api migrate

# Runs a binary in its own process group, restarted when it exits, so a worker
# that stops (it exits non-zero when a queue worker dies) comes back.
supervise() {
    local name=$1
    shift
    [ -f "data/run/$name.pid" ] && kill -0 "$(cat "data/run/$name.pid")" 2>/dev/null && return 0
    setsid bash -c 'while :; do "$@"; echo "$(date -Is) exited with $?; restarting in 2 s"; sleep 2; done' \
        "$name" "$@" >>"data/logs/$name.log" 2>&1 < /dev/null &
    echo $! > "data/run/$name.pid"
}
supervise berth-api env BERTH_RUN_MIGRATIONS=false ./target/release/berth-api
supervise berth-worker ./target/release/berth-worker
supervise berth-scheduler ./target/release/berth-scheduler

for _ in $(seq 60); do
    if curl -fsS "http://$BERTH_API_ADDR/api/v1/health/ready" >/dev/null 2>&1; then
        echo "Berth is up: http://$BERTH_API_ADDR/api/v1/health (logs in data/logs, stop with scripts/down.sh)"
        exit 0
    fi
    sleep 1
done
echo "berth-api did not become ready; see data/logs/berth-api.log" >&2
exit 1
