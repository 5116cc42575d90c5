# syntax=docker/dockerfile:1
# exdaas container image: multi-stage build, slim runtime, non-root user.
#   docker build -t exdaas .
#   docker run -p 4000:4000 -v exdaas-data:/data exdaas

# --- build: the server, and the example plugins from source ---------------
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang lld \
 && rustup target add wasm32-unknown-unknown \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Locked dependencies, the stripped distribution profile (scripts/test.sh
# runs this same command and checks the binary's size).
RUN cargo build --profile dist --locked --bin exdaas \
 && scripts/build-plugins.sh

# --- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin exdaas \
 && mkdir -p /data /etc/exdaas /usr/lib/exdaas/plugins \
 && chown exdaas:exdaas /data
COPY --from=build /src/target/dist/exdaas /usr/local/bin/exdaas
COPY --from=build /src/examples/dist/ /usr/lib/exdaas/plugins/
COPY config/container.toml /etc/exdaas/exdaas.toml
USER exdaas
WORKDIR /data
VOLUME /data
EXPOSE 4000
ENV EXDAAS_LOG=info
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["exdaas", "--config", "/etc/exdaas/exdaas.toml", "health"]
ENTRYPOINT ["exdaas", "--config", "/etc/exdaas/exdaas.toml"]
CMD ["serve"]
