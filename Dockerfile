# Gatehouse in a container. Build and run:
#   docker build -t gatehouse .
#   docker run --rm -p 8080:8080 -e BACKEND_ADDR=host.docker.internal:9000 gatehouse
# The image runs examples/gatehouse.toml (listening on 0.0.0.0:8080 here);
# mount your own at /etc/gatehouse/gatehouse.toml. The admin endpoint stays
# on the container's loopback (127.0.0.1:9901), where the health check asks
# it; publish it only on purpose (admin.bind in the config).
# `docker stop` sends SIGTERM: live connections drain within
# timeouts.shutdown_drain (30 s by default), so give it --time 45.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin gatehouse \
    && strip target/release/gatehouse

FROM debian:bookworm-slim
# CA roots for upstream TLS and ACME directories.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/gatehouse --create-home gatehouse
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
COPY examples/gatehouse.toml /etc/gatehouse/gatehouse.toml
USER gatehouse
# The internal CA and ACME state live under the home directory (a volume
# keeps them across containers).
ENV HOME=/var/lib/gatehouse \
    XDG_DATA_HOME=/var/lib/gatehouse \
    GATEHOUSE_CONFIG=/etc/gatehouse/gatehouse.toml \
    LISTEN_ADDR=0.0.0.0:8080
VOLUME /var/lib/gatehouse
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["gatehouse", "health", "--admin", "127.0.0.1:9901"]
ENTRYPOINT ["gatehouse"]
CMD ["run", "--log-format", "json"]
