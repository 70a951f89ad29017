#!/usr/bin/env bash
# Benchmarks the job pipeline and prints each number beside its bound, measured
# in the same run: pgbench for enqueue, a bare apalis-redis worker for
# processing. Starts a Postgres (default, durable settings) and a Redis (AOF
# everysec) of its own and stops them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

berth_install_packages
run_dir=$(mktemp -d /tmp/berth-bench.XXXXXX)
chmod 755 "$run_dir"
cleanup() {
    berth_stop_redis "$run_dir/redis"
    berth_stop_postgres "$run_dir/pg" || echo "test Postgres did not stop" >&2
    rm -rf "$run_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pg_port=$(berth_free_port)
redis_port=$(berth_free_port)
berth_start_postgres "$run_dir/pg" "$pg_port"
berth_start_redis "$run_dir/redis" "$redis_port"

cargo build --release -p berth-workers -p berth-api -p berth-bench
BENCH_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres" \
BENCH_REDIS_URL="redis://127.0.0.1:$redis_port" \
BENCH_PGBENCH="$(berth_pg_bin)/pgbench" \
BENCH_WORKER_BIN="$PWD/target/release/berth-worker" \
BENCH_API_BIN="$PWD/target/release/berth-api" \
BERTH_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres" \
BERTH_BIN_PROFILE=release \
    ./target/release/berth-bench "$@"
