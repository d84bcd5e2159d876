# The broker as a small container image. The build step is the one CI runs
# (`cargo build --release --locked -p broker-server -p broker-http --bin broker-server --example receiver`), so
# the image holds what CI tested.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p broker-server -p broker-http --bin broker-server --example receiver

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home broker \
 && mkdir -m 0700 /data && chown broker:broker /data
COPY --from=build /src/target/release/broker-server /usr/local/bin/broker-server
# A sample webhook receiver, for docker-compose.yml and trying things out.
COPY --from=build /src/target/release/examples/receiver /usr/local/bin/webhook-receiver
USER broker
ENV BROKER_LISTEN=0.0.0.0:8080
# In memory unless BROKER_DATA_DIR is set; /data (owned by `broker`, 0700)
# is there to mount a volume on: see docker-compose.yml.
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/broker-server", "--health-check"]
ENTRYPOINT ["/usr/local/bin/broker-server"]
