#!/usr/bin/env bash
# Brings the Docker path up for real, the way a user with a Docker engine
# does: `scripts/up.sh` takes its compose path, docker-compose 1.29 (Debian)
# reads the shipped docker-compose.yml and Dockerfile, and podman's
# docker-compatible socket stands in for the engine. No registry is reachable
# here, so the base images are built locally from Debian packages and named
# through BERTH_BUILDER_IMAGE, BERTH_RUNTIME_IMAGE, BERTH_POSTGRES_IMAGE and
# BERTH_REDIS_IMAGE. Succeeds when /api/v1/health/ready answers 200 through
# the published port and the generated administrator signs in.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

missing=()
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
# Container names resolve on the stack's network through the dnsname plugin.
[ -x /usr/lib/cni/dnsname ] || missing+=(golang-github-containernetworking-plugin-dnsname)
berth_apt "${missing[@]}"

work=$(mktemp -d /tmp/berth-compose.XXXXXX)
export CONTAINERS_CONF="$work/containers.conf"
cat > "$CONTAINERS_CONF" <<'EOT'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOT
export DOCKER_HOST="unix://$work/podman.sock"
podman system service --time=0 "$DOCKER_HOST" >"$work/podman.log" 2>&1 &
service_pid=$!
project=""
health_pid=""
cleanup() {
    [ -n "$health_pid" ] && kill "$health_pid" 2>/dev/null
    if [ -n "$project" ]; then
        podman ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r podman rm -f -t 1 >/dev/null 2>&1 || true
        podman network rm "${project}_default" >/dev/null 2>&1 || true
        podman volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
        # The stack's images and the build stage left untagged: gigabytes
        # that would pile up run after run.
        podman images -q --filter "reference=*${project}*" | xargs -r podman rmi -f >/dev/null 2>&1 || true
        podman image prune -f >/dev/null 2>&1 || true
    fi
    kill "$service_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for _ in $(seq 50); do docker info >/dev/null 2>&1 && break; sleep 0.2; done

step() { echo "==> $*"; }
base=localhost/berth-compose-base:bookworm
if ! podman image exists "$base"; then
    step "building the Debian base image (debootstrap bookworm)"
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log"
    tar -C "$work/rootfs" -c . | podman import - "$base" >/dev/null
    rm -rf "$work/rootfs"
fi

step "building the Rust builder image (this machine's toolchain and CA certificates)"
mkdir -p "$work/builder"
cp -a "$(rustc --print sysroot)" "$work/builder/toolchain"
rm -rf "$work/builder/toolchain/share/doc"
cp /etc/ssl/certs/ca-certificates.crt "$work/builder/ca-certificates.crt"
cat > "$work/builder/Dockerfile" <<EOT
FROM $base
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain /usr/local/rust
ENV PATH=/usr/local/rust/bin:\$PATH CARGO_HOME=/usr/local/cargo
EOT
podman build -q -t localhost/berth-compose-builder "$work/builder" >/dev/null
rm -rf "$work/builder"

step "building stand-ins for the postgres and redis images from Debian packages"
podman build -q --build-arg BASE_IMAGE="$base" -t localhost/berth-compose-postgres tests/compose/postgres >/dev/null
podman build -q --build-arg BASE_IMAGE="$base" -t localhost/berth-compose-redis tests/compose/redis >/dev/null

step "copying the working tree (without target/ or .env) and running scripts/up.sh there"
mkdir -p "$work/repo"
git ls-files -co --exclude-standard | grep -v '^\.env$' | tar -cf - -T - | tar -C "$work/repo" -xf -
export BERTH_BUILDER_IMAGE=localhost/berth-compose-builder
export BERTH_RUNTIME_IMAGE="$base"
export BERTH_POSTGRES_IMAGE=localhost/berth-compose-postgres
export BERTH_REDIS_IMAGE=localhost/berth-compose-redis
# podman runs health checks from systemd timers, which this machine does not
# have; this loop runs them instead, so `depends_on: service_healthy` holds.
(while :; do
    for c in $(podman ps --filter health=starting --format '{{.Names}}' 2>/dev/null); do
        podman healthcheck run "$c" >/dev/null 2>&1 || true
    done
    sleep 2
done) &
health_pid=$!
project=$(basename "$work" | tr 'A-Z' 'a-z' | tr -cd 'a-z0-9')
(cd "$work/repo" && COMPOSE_PROJECT_NAME="$project" scripts/up.sh)

step "waiting for http://127.0.0.1:8080/api/v1/health/ready"
for _ in $(seq 120); do
    if curl -fsS http://127.0.0.1:8080/api/v1/health/ready >/dev/null 2>&1; then
        password=$(grep '^DEFAULT_ADMIN_PASSWORD=' "$work/repo/.env" | cut -d= -f2-)
        email=$(grep '^DEFAULT_ADMIN_EMAIL=' "$work/repo/.env" | cut -d= -f2-)
        if curl -fsS http://127.0.0.1:8080/api/v1/auth/login -H 'content-type: application/json' \
            -d "{\"identifier\": \"$email\", \"password\": \"$password\"}" | grep -q accessToken; then
            step "the compose stack is up: ready, and the generated administrator signs in"
            exit 0
        fi
        echo "ready, but the administrator could not sign in" >&2
        exit 1
    fi
    sleep 2
done
echo "the compose stack did not become ready; its api's log:" >&2
(cd "$work/repo" && COMPOSE_PROJECT_NAME="$project" docker-compose logs --tail 50 api) >&2 || true
exit 1
