#!/usr/bin/env bash
# The RustSec advisory database that `make deny` checks against, offline.
#
# The database is vendored in this repository as a git bundle (vendor/rustsec-advisory-db/; the data
# is CC0) and VENDOR_COMMIT records the commit it holds. Nothing outside the repository is read.
#
#   scripts/advisory-db.sh install          clone the vendored bundle where deny.toml looks (setup)
#   scripts/advisory-db.sh check            fail unless that clone holds the recorded commit or newer
#   scripts/advisory-db.sh refresh [SOURCE] replace the vendored bundle with SOURCE's newest commit
#                                           (a git URL, a local clone or a bundle; default: upstream)
#
# cargo-deny reads the default database from <db-path>/advisory-db-<hash of the default URL>, and
# deny.toml sets db-path to ~/.cache/tiercache-advisory-db.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENDOR="$root/vendor/rustsec-advisory-db"
BUNDLE="$VENDOR/advisory-db.bundle"
VENDOR_COMMIT_FILE="$VENDOR/COMMIT"
DB="$HOME/.cache/tiercache-advisory-db/advisory-db-3157b0e258782691"
UPSTREAM="https://github.com/rustsec/advisory-db.git"

die() { echo "advisory-db: error: $*" >&2; exit 1; }
git_q() { git -c advice.detachedHead=false -c init.defaultBranch=main "$@"; }

recorded_commit() {
    [ -f "$VENDOR_COMMIT_FILE" ] || die "$VENDOR_COMMIT_FILE is missing; run scripts/advisory-db.sh refresh"
    awk 'NR==1 {print $1}' "$VENDOR_COMMIT_FILE"
}

install() {
    local want bundle_head have
    want=$(recorded_commit)
    [ -f "$BUNDLE" ] || die "$BUNDLE is missing; run scripts/advisory-db.sh refresh"
    bundle_head=$(git bundle list-heads "$BUNDLE" | awk 'NR==1 {print $1}')
    [ "$bundle_head" = "$want" ] ||
        die "$BUNDLE holds $bundle_head but $VENDOR_COMMIT_FILE records $want; run scripts/advisory-db.sh refresh"
    have=$(git -C "$DB" rev-parse HEAD 2>/dev/null || true)
    [ "$have" = "$want" ] && return 0
    echo "advisory-db: cloning the vendored advisory database ($(cut -c1-8 <<<"$want")) into $DB"
    mkdir -p "$(dirname "$DB")"
    rm -rf "$DB.tmp"
    git_q clone -q "$BUNDLE" "$DB.tmp"
    rm -rf "$DB"
    mv "$DB.tmp" "$DB"
}

check() {
    local want have
    want=$(recorded_commit)
    have=$(git -C "$DB" rev-parse HEAD 2>/dev/null || true)
    if [ -z "$have" ] || ! git -C "$DB" merge-base --is-ancestor "$want" "$have" 2>/dev/null; then
        die "the advisory database in $DB is missing or older than the vendored one ($(cut -c1-8 <<<"$want")); run 'make setup' (or 'scripts/advisory-db.sh install')"
    fi
}

refresh() {
    local source=${1:-$UPSTREAM} tmp old new
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    echo "advisory-db: fetching $source"
    git_q clone -q "$source" "$tmp/db"
    new=$(git -C "$tmp/db" rev-parse HEAD)
    old=$(recorded_commit 2>/dev/null || true)
    if [ -n "$old" ] && ! git -C "$tmp/db" merge-base --is-ancestor "$old" "$new" 2>/dev/null; then
        die "$source at $new does not contain the vendored commit $old; refusing to go backwards"
    fi
    mkdir -p "$VENDOR"
    git -C "$tmp/db" bundle create -q "$tmp/advisory-db.bundle" HEAD
    mv "$tmp/advisory-db.bundle" "$BUNDLE"
    echo "$new $(git -C "$tmp/db" log -1 --format=%cI HEAD)" >"$VENDOR_COMMIT_FILE"
    echo "advisory-db: vendored $new; commit vendor/rustsec-advisory-db/ and run 'make setup'"
}

case "${1:-}" in
    install) install ;;
    check) check ;;
    refresh) shift; refresh "$@" ;;
    *) echo "usage: scripts/advisory-db.sh install|check|refresh [SOURCE]" >&2; exit 2 ;;
esac
