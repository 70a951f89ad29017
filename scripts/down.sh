#!/usr/bin/env bash
# Stops what scripts/up.sh started: Berth's processes, then Redis and Postgres.
# Says what it stops; exits non-zero, naming it, when something did not stop.
# `--purge` then deletes data/ (database, queues, mail, backups) and .env,
# after asking (`--purge --yes` does not ask).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

purge=false
confirmed=false
for arg in "$@"; do
    case $arg in
        --purge) purge=true ;;
        --yes) confirmed=true ;;
        *) echo "usage: scripts/down.sh [--purge [--yes]]" >&2; exit 2 ;;
    esac
done

failed=()
for name in berth-api berth-worker berth-scheduler; do
    pidfile="data/run/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "==> $name was not running"
        rm -f "$pidfile" "data/run/$name.stamp"
        continue
    fi
    echo "==> stopping $name"
    # The supervisor leads its own process group: stop the loop and the binary.
    kill -TERM -- "-$pid" 2>/dev/null
    for _ in $(seq 150); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 -- "-$pid" 2>/dev/null; then
        failed+=("$name (process group $pid)")
    else
        rm -f "$pidfile" "data/run/$name.stamp"
    fi
done

if [ -f data/redis/redis.pid ]; then
    echo "==> stopping Redis"
    berth_stop_redis data/redis
    if [ -f data/redis/redis.pid ] && kill -0 "$(cat data/redis/redis.pid)" 2>/dev/null; then
        failed+=("Redis (pid $(cat data/redis/redis.pid))")
    fi
fi
if [ -f data/postgres/data/postmaster.pid ]; then
    echo "==> stopping Postgres"
    if ! berth_stop_postgres data/postgres; then
        failed+=("Postgres (see data/postgres/postgres.log)")
    fi
fi

if [ ${#failed[@]} -gt 0 ]; then
    printf 'could not stop: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "==> Berth stopped"

if $purge; then
    if ! $confirmed; then
        printf 'Delete data/ (database, queues, mail, backups) and .env for good? [y/N] '
        read -r answer || answer=""
        case $answer in y|Y|yes) ;; *) echo "kept data/ and .env"; exit 0 ;; esac
    fi
    rm -rf data .env .env.metrics-token
    echo "==> deleted data/ and .env"
fi
