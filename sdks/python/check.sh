#!/usr/bin/env bash
# The Python SDK's checks, run by `make python` (and so by `make test` and CI): generated code
# current, ruff, mypy --strict, then pytest against real servers. Needs the venv of
# scripts/setup-python.sh and the debug server binary (`make python` builds it first).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${TIERCACHE_PY_VENV:-$HOME/.cache/tiercache-py-venv}
[ -x "$venv/bin/python" ] || { echo "python: no venv at $venv; run: bash scripts/setup-python.sh" >&2; exit 1; }
cd "$here"

bash generate.sh --check
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy"
# pytest exits 5 when it collected no tests: that is a failure here too, as is any other non-zero.
rc=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 5 ] && echo "python: pytest collected no tests" >&2
    exit "$rc"
fi
