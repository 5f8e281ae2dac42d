#!/usr/bin/env bash
# Installs what the generated Go and Java clients' check needs (`make clients`,
# scripts/check-clients.sh): Debian's Go toolchain, protoc plugins and libraries, all from
# apt-get (as root; otherwise prints the command and stops). Fast when all is there.
#
#   Go     golang-go (GOPATH mode: Debian's Go libraries live in /usr/share/gocode), protoc-gen-go,
#          protoc-gen-go-grpc, golang-google-grpc-dev, golang-google-protobuf-dev and
#          golang-github-golang-protobuf-1-5-dev (grpc-go 1.33 still imports github.com/golang/protobuf)
#   Java   a JDK, protobuf-compiler (protoc's built-in Java generator, the same 3.21 as
#          libprotobuf-java), protobuf-compiler-grpc-java-plugin, libgrpc-java with its runtime
#          jars (netty, perfmark, guava) and libgeronimo-annotation-1.3-spec-java for the
#          @javax.annotation.Generated the grpc-java plugin emits
set -euo pipefail

say() { echo "setup-clients: $*"; }
# shellcheck source=scripts/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

# Each pair is a file the check uses and the Debian package that ships it.
needs=(
    /usr/bin/go:golang-go
    /usr/bin/protoc-gen-go:protoc-gen-go
    /usr/bin/protoc-gen-go-grpc:protoc-gen-go-grpc
    /usr/share/gocode/src/google.golang.org/grpc/server.go:golang-google-grpc-dev
    /usr/share/gocode/src/google.golang.org/protobuf/proto/proto.go:golang-google-protobuf-dev
    /usr/share/gocode/src/github.com/golang/protobuf/proto/proto.go:golang-github-golang-protobuf-1-5-dev
    /usr/bin/javac:default-jdk-headless
    /usr/bin/protoc:protobuf-compiler
    /usr/bin/grpc_java_plugin:protobuf-compiler-grpc-java-plugin
    /usr/share/java/protobuf.jar:libprotobuf-java
    /usr/share/java/grpc-stub.jar:libgrpc-java
    /usr/share/java/netty-codec-http2.jar:libnetty-java
    /usr/share/java/perfmark-api.jar:libperfmark-java
    /usr/share/java/guava.jar:libguava-java
    /usr/share/java/geronimo-annotation-1.3-spec.jar:libgeronimo-annotation-1.3-spec-java
)
missing=()
for pair in "${needs[@]}"; do
    [ -e "${pair%%:*}" ] || missing+=("${pair#*:}")
done
apt_get_install setup-clients "${missing[@]}"
for pair in "${needs[@]}"; do
    [ -e "${pair%%:*}" ] || { echo "setup-clients: error: ${pair%%:*} still missing after apt-get install ${pair#*:}" >&2; exit 1; }
done
say "ok ($(go version | cut -d' ' -f3), protoc $(protoc --version | cut -d' ' -f2)," \
    "$(javac -version 2>&1), grpc-java $(basename "$(readlink -f /usr/share/java/grpc-stub.jar)" .jar | cut -d- -f3))"
