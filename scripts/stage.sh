#!/bin/sh
# Stages a built stretcher binary for the packagers (scripts/deb.sh,
# scripts/rpm.sh): DIR/release/stretcher and, generated from it by
# scripts/assets.sh, DIR/release/assets/stretcher.1.gz and the completions.
# DIR/release/ is what the Cargo.toml asset lists call `target/release/`.
# Usage: sh scripts/stage.sh path/to/stretcher DIR
#
# Both packages promise the glibc `make dist` builds for (the libc6 line of
# [package.metadata.deb] in Cargo.toml; the .rpm's glibc requirement is
# checked against it by tests/package.rs). A binary that needs a newer one
# (a plain `cargo build` on a new distribution) would install on older hosts
# and not start there: refused, unless STRETCHER_PKG_ANY_GLIBC=1 (the tests
# package their debug build).
set -eu
bin=$1
dir=$2
here=$(dirname "$0")
glibc=$(sed -n 's/^depends = "libc6 (>= \([0-9.]*\))"$/\1/p' "$here/../Cargo.toml")
if [ -z "$glibc" ]; then
    echo "stage: no 'depends = \"libc6 (>= X)\"' in Cargo.toml" >&2
    exit 1
fi
need=$(sh "$here/glibc-needed.sh" "$bin")
if [ "$(printf '%s\n%s\n' "$need" "$glibc" | sort -V | tail -n 1)" != "$glibc" ]; then
    if [ "${STRETCHER_PKG_ANY_GLIBC:-}" != 1 ]; then
        echo "$bin needs glibc $need, but the packages promise glibc >= $glibc: package make dist's binary (make deb, make rpm)" >&2
        exit 1
    fi
    echo "note: $bin needs glibc $need; the package says glibc >= $glibc" >&2
fi
mkdir -p "$dir/release"
cp "$bin" "$dir/release/stretcher"
sh "$here/assets.sh" "$dir/release/stretcher" "$dir/release/assets"
# Both Debian and Fedora/EL want man pages gzipped; the packagers take this
# file as it is (-n: no name or timestamp inside, the same bytes every time).
gzip -9n "$dir/release/assets/stretcher.1"
