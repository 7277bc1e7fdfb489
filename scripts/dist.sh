#!/bin/sh
# `make dist`: the release binary for every Linux a fleet runs, built against
# glibc 2.17 (CentOS 7, Amazon Linux 2 and newer) with cargo-zigbuild, and a
# tarball with it:
#   target/dist/stretcher-<version>-x86_64-linux-gnu.tar.gz (+ .sha256)
# holding the binary, README.md, LICENSE, the man page, bash/zsh/fish
# completions and the example configs. The binary stays at
# target/x86_64-unknown-linux-gnu/release/stretcher, where `make deb` and
# `make rpm` take it.
# Installs when missing: zig (PyPI's `ziglang`, into target/dist-venv, never
# the system Python) and cargo-zigbuild (`cargo install --locked`).
set -eu
cd "$(dirname "$0")/.."
# python3-venv (for zig's venv) and binutils (objdump), when missing.
sh scripts/test-deps.sh dist
triple=x86_64-unknown-linux-gnu
# The oldest glibc the binary must run on: the one the .deb's Depends names
# in Cargo.toml ([package.metadata.deb]), so the two cannot disagree.
glibc=$(sed -n 's/^depends = "libc6 (>= \([0-9.]*\))"$/\1/p' Cargo.toml)
if [ -z "$glibc" ]; then
    echo "dist: no 'depends = \"libc6 (>= X)\"' in Cargo.toml" >&2
    exit 1
fi
venv=target/dist-venv
ziglang=${ZIGLANG_VERSION:-0.15.2}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
name=stretcher-$version-x86_64-linux-gnu
bin=target/$triple/release/stretcher

if ! "$venv/bin/python" -c 'import ziglang' >/dev/null 2>&1; then
    echo "installing zig (ziglang $ziglang from PyPI) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "ziglang==$ziglang"
fi
if ! cargo zigbuild --help >/dev/null 2>&1; then
    echo "installing cargo-zigbuild"
    cargo install cargo-zigbuild --locked
fi

# cargo-zigbuild runs zig as `python -m ziglang` with this interpreter.
CARGO_ZIGBUILD_PYTHON_PATH=$(pwd)/$venv/bin/python
export CARGO_ZIGBUILD_PYTHON_PATH
cargo zigbuild --release --locked --target "$triple.$glibc"

# The newest glibc symbol version the binary needs must not pass $glibc, or
# it would not start on the oldest hosts.
need=$(sh scripts/glibc-needed.sh "$bin")
newest=$(printf '%s\n%s\n' "$need" "$glibc" | sort -V | tail -n 1)
if [ "$newest" != "$glibc" ]; then
    echo "dist: $bin needs glibc $need, above $glibc" >&2
    exit 1
fi
echo "dist: $bin needs glibc $need at most (limit $glibc)"

stage=target/dist/$name
rm -rf "$stage"
mkdir -p "$stage"
cp "$bin" "$stage/stretcher"
cp README.md LICENSE "$stage/"
sh scripts/assets.sh "$stage/stretcher" "$stage"
mkdir -p "$stage/examples"
cp -R examples/consul examples/serf examples/systemd "$stage/examples/"
tar -C target/dist --sort=name --owner=0 --group=0 --numeric-owner \
    -czf "target/dist/$name.tar.gz.tmp" "$name"
mv "target/dist/$name.tar.gz.tmp" "target/dist/$name.tar.gz"
rm -rf "$stage"
(cd target/dist && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
ls -l "$bin" "target/dist/$name.tar.gz"
cat "target/dist/$name.tar.gz.sha256"
