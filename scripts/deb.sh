#!/bin/sh
# Builds the Debian package from an already built stretcher binary:
#   sh scripts/deb.sh path/to/stretcher OUT.deb [cargo-deb flags…]
# The package's contents are [package.metadata.deb] in Cargo.toml, the one
# list; cargo-deb (`cargo install cargo-deb --locked`) reads it. Its
# `target/release/` paths mean "the build products dir", so the binary and
# the man page and completions generated from it (scripts/assets.sh) are
# staged into a scratch target dir (scripts/stage.sh, which scripts/rpm.sh
# shares) and cargo-deb packages them without building. `make deb` passes
# `make dist`'s glibc 2.17 binary; tests/package.rs passes the test suite's
# debug binary, stripped.
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
# dash runs the EXIT trap on a signal only through an exit.
trap 'exit 130' INT
trap 'exit 143' TERM
# The binary, and the man page and completions it generates; refused if it
# needs a newer glibc than the package's Depends.
sh scripts/stage.sh "$bin" "$stage"
# --no-strip: the binary goes in byte for byte as given (make dist's is
# stripped by the release profile), the same file as in the tarball.
# Built in the stage dir, then moved: an interrupted run leaves no .deb.
CARGO_TARGET_DIR=$stage cargo deb --no-build --no-strip --output "$stage/out.deb" "$@"
mv "$stage/out.deb" "$out"
