#!/bin/sh
# Writes what a stretcher binary generates about itself, for packages:
#   DIR/stretcher.1                     the man page
#   DIR/completions/stretcher.bash      bash completion
#   DIR/completions/_stretcher          zsh completion
#   DIR/completions/stretcher.fish      fish completion
# Usage: sh scripts/assets.sh path/to/stretcher DIR
# Used by `make man` and `make assets` (one target: both write all four),
# scripts/dist.sh and scripts/stage.sh (for the .deb and the .rpm).
set -eu
bin=$1
dir=$2
mkdir -p "$dir/completions"
# Each file is written under a temp name and renamed, so a failed run never
# leaves a half-written page behind.
gen() {
    out=$1
    shift
    "$bin" "$@" > "$out.tmp"
    mv "$out.tmp" "$out"
}
gen "$dir/stretcher.1" man
gen "$dir/completions/stretcher.bash" completions bash
gen "$dir/completions/_stretcher" completions zsh
gen "$dir/completions/stretcher.fish" completions fish
