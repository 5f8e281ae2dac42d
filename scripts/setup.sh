#!/usr/bin/env bash
# Installs what the build and the tests need, where it can; fast and silent-ish when all is there.
#
#   redis-server   Debian package (apt-get, as root; otherwise prints the command and stops)
#   promtool       Debian package prometheus (same rule); checks the /metrics exposition format
#   buf            npm package pinned in .tools/node/package.json, installed into .tools/node
#   cargo-nextest  cargo install, if missing
#   cargo-deny     cargo install (pinned), if missing; takes a few minutes once, then cached
#   Go, Java       Debian packages for the generated clients' check (scripts/setup-clients.sh)
#   TypeScript     the SDK's npm packages (sdks/typescript/package-lock.json), scripts/setup-typescript.sh
#   advisory DB    the RustSec bundle vendored in vendor/rustsec-advisory-db, cloned where deny.toml
#                  looks (scripts/advisory-db.sh)
#
# Nothing outside this repository is read: a fresh clone on a fresh machine is enough.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

CARGO_DENY_VERSION=0.20.2

say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

export PATH="$HOME/.cargo/bin:$PATH"

# --- system tools -------------------------------------------------------------------------------
for tool in cargo rustc node npm git; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH; it must come with the machine"
done
cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy is missing: rustup component add clippy"

# --- Debian packages: redis-server, promtool -----------------------------------------------------
# apt_install TOOL PACKAGE: installs PACKAGE when TOOL is not on PATH (as root), or prints the
# command and stops (scripts/apt.sh).
# shellcheck source=scripts/apt.sh
. "$root/scripts/apt.sh"
apt_install() {
    local tool=$1 package=$2
    command -v "$tool" >/dev/null && return 0
    apt_get_install setup "$package"
    command -v "$tool" >/dev/null || die "$tool still not on PATH after apt-get install $package"
}
apt_install redis-server redis-server
# promtool checks the Prometheus exposition format of /metrics (tests/tests/telemetry_metrics.rs).
# The package also ships the Prometheus server; nothing here starts it.
apt_install promtool prometheus
# The tests start their own redis-server processes on free ports; none needs to run here.

# --- buf (npm, pinned) ---------------------------------------------------------------------------
buf="$root/.tools/node/node_modules/.bin/buf"
buf_want=$(node -p "require('$root/.tools/node/package.json').devDependencies['@bufbuild/buf']")
if [ "$("$buf" --version 2>/dev/null || true)" != "$buf_want" ]; then
    say "installing buf $buf_want into .tools/node"
    npm ci --prefix "$root/.tools/node" --no-audit --no-fund --loglevel=error
    [ "$("$buf" --version)" = "$buf_want" ] || die "buf $buf_want did not install"
fi

# --- cargo tools ---------------------------------------------------------------------------------
# `cargo install` builds in its own temporary directory, not in the shared CARGO_TARGET_DIR.
if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest"
    env -u CARGO_TARGET_DIR cargo install cargo-nextest --locked
fi
if ! cargo deny --version >/dev/null 2>&1; then
    say "installing cargo-deny $CARGO_DENY_VERSION (a few minutes, once)"
    env -u CARGO_TARGET_DIR cargo install "cargo-deny@$CARGO_DENY_VERSION" --locked
fi

bash "$root/scripts/setup-python.sh"  # the Python SDK's venv (sdks/python)
bash "$root/scripts/setup-clients.sh" # generated Go and Java clients: Debian's Go, protoc, grpc-java
bash "$root/scripts/setup-typescript.sh"  # the TypeScript SDK's packages (sdks/typescript)
bash "$root/scripts/setup-deploy.sh"  # image and chart checks: umoci, skopeo, runc, a Python venv

# --- RustSec advisory database (offline, vendored) -----------------------------------------------
bash "$root/scripts/advisory-db.sh" install

say "ok (redis-server $(redis-server --version | grep -o 'v=[0-9.]*'), buf $buf_want," \
    "$(promtool --version 2>&1 | head -1 | awk '{print "promtool", $3}'),"  \
    "$(cargo nextest --version | head -1), $(cargo deny --version))"
