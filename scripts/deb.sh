#!/bin/sh
# Builds the Debian package from an already built stretcher binary:
#   sh scripts/deb.sh path/to/stretcher OUT.deb [cargo-deb flags…]
# The package's contents are [package.metadata.deb] in Cargo.toml, the one
# list; cargo-deb (`cargo install cargo-deb --locked`) reads it. Its
# `target/release/` paths mean "the build products dir", so the binary and
# the man page and completions generated from it (scripts/assets.sh) are
# staged into a scratch target dir and cargo-deb packages them without
# building. `make deb` passes `make dist`'s glibc 2.17 binary; tests/package.rs
# passes the test suite's debug binary (cargo-deb strips it).
set -eu
if [ $# -lt 2 ]; then
    echo "usage: $0 path/to/stretcher OUT.deb [cargo-deb flags…]" >&2
    exit 2
fi
abs() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }
bin=$(abs "$1")
mkdir -p "$(dirname "$2")"
out=$(abs "$2")
shift 2
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
    echo "cargo-deb is missing: cargo install cargo-deb --locked (make deps does)" >&2
    exit 1
fi
stage=$(mktemp -d "${TMPDIR:-/tmp}/stretcher-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/release"
cp "$bin" "$stage/release/stretcher"
sh scripts/assets.sh "$stage/release/stretcher" "$stage/release/assets"
# Debian wants man pages gzipped; cargo-deb compresses only files it does not
# take for build products, so this one is compressed here (-n: no name or
# timestamp inside, the same bytes every time).
gzip -9n "$stage/release/assets/stretcher.1"
# --strip: the test suite's debug binary carries its debug info; a release
# binary is stripped already and stays as it is.
CARGO_TARGET_DIR=$stage cargo deb --no-build --strip --output "$out" "$@"
