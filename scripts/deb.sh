#!/bin/sh
# Builds the Debian package from an already built stretcher binary:
#   sh scripts/deb.sh path/to/stretcher OUT.deb [cargo-deb flags…]
# The package's contents are [package.metadata.deb] in Cargo.toml, the one
# list; cargo-deb (`cargo install cargo-deb --locked`) reads it. Its
# `target/release/` paths mean "the build products dir", so the binary and
# the man page and completions generated from it (scripts/assets.sh) are
# staged into a scratch target dir and cargo-deb packages them without
# building. `make deb` passes `make dist`'s glibc 2.17 binary; tests/package.rs
# passes the test suite's debug binary, stripped.
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
# The package's Depends (Cargo.toml) promises the glibc that `make dist`
# builds for. A binary that needs a newer one (a plain `cargo build` on a new
# distribution) would install on older hosts and not start there: refused,
# unless STRETCHER_DEB_ANY_GLIBC=1 (the tests package their debug build).
glibc=$(sed -n 's/^depends = "libc6 (>= \([0-9.]*\))"$/\1/p' Cargo.toml)
need=$(sh scripts/glibc-needed.sh "$bin")
if [ "$(printf '%s\n%s\n' "$need" "$glibc" | sort -V | tail -n 1)" != "$glibc" ]; then
    if [ "${STRETCHER_DEB_ANY_GLIBC:-}" != 1 ]; then
        echo "$bin needs glibc $need, but the package depends on libc6 (>= $glibc): package make dist's binary (make deb)" >&2
        exit 1
    fi
    echo "note: $bin needs glibc $need; the package says libc6 (>= $glibc)" >&2
fi
stage=$(mktemp -d "${TMPDIR:-/tmp}/stretcher-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# dash runs the EXIT trap on a signal only through an exit.
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir "$stage/release"
cp "$bin" "$stage/release/stretcher"
sh scripts/assets.sh "$stage/release/stretcher" "$stage/release/assets"
# Debian wants man pages gzipped; cargo-deb compresses only files it does not
# take for build products, so this one is compressed here (-n: no name or
# timestamp inside, the same bytes every time).
gzip -9n "$stage/release/assets/stretcher.1"
# --no-strip: the binary goes in byte for byte as given (make dist's is
# stripped by the release profile), the same file as in the tarball.
# Built in the stage dir, then moved: an interrupted run leaves no .deb.
CARGO_TARGET_DIR=$stage cargo deb --no-build --no-strip --output "$stage/out.deb" "$@"
mv "$stage/out.deb" "$out"
