# Shared by up.sh, test.sh and bench.sh: install and run Berth's backing services
# from Debian packages, each in a directory of its own, never touching the
# machine's own service configuration.

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

berth_pg_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# berth_apt PACKAGE...: installs the named Debian packages.
berth_apt() {
    [ $# -gt 0 ] || return 0
    echo "installing $* from Debian packages" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# What running Berth needs: Postgres, Redis and curl (Berth's SSH is pure
# Rust, russh with ring: no C library to build against).
berth_runtime_missing() {
    local pg
    pg=$(berth_pg_bin)
    { [ -n "$pg" ] && [ -x "$pg/initdb" ]; } || echo postgresql
    command -v redis-server >/dev/null 2>&1 || echo redis-server
    command -v curl >/dev/null 2>&1 || echo curl
}

berth_install_runtime_packages() {
    # shellcheck disable=SC2046
    berth_apt $(berth_runtime_missing)
}

# What the test suite adds: the SMTP listener, promtool, OpenSSH servers as
# users' servers, podman behind the docker CLI and nginx on them, a container
# registry, pgbench.
berth_install_packages() {
    local missing=()
    mapfile -t missing < <(berth_runtime_missing)
    /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || missing+=(python3-aiosmtpd)
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    [ -x /usr/sbin/nginx ] || missing+=(nginx)
    # The test servers' base image (busybox), HTTP checks, git over SSH.
    [ -x /bin/busybox ] || missing+=(busybox-static)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v git >/dev/null 2>&1 || missing+=(git)
    command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
    # Image deploys pull from a registry of the tests' own.
    command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
    # Certificates come from a local ACME CA (pebble) whose DNS is pebble-challtestsrv.
    command -v pebble >/dev/null 2>&1 || missing+=(pebble)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    berth_apt "${missing[@]}"
}

# Schemathesis (PyPI), pinned, in a virtualenv of the project's own; prints
# the path of its command. Installed once per machine (BERTH_TOOLS_DIR).
BERTH_SCHEMATHESIS_VERSION=4.32.5
berth_install_schemathesis() {
    local venv="${BERTH_TOOLS_DIR:-$HOME/.cache/berth-tools}/schemathesis-$BERTH_SCHEMATHESIS_VERSION"
    if [ ! -x "$venv/bin/schemathesis" ]; then
        echo "installing schemathesis $BERTH_SCHEMATHESIS_VERSION into $venv" >&2
        if ! python3 -m venv "$venv" >&2; then
            berth_apt python3-venv >&2
            python3 -m venv "$venv" >&2
        fi
        "$venv/bin/pip" install --quiet "schemathesis==$BERTH_SCHEMATHESIS_VERSION" >&2
    fi
    echo "$venv/bin/schemathesis"
}

berth_free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# berth_start_postgres DIR PORT [fast]: a cluster of our own in DIR on 127.0.0.1:PORT.
# "fast" turns fsync off: for throwaway test clusters only.
berth_start_postgres() {
    local dir=$1 port=$2 mode=${3:-durable}
    local bin run=()
    bin=$(berth_pg_bin)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # Postgres refuses to run as root.
    if [ "$(id -u)" = 0 ]; then
        chown postgres:postgres "$dir"
        run=(runuser -u postgres --)
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        "${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    # Test clusters: one role whose password is checked (every other is
    # trusted), for the test that no password reaches a command line.
    local hba="$dir/data/pg_hba.conf"
    if [ "$mode" = fast ] && ! grep -q berth_password_probe "$hba"; then
        "${run[@]}" sed -i '1i host all berth_password_probe 127.0.0.1/32 scram-sha-256' "$hba"
    fi
    local opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300"
    [ "$mode" = fast ] && opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$opts" -w -t 60 start >/dev/null
}

# Fails when the cluster is still running afterwards.
berth_stop_postgres() {
    local dir=$1 bin run=()
    bin=$(berth_pg_bin)
    [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
    [ -f "$dir/data/postmaster.pid" ] || return 0
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    [ ! -f "$dir/data/postmaster.pid" ]
}

# berth_start_redis DIR PORT: AOF on (everysec), noeviction, as SPEC and APALIS.md ask.
berth_start_redis() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
        --appendonly yes --appendfsync everysec --maxmemory-policy noeviction
    for _ in $(seq 50); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "redis did not start; see $dir/redis.log" >&2
    return 1
}

# Waits for Redis to exit: its shutdown save needs its directory, and a Redis
# whose final save fails refuses to exit.
berth_stop_redis() {
    local dir=$1 pid
    [ -f "$dir/redis.pid" ] || return 0
    pid=$(cat "$dir/redis.pid")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}
