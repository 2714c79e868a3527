# Roomcast replica image: the backend binary plus the compiled frontend it serves.
#   docker build -t roomcast .                          (everything from source, in the Rust image; also what
#                                                        `docker compose up --build` does)
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

# Binaries built outside Docker (cargo xtask stack-test makes such a context: `roomcast` and `dist/`). The classic
# builder (Compose v1) passes through every stage before its target, so a source build comes through here too, with
# neither file: the wildcards let it (a pattern that matches nothing is skipped; the Dockerfile always matches).
# Being first, this stage needs no Rust image.
FROM runtime-base AS prebuilt
COPY Dockerfile roomcas[t] /usr/local/bin/
COPY Dockerfile dis[t] /srv/roomcast/dist/
RUN rm /usr/local/bin/Dockerfile /srv/roomcast/dist/Dockerfile
USER roomcast

# The build image: Rust plus the frontend's tools. Layers go from what changes least to what changes most, so a
# code change rebuilds only our own crates: tools (binaryen's wasm-opt and esbuild, the JS and CSS minifier, pinned
# here and in xtask/src/tools.rs, checked equal by `cargo xtask test`; wasm-bindgen is a library xtask links, pinned
# in Cargo.lock), then the dependencies of the recipe (cargo-chef: every Cargo.toml and Cargo.lock, no code), then the
# code.
FROM ${RUST_IMAGE} AS toolchain
ARG CARGO_CHEF_VERSION=0.1.78
ARG BINARYEN_VERSION=132
ARG ESBUILD_VERSION=0.28.2
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add wasm32-unknown-unknown \
 && cargo install --locked cargo-chef --version ${CARGO_CHEF_VERSION} \
 && npm install --silent --no-audit --no-fund --save-exact --prefix /src/.tools binaryen@${BINARYEN_VERSION} \
      esbuild@${ESBUILD_VERSION} \
 && rm -rf /usr/local/cargo/registry /root/.npm
WORKDIR /src

FROM toolchain AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM toolchain AS build
COPY --from=planner /src/recipe.json recipe.json
# Cargo's settings (the wasm build's flags) before the dependencies are cooked, so the code's build reuses them:
# .cargo/config.toml's, and the remapping of $CARGO_HOME that xtask adds outside Docker (xtask/src/web.rs), set here
# for the cook and the build alike.
COPY .cargo/config.toml .cargo/config.toml
ENV CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS=--remap-path-prefix=/usr/local/cargo=/cargo
# Dependencies only: the replica (release), the browser client (release, wasm32, in the target directory xtask
# builds it in) and xtask, which drives the frontend build.
RUN cargo chef cook --release --locked --recipe-path recipe.json -p backend --bin roomcast \
 && CARGO_TARGET_DIR=target/web cargo chef cook --release --locked --recipe-path recipe.json -p frontend \
      --target wasm32-unknown-unknown \
 && cargo chef cook --locked --recipe-path recipe.json -p xtask
COPY . .
# xtask finds the tools above (and installs none), builds the frontend (cargo, wasm-bindgen, wasm-opt, esbuild) and
# writes brotli and gzip copies of the assets.
RUN cargo xtask frontend && cargo build --release --locked -p backend --bin roomcast

FROM runtime-base AS runtime
COPY --from=build /src/target/release/roomcast /usr/local/bin/roomcast
COPY --from=build /src/dist /srv/roomcast/dist
USER roomcast
