# Roomcast replica image: the backend binary plus the compiled frontend it serves.
# Build: docker build -t roomcast .     Run: see docker-compose.yml.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# xtask installs what the frontend build needs (wasm32 target, trunk, wasm-bindgen-cli, npm's binaryen).
RUN cargo xtask frontend && cargo build --release -p backend --bin roomcast

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 roomcast
COPY --from=build /src/target/release/roomcast /usr/local/bin/roomcast
COPY --from=build /src/dist /srv/roomcast/dist
ENV ROOMCAST_HOST=0.0.0.0 \
    ROOMCAST_PORT=3000 \
    ROOMCAST_STATIC_DIR=/srv/roomcast/dist
USER roomcast
EXPOSE 3000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/roomcast"]
