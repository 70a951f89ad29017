#!/usr/bin/env bash
# Stops what scripts/up.sh started: Berth's processes, then Redis and Postgres.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
for name in berth-api berth-worker berth-scheduler; do
    pidfile="data/run/$name.pid"
    if [ -f "$pidfile" ]; then
        # The supervisor leads its own process group: stop the loop and the binary.
        kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    fi
done
sleep 1
berth_stop_redis data/redis
berth_stop_postgres data/postgres
echo "Berth stopped"
