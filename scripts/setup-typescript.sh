#!/usr/bin/env bash
# Installs what the TypeScript SDK's checks need (`make typescript`): its pinned dependencies
# (sdks/typescript/package-lock.json) into sdks/typescript/node_modules. Fast when they match.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pkg="$root/sdks/typescript"

say() { echo "setup-typescript: $*"; }
die() { echo "setup-typescript: error: $*" >&2; exit 1; }

command -v node >/dev/null || die "node is missing; the SDK needs Node.js 20 or newer (apt-get install -y nodejs npm)"
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || die "node is $(node --version); the SDK needs Node.js 20 or newer"

# npm keeps a copy of the lock file it installed from in node_modules/.package-lock.json; when the
# stamp matches the committed lock, nothing changed.
stamp="$pkg/node_modules/.tiercache-lock"
if ! cmp -s "$pkg/package-lock.json" "$stamp"; then
    say "installing the SDK's pinned packages into sdks/typescript/node_modules"
    npm ci --prefix "$pkg" --no-audit --no-fund --loglevel=error \
        || die "npm ci failed; retry with: npm ci --prefix sdks/typescript"
    # The npm pack test installs the SDK's tarball offline with its runtime dependencies at the
    # locked versions; `npm ci` caches their tarballs but not their metadata, which this adds.
    deps=$(cd "$pkg" && node -e 'const l = require("./package-lock.json"), p = require("./package.json");
        console.log(Object.keys(p.dependencies).map((n) => `${n}@${l.packages[`node_modules/${n}`].version}`).join(" "))')
    # shellcheck disable=SC2086 # one word per package
    npm cache add $deps --loglevel=error || die "npm cache add $deps failed"
    cp "$pkg/package-lock.json" "$stamp"
fi
say "ok (node $(node --version), tsc $("$pkg/node_modules/.bin/tsc" --version | cut -d' ' -f2))"
