#!/usr/bin/env bash
# Builds the tiercache OCI image from a release binary with no Docker daemon and no registry:
# umoci lays out the image, skopeo writes the archives. Reproducible: the same binary (and the
# same commit date, which dates the files and the config) gives the same image digest.
#
#   scripts/build-image.sh [BINARY] [OUT]
#
#   BINARY   the release binary (default $CARGO_TARGET_DIR/release/tiercache)
#   OUT      output folder (default dist/image), which receives:
#              tiercache.oci.tar      oci-archive (skopeo copy oci-archive:... , podman load)
#              tiercache.docker.tar   docker-archive (docker load -i), tagged tiercache:<version>
#              tiercache.debug        the debug info split off the stripped binary
#              DIGEST                 the manifest digest, sha256:...
#
# SOURCE_DATE_EPOCH overrides the date (default: the commit date of HEAD).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The Makefile's default target folder.
target=${CARGO_TARGET_DIR:-$HOME/.cache/tiercache-target}
binary=$(realpath "${1:-$target/release/tiercache}")
out=${2:-$root/dist/image}

die() { echo "build-image: error: $*" >&2; exit 1; }
for tool in umoci skopeo objcopy strip ldd; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing; run scripts/setup-deploy.sh (apt-get install -y umoci skopeo binutils)"
done
[ -x "$binary" ] || die "no binary at $binary; run: cargo build --release -p tiercache-cli"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
source=$(sed -n 's/^repository = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

work=$(mktemp -d /tmp/tiercache-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
out=$(realpath "$out")

# Strip the binary, keeping its debug info beside the image (linked by .gnu_debuglink).
cp "$binary" "$work/tiercache"
objcopy --only-keep-debug "$work/tiercache" "$work/tiercache.debug"
strip --strip-debug --strip-unneeded "$work/tiercache"
(cd "$work" && objcopy --add-gnu-debuglink=tiercache.debug tiercache)

layout="$work/oci"
umoci init --layout "$layout"
umoci new --image "$layout:build"
umoci unpack --image "$layout:build" "$work/bundle" >/dev/null
rootfs="$work/bundle/rootfs"

install -D -m 0755 "$work/tiercache" "$rootfs/usr/local/bin/tiercache"
# The shared libraries the binaries link (glibc, libgcc_s), at the paths the loader expects.
{ ldd "$work/tiercache"; ldd "$(command -v sleep)"; } | grep -o '/[^ ]*' | sort -u | while read -r lib; do
    install -D -m 0755 "$(realpath "$lib")" "$rootfs$lib"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
install -D -m 0644 "$root/scripts/image/tiercache.toml" "$rootfs/etc/tiercache/tiercache.toml"
# `sleep` for the chart's preStop hook (the image has no shell; lifecycle sleep needs k8s 1.30).
install -D -m 0755 "$(command -v sleep)" "$rootfs/usr/local/bin/sleep"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0700 -o 65532 -g 65532 "$rootfs/home/nonroot"
# Fixed dates make the layer tar, and so its digest, depend on the contents alone.
find "$rootfs" -exec touch -h -d "@$epoch" {} +

umoci repack --image "$layout:build" --history.created "$created" \
    --history.created_by "scripts/build-image.sh" "$work/bundle" >/dev/null
umoci config --image "$layout:build" --tag "$version" \
    --created "$created" --history.created "$created" --history.created_by "umoci config" \
    --author "tiercache" --architecture amd64 --os linux \
    --config.user 65532:65532 \
    --config.entrypoint tiercache --config.cmd serve \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin \
    --config.env TIERCACHE_CONFIG=/etc/tiercache/tiercache.toml \
    --config.workingdir /home/nonroot \
    --config.exposedports 50051/tcp --config.exposedports 9464/tcp \
    --config.stopsignal SIGTERM \
    --config.label "org.opencontainers.image.title=tiercache" \
    --config.label "org.opencontainers.image.description=gRPC cache-as-a-service (moka L1 + Redis L2)" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --config.label "org.opencontainers.image.created=$created" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --config.label "org.opencontainers.image.source=$source"
umoci rm --image "$layout:build"
umoci gc --layout "$layout"

rm -f "$out/tiercache.oci.tar" "$out/tiercache.docker.tar"
skopeo copy --quiet "oci:$layout:$version" "oci-archive:$out/tiercache.oci.tar:tiercache:$version"
skopeo copy --quiet "oci:$layout:$version" "docker-archive:$out/tiercache.docker.tar:tiercache:$version"
cp "$work/tiercache.debug" "$out/tiercache.debug"
digest=$(skopeo inspect --raw "oci:$layout:$version" | sha256sum | awk '{print "sha256:" $1}')
echo "$digest" >"$out/DIGEST"
echo "build-image: tiercache:$version $digest ($(du -h "$work/tiercache" | cut -f1) binary," \
    "$(du -h "$out/tiercache.oci.tar" | cut -f1) archive) in $out"
