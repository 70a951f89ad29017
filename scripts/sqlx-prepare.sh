#!/usr/bin/env bash
# Compile-checked SQL: the `sqlx::query!` family checks each statement against
# the schema at build time. Builds need no database: they read the statements'
# descriptions from `.sqlx/` (committed; `.cargo/config.toml` sets
# SQLX_OFFLINE=true). This script describes every statement again against a
# throwaway Postgres with all migrations applied:
#   scripts/sqlx-prepare.sh          rewrites .sqlx/ (run it after changing SQL)
#   scripts/sqlx-prepare.sh --check  fails when .sqlx/ is not current (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

mode=${1:-write}
run_dir=$(mktemp -d /tmp/berth-sqlx.XXXXXX)
chmod 755 "$run_dir"
cleanup() {
    berth_stop_postgres "$run_dir/pg" || true
    rm -rf "$run_dir"
}
trap cleanup EXIT

port=$(berth_free_port)
berth_start_postgres "$run_dir/pg" "$port" fast
url="postgres://postgres@127.0.0.1:$port/postgres"
for migration in migrations/*.sql; do
    "$(berth_pg_bin)/psql" -q -v ON_ERROR_STOP=1 -d "$url" -f "$migration" >/dev/null
done

out="$run_dir/sqlx"
mkdir -p "$out"
# The crates whose statements are checked; touched so their macros run again.
crates=(jobs remote)
for crate in "${crates[@]}"; do
    find "$crate/src" -name '*.rs' -exec touch {} +
done
packages=()
for crate in "${crates[@]}"; do
    packages+=(-p "berth-$crate")
done
SQLX_OFFLINE=false DATABASE_URL="$url" SQLX_OFFLINE_DIR="$out" \
    cargo check --quiet --all-targets "${packages[@]}"

if [ "$mode" = --check ]; then
    if ! diff -r .sqlx "$out" >"$run_dir/diff"; then
        echo ".sqlx/ is not current: run scripts/sqlx-prepare.sh and commit it" >&2
        head -50 "$run_dir/diff" >&2
        exit 1
    fi
    echo ".sqlx/ is current ($(ls "$out" | wc -l) statements)"
else
    rm -rf .sqlx
    cp -r "$out" .sqlx
    echo "wrote .sqlx/ ($(ls .sqlx | wc -l) statements)"
fi
