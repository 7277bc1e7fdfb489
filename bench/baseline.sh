#!/bin/sh
# What Go stretcher does for an rsync deploy, step by step, with the same
# external tools: copy the archive to a temp file while computing sha256,
# `tar xf` it in a temp dir, chmod 755 that dir, rsync it into dest, then
# remove the temp dir and file. Prints the time the sync finished (the point
# where Go stretcher starts the post hooks) as epoch seconds on stdout.
# Usage: baseline.sh SRC_URL DEST   (SRC_URL: file:///… or http://…)
set -eu
src=$1
dest=$2
tmp=$(mktemp "${TMPDIR:-/tmp}/stretcherXXXXXX")
dir=$(mktemp -d "${TMPDIR:-/tmp}/stretcher_srcXXXXXX")
case "$src" in
  file://*) cat "${src#file://}" ;;
  *) curl -fsS "$src" ;;
esac | tee "$tmp" | sha256sum >/dev/null
(cd "$dir" && tar xf "$tmp")
chmod 755 "$dir"
rsync -a --delete -v "$dir/" "$dest/" >/dev/null
date +%s.%N
rm -rf "$dir" "$tmp"
