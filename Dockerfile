# Roomcast replica image: the backend binary plus the compiled frontend it serves.
#   docker build -t roomcast .                          (everything from source, in the Rust image)
#   docker build --target prebuilt -t roomcast CONTEXT  (CONTEXT holds roomcast + dist/ built outside, e.g. by
#                                                        cargo xtask; the same runtime stage)
# Base images are arguments so a registry mirror (or a locally imported Debian) can stand in for Docker Hub.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# The runtime every Roomcast image runs on: Debian, an unprivileged user, the binary's defaults for containers.
FROM ${RUNTIME_IMAGE} AS runtime-base
RUN useradd --system --uid 10001 roomcast
ENV ROOMCAST_HOST=0.0.0.0 \
    ROOMCAST_PORT=3000 \
    ROOMCAST_STATIC_DIR=/srv/roomcast/dist
EXPOSE 3000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/roomcast"]

# Binaries built outside Docker. Comes before the Rust stages, so the classic builder (Compose v1) stops here
# without pulling the Rust image.
FROM runtime-base AS prebuilt
COPY roomcast /usr/local/bin/roomcast
COPY dist /srv/roomcast/dist
USER roomcast

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# xtask installs what the frontend build needs (wasm32 target, trunk, wasm-bindgen-cli, npm's binaryen) and writes
# brotli and gzip copies of the assets.
RUN cargo xtask frontend && cargo build --release --locked -p backend --bin roomcast

FROM runtime-base AS runtime
COPY --from=build /src/target/release/roomcast /usr/local/bin/roomcast
COPY --from=build /src/dist /srv/roomcast/dist
USER roomcast
