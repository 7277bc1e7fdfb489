#!/bin/sh
# Installs what the test suite runs for real, only when missing: rsync and
# serf from Debian.
set -eu
missing=""
command -v rsync >/dev/null 2>&1 || missing="$missing rsync"
command -v serf >/dev/null 2>&1 || missing="$missing serf"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
echo "installing:$missing"
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
# The serf package enables a system service; tests start their own agents.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now serf >/dev/null 2>&1 || true; fi
