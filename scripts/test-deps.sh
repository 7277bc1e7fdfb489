#!/bin/sh
# Installs what the test suite runs for real, only when missing: rsync.
set -eu
missing=""
command -v rsync >/dev/null 2>&1 || missing="$missing rsync"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
echo "installing:$missing"
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
