#!/bin/sh
# Builds the RPM package from an already built stretcher binary:
#   sh scripts/rpm.sh path/to/stretcher OUT.rpm
# The package's contents are [package.metadata.generate-rpm] in Cargo.toml,
# read by cargo-generate-rpm; the binary and the man page and completions
# generated from it are staged as for the .deb (scripts/stage.sh). `make
# rpm` passes `make dist`'s glibc 2.17 binary; tests/package.rs passes the
# test suite's debug binary, stripped.
#
# The package must install with rpm 4.11 (CentOS 7, Amazon Linux 2), hence:
# - cargo-generate-rpm 0.14.1, the last release whose rpm library still
#   writes the header SHA1 and the MD5 digests that rpm 4.11 checks (later
#   ones write only SHA256 digests, which it cannot verify). It goes into
#   target/rpm-tools, leaving any other version on the PATH alone:
#   `sh scripts/test-deps.sh rpm` installs it (make rpm and make deps do).
# - an xz payload: rpm 4.11 reads gzip, bzip2, xz and lzma payloads, not the
#   zstd that cargo-generate-rpm writes by default.
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 path/to/stretcher OUT.rpm" >&2
    exit 2
fi
abs() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }
bin=$(abs "$1")
mkdir -p "$(dirname "$2")"
out=$(abs "$2")
cd "$(dirname "$0")/.."
tool=target/rpm-tools/bin/cargo-generate-rpm
if [ ! -x "$tool" ]; then
    echo "$tool is missing: sh scripts/test-deps.sh rpm installs it (make rpm and make deps do)" >&2
    exit 1
fi
stage=$(mktemp -d "${TMPDIR:-/tmp}/stretcher-rpm.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# dash runs the EXIT trap on a signal only through an exit.
trap 'exit 130' INT
trap 'exit 143' TERM
# The binary, and the man page and completions it generates; refused if it
# needs a newer glibc than the packages promise.
sh scripts/stage.sh "$bin" "$stage"
# Built in the stage dir, then moved: an interrupted run leaves no .rpm.
"$tool" --target-dir "$stage" --payload-compress xz --output "$stage/out.rpm"
mv "$stage/out.rpm" "$out"
