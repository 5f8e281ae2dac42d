#!/usr/bin/env bash
# The API compatibility gate, run by `make buf-breaking` (part of `make lint`, so of `make test`
# and CI). Every generated client (Go, Java, TypeScript, Python) depends on it.
#
# 1. `buf breaking` of proto/ against proto/released/tiercache-v1.binpb, the image of the released
#    API (buf.yaml's FILE rules): an incompatible change fails here with buf's message.
#    `make api-release` rewrites the image, on purpose only (docs/clients.md).
# 2. A self-test proving the gate bites: in a copy of the module, a renumbered field and a
#    deleted field must each fail with buf's message, and an added field must pass.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
buf="$root/.tools/node/node_modules/.bin/buf"
released=proto/released/tiercache-v1.binpb

say() { echo "buf-breaking: $*"; }
die() { echo "buf-breaking: error: $*" >&2; exit 1; }

[ -x "$buf" ] || die "buf is missing; run: bash scripts/setup.sh"
[ -f "$released" ] || die "$released is missing; it is committed (make api-release writes it)"

if ! "$buf" breaking --against "$released"; then
    echo "buf-breaking: proto/ is not compatible with the released API ($released)." >&2
    echo "  Keep old field numbers and names (add new fields, reserve removed ones); a deliberate" >&2
    echo "  break needs a new package version (tiercache.v2), see docs/clients.md." >&2
    exit 1
fi
say "proto/ is compatible with $released"

# --- self-test ----------------------------------------------------------------------------------
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# expect NAME FILE SED_SCRIPT WANT: applies SED_SCRIPT to FILE in a fresh copy of the module, then
# runs the gate; WANT is "pass" or the message buf must print.
expect() {
    local name=$1 file=$2 edit=$3 want=$4 out rc=0
    rm -rf "$scratch/m"
    mkdir "$scratch/m"
    cp -r buf.yaml proto "$scratch/m/"
    sed -i "$edit" "$scratch/m/proto/$file"
    cmp -s "proto/$file" "$scratch/m/proto/$file" && die "self-test '$name': the edit changed nothing in $file; update it"
    out=$(cd "$scratch/m" && "$buf" breaking --against "$root/$released" 2>&1) || rc=$?
    if [ "$want" = pass ]; then
        [ "$rc" -eq 0 ] || die "self-test '$name': want no breakage, got exit $rc: $out"
    else
        [ "$rc" -ne 0 ] || die "self-test '$name': want a failure, buf breaking passed"
        grep -qF "$want" <<<"$out" || die "self-test '$name': want '$want', got: $out"
    fi
    say "self-test '$name': ${out:-passes}"
}
expect "renumbered field" tiercache/v1/cache.proto \
    's/^  bool fresh_only = 4;$/  bool fresh_only = 14;/' \
    'Previously present field "4" with name "fresh_only" on message "GetRequest" was deleted.'
expect "deleted field" tiercache/v1/common.proto \
    '/^  bool stale = 6;$/d' \
    'Previously present field "6" with name "stale" on message "Entry" was deleted.'
expect "added field" tiercache/v1/cache.proto \
    's/^  bool fresh_only = 4;$/&\n  string added_later = 99;/' \
    pass
