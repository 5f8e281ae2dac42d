#!/usr/bin/env bash
# The generated Go and Java clients' check, run by `make clients` (and so by `make test` and CI):
# generates both from proto/ with Debian's local plugins (clients/buf.gen.*.local.yaml), compiles
# them with a small program each (clients/go/smoke, clients/java/Smoke.java), starts the real
# server binary memory-only on a free port, and runs both programs against it. Each program
# checks every answer and exits non-zero on a mismatch; a second run of each must fail (its cold
# key is warm then), so a program that cannot fail does not pass. The generated code is not
# committed: it goes to $CLIENTS_BUILD (build/clients), wiped first.
#
# Needs scripts/setup-clients.sh's packages, buf (scripts/setup.sh) and the debug server binary
# (`make clients` builds it first; TIERCACHE_BIN overrides its path).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
buf="$root/.tools/node/node_modules/.bin/buf"
build=${CLIENTS_BUILD:-$root/build/clients}
bin=${TIERCACHE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/tiercache-target}/debug/tiercache}

say() { echo "clients: $*"; }
die() { echo "clients: error: $*" >&2; exit 1; }

[ -x "$buf" ] || die "buf is missing; run: bash scripts/setup.sh"
[ -x "$bin" ] || die "no server binary at $bin; run: cargo build -p tiercache-cli"
bash "$root/scripts/setup-clients.sh" >/dev/null || die "missing packages; run: bash scripts/setup-clients.sh"

rm -rf "$build"
mkdir -p "$build"

# --- generate --------------------------------------------------------------------------------
# The local templates must set the same packages as the users' remote ones they stand in for.
managed() { sed -n '/^managed:/,/^plugins:/p' "$1"; }
for lang in go java; do
    [ "$(managed "buf.gen.$lang.yaml")" = "$(managed "clients/buf.gen.$lang.local.yaml")" ] ||
        die "the managed: sections of buf.gen.$lang.yaml and clients/buf.gen.$lang.local.yaml differ"
done
"$buf" generate --template clients/buf.gen.go.local.yaml -o "$build/go/src"
"$buf" generate --template clients/buf.gen.java.local.yaml -o "$build/java/src"
say "generated $(find "$build/go/src" -name '*.go' | wc -l) Go and $(find "$build/java/src" -name '*.java' | wc -l) Java files"

# --- compile ---------------------------------------------------------------------------------
# GOPATH mode: the generated package is $build/go/src/<its import path>, Debian's Go libraries
# are in /usr/share/gocode. No module download happens.
unformatted=$(gofmt -l clients/go)
[ -z "$unformatted" ] || die "gofmt would change: $unformatted (run: gofmt -w clients/go)"
GO111MODULE=off GOFLAGS= GOPATH="$build/go:/usr/share/gocode" \
    go build -o "$build/bin/smoke-go" ./clients/go/smoke

# The Debian jars: grpc-java and its transport (netty), protobuf-java, and what they load.
jars=(protobuf grpc-api grpc-context grpc-core grpc-stub grpc-protobuf grpc-protobuf-lite
    grpc-netty netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-common
    netty-handler netty-resolver netty-transport guava perfmark-api geronimo-annotation-1.3-spec)
classpath=$(printf '/usr/share/java/%s.jar:' "${jars[@]}")
classpath=${classpath%:}
mkdir -p "$build/java/classes"
find "$build/java/src" -name '*.java' >"$build/java/sources.txt"
javac -Xlint:none -nowarn -d "$build/java/classes" -cp "$classpath" \
    @"$build/java/sources.txt" clients/java/Smoke.java
say "compiled the Go and the Java smoke programs"

# --- run against the real server -------------------------------------------------------------
# Memory-only, gRPC on a free port (read back from the log), no admin port.
cat >"$build/server.toml" <<'TOML'
listen = "127.0.0.1:0"

[telemetry]
metrics = false
TOML
log="$build/server.log"
"$bin" serve --config "$build/server.toml" --log-format json >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
addr=
for _ in $(seq 100); do
    addr=$(grep -m1 '"listening"' "$log" | grep -o '"addr":"[^"]*"' | cut -d'"' -f4 || true)
    [ -n "$addr" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$log" >&2; die "the server exited at start"; }
    sleep 0.1
done
[ -n "$addr" ] || { cat "$log" >&2; die "the server did not log its address within 10s"; }
say "server $bin on $addr"

passed=0
failed=0
run() {
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}
run "$build/bin/smoke-go" "$addr"
run java -cp "$build/java/classes:$classpath" Smoke "$addr"
# The programs must also be able to fail: run again, each finds its cold key warm (a HIT where
# its first GetOrSet wants a LEASE) and must say so and exit non-zero.
expect_mismatch() {
    local name=$1 out rc=0
    shift
    out=$("$@" 2>&1) || rc=$?
    if [ "$rc" -ne 0 ] && grep -qF 'GetOrSet (cold): want LEASE' <<<"$out"; then
        say "a second run of the $name smoke program fails as it must: ${out%%$'\n'*}"
        passed=$((passed + 1))
    else
        echo "clients: a second run of the $name smoke program should fail on the warm key; exit $rc: $out" >&2
        failed=$((failed + 1))
    fi
}
expect_mismatch Go "$build/bin/smoke-go" "$addr"
expect_mismatch Java java -cp "$build/java/classes:$classpath" Smoke "$addr"
kill -0 "$server" 2>/dev/null || { cat "$log" >&2; die "the server died during the run"; }
echo "clients: $passed passed, $failed failed"
[ "$failed" -eq 0 ] || { echo "clients: server log:" >&2; cat "$log" >&2; exit 1; }
