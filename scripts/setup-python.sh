#!/usr/bin/env bash
# Installs what the Python SDK's checks need (`make python`): a venv in
# $HOME/.cache/tiercache-py-venv (override with TIERCACHE_PY_VENV) with the pinned tools of
# sdks/python/requirements-dev.txt. Fast when the venv already matches the pins.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${TIERCACHE_PY_VENV:-$HOME/.cache/tiercache-py-venv}
reqs="$root/sdks/python/requirements-dev.txt"

say() { echo "setup-python: $*"; }
die() { echo "setup-python: error: $*" >&2; exit 1; }

python=$(command -v python3 || true)
[ -n "$python" ] || die "python3 is missing; install it with: apt-get install -y python3 python3-venv"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "python3 is $("$python" --version); the SDK needs 3.10 or newer"
"$python" -c 'import venv, ensurepip' 2>/dev/null \
    || die "python3 cannot make venvs; install it with: apt-get install -y python3-venv"

if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$python" -m venv "$venv"
fi
# The stamp holds the requirements the venv was made from: reinstall only when they change.
stamp="$venv/.tiercache-requirements"
if ! cmp -s "$reqs" "$stamp"; then
    say "installing $(grep -c '==' "$reqs") pinned packages into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs" \
        || die "pip install failed; retry with: $venv/bin/python -m pip install -r $reqs"
    cp "$reqs" "$stamp"
fi
say "ok ($("$venv/bin/python" --version), $("$venv/bin/ruff" --version), $("$venv/bin/mypy" --version | cut -d' ' -f1-2))"
