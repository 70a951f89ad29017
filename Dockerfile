# Builds berth-api, berth-worker and berth-scheduler into one small runtime image;
# docker-compose.yml picks the binary per service. The base images can be
# replaced (BUILDER_IMAGE, RUNTIME_IMAGE) where no registry can be reached:
# scripts/compose-check.sh builds both from Debian packages.
ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p berth-api -p berth-workers -p berth-scheduler \
 && cp target/release/berth-api target/release/berth-worker target/release/berth-scheduler /usr/local/bin/

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates postgresql-client openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/berth --create-home berth
COPY --from=build /usr/local/bin/berth-* /usr/local/bin/
USER berth
WORKDIR /var/lib/berth
ENV BERTH_API_ADDR=0.0.0.0:8080
EXPOSE 8080
CMD ["berth-api"]
