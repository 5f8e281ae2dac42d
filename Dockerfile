# syntax=docker/dockerfile:1
# For Docker users: `docker build -t tiercache .`. CI builds the same image without a Docker
# daemon (`make image`, scripts/build-image.sh); this file is linted with hadolint.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
COPY . .
# The release binary, stripped (the debug info is of no use in the image).
RUN cargo build --release --locked -p tiercache-cli \
    && objcopy --strip-debug --strip-unneeded target/release/tiercache /tiercache

# distroless/cc: glibc, libgcc, CA certificates and the nonroot user (65532), nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /tiercache /usr/local/bin/tiercache
# `sleep` for the chart's preStop hook (the image has no shell).
COPY --from=builder /bin/sleep /usr/local/bin/sleep
COPY scripts/image/tiercache.toml /etc/tiercache/tiercache.toml
ENV TIERCACHE_CONFIG=/etc/tiercache/tiercache.toml
USER 65532:65532
EXPOSE 50051 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["tiercache"]
CMD ["serve"]
