#!/usr/bin/env bash
# The TypeScript SDK's checks, run by `make typescript` (and so by `make test` and CI): generated
# code current, `tsc --strict` over the SDK, its tests, examples and bench, then the tests with
# node:test against real servers. Needs sdks/typescript/node_modules (scripts/setup-typescript.sh)
# and the debug server binary (`make typescript` builds it first).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
[ -x node_modules/.bin/tsc ] || { echo "typescript: no node_modules; run: bash scripts/setup-typescript.sh" >&2; exit 1; }

bash generate.sh --check
rm -rf build
node_modules/.bin/tsc -p tsconfig.json
shopt -s nullglob
tests=(build/test/*.test.js)
[ "${#tests[@]}" -gt 0 ] || { echo "typescript: no test files under build/test" >&2; exit 1; }
# Files run one at a time (each starts its own servers; the machine is small); a failing test,
# or a file that runs no test, fails the run.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
rc=0
node --test --test-concurrency=1 --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$out" "$@" "${tests[@]}" || rc=$?
[ "$rc" -eq 0 ] || exit "$rc"
passed=$(grep -E '^# pass ' "$out" | awk '{print $3}')
[ "${passed:-0}" -gt 0 ] || { echo "typescript: no test passed" >&2; exit 1; }
echo "typescript: $passed tests passed"
