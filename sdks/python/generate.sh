#!/usr/bin/env bash
# Regenerates tiercache/_proto/ from ../../proto with grpcio-tools and mypy-protobuf (typed stubs).
#
#   sdks/python/generate.sh           rewrite the generated files in place
#   sdks/python/generate.sh --check   regenerate into a temporary folder and fail on any difference
#                                     (what `make python` and so CI run)
#
# The proto package is `tiercache.v1`, which would clash with this distribution's own `tiercache`
# package, so the generated imports are rewritten to `tiercache._proto.v1`. The wire names
# (`/tiercache.v1.CacheService/Get`) and the descriptors stay as they are.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${TIERCACHE_PY_VENV:-$HOME/.cache/tiercache-py-venv}
[ -x "$venv/bin/python" ] || { echo "generate: no venv at $venv; run: bash scripts/setup-python.sh" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# protoc-gen-mypy and protoc-gen-mypy_grpc are found on PATH.
PATH="$venv/bin:$PATH" "$venv/bin/python" -m grpc_tools.protoc -I "$root/proto" \
    --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
    "$root"/proto/tiercache/v1/*.proto >"$out/protoc.log" 2>&1 || { cat "$out/protoc.log" >&2; exit 1; }

gen="$out/tiercache/v1"
# common.proto has no service: its empty _grpc modules are noise.
rm -f "$gen"/common_pb2_grpc.py "$gen"/common_pb2_grpc.pyi
sed -E -i 's/\btiercache\.v1(\.[a-z_]+_pb2\b| import)/tiercache._proto.v1\1/g' "$gen"/*.py "$gen"/*.pyi
printf '"""Code generated from proto/tiercache/v1 by sdks/python/generate.sh; do not edit."""\n' \
    > "$gen/__init__.py"

dest="$here/tiercache/_proto/v1"
if [ "${1:-}" = "--check" ]; then
    if ! diff -r "$gen" "$dest" >/dev/null 2>&1; then
        diff -r "$gen" "$dest" | head -40 >&2 || true
        echo "generate: sdks/python/tiercache/_proto is stale; run: bash sdks/python/generate.sh" >&2
        exit 1
    fi
    echo "generate: sdks/python/tiercache/_proto is up to date"
else
    rm -rf "$dest"
    mkdir -p "$dest"
    cp "$gen"/* "$dest"/
    printf '"""Generated gRPC and protobuf modules; see sdks/python/generate.sh."""\n' \
        > "$here/tiercache/_proto/__init__.py"
    echo "generate: wrote $dest"
fi
