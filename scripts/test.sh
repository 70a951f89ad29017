#!/usr/bin/env bash
# Runs Berth's whole test suite on real services. Installs Postgres, Redis, the
# SMTP listener and promtool from Debian packages when missing, starts a
# throwaway Postgres cluster for the run, and stops it afterwards. Each test
# starts its own Redis, SMTP listener, api, workers and schedulers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

berth_install_packages
BERTH_SCHEMATHESIS=$(berth_install_schemathesis)
export BERTH_SCHEMATHESIS

run_dir=$(mktemp -d /tmp/berth-test.XXXXXX)
chmod 755 "$run_dir"
cleanup() {
    berth_stop_postgres "$run_dir/pg" || echo "test Postgres did not stop" >&2
    rm -rf "$run_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(berth_free_port)
berth_start_postgres "$run_dir/pg" "$port" fast
export BERTH_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"

# The end-to-end tests run the real binaries, so build them first.
cargo build --workspace --bins
cargo test --workspace "$@"
