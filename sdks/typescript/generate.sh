#!/usr/bin/env bash
# Regenerates src/gen from proto/ with buf and protoc-gen-es (both pinned: buf in .tools/node,
# protoc-gen-es in this package's lock file). With --check, generates into a temporary copy and
# fails if the committed code differs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
buf="$root/.tools/node/node_modules/.bin/buf"
[ -x "$buf" ] || { echo "generate: buf is missing; run: bash scripts/setup.sh" >&2; exit 1; }
[ -x "$here/node_modules/.bin/protoc-gen-es" ] \
    || { echo "generate: protoc-gen-es is missing; run: npm ci --prefix sdks/typescript" >&2; exit 1; }

cd "$root"
if [ "${1:-}" = "--check" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$buf" generate --template sdks/typescript/buf.gen.yaml -o "$tmp"
    "$buf" generate sdks/typescript/proto --template sdks/typescript/buf.gen.rpc.yaml -o "$tmp"
    if ! diff -r sdks/typescript/src/gen "$tmp/sdks/typescript/src/gen"; then
        echo "generate: sdks/typescript/src/gen is out of date; run: bash sdks/typescript/generate.sh" >&2
        exit 1
    fi
else
    "$buf" generate --template sdks/typescript/buf.gen.yaml
    "$buf" generate sdks/typescript/proto --template sdks/typescript/buf.gen.rpc.yaml
fi
