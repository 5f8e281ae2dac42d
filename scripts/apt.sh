# Sourced by the setup scripts. `apt_get_install WHO PACKAGE...` installs Debian packages with
# apt-get when this is root (one `apt-get update` per setup run), or prints the command to run and
# exits when it is not. Nothing happens for no packages.
apt_get_install() {
    local who=$1
    shift
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" -eq 0 ]; then
        echo "$who: installing $* with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        if [ -z "${TIERCACHE_APT_UPDATED:-}" ]; then
            apt-get update -q
            export TIERCACHE_APT_UPDATED=1
        fi
        apt-get install -y -q "$@"
    else
        echo "$who: missing $*; this is not root, so install with:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y $*" >&2
        exit 1
    fi
}
