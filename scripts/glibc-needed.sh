#!/bin/sh
# Prints the newest glibc symbol version (GLIBC_x.y) a binary needs, from
# `objdump -T`: the oldest glibc it runs on. Fails if it finds none.
# Usage: sh scripts/glibc-needed.sh path/to/binary
set -eu
need=$(objdump -T "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -u -V | tail -n 1)
if [ -z "$need" ]; then
    echo "no GLIBC_ symbol versions in $1 (objdump -T): not a glibc binary?" >&2
    exit 1
fi
echo "$need"
