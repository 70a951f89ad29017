# Builds berth-api, berth-worker and berth-scheduler into one small runtime image;
# docker-compose.yml picks the binary per service.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins \
 && cp target/release/berth-api target/release/berth-worker target/release/berth-scheduler /usr/local/bin/

FROM debian:bookworm-slim
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
