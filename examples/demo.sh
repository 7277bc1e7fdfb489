#!/bin/sh
# A real deploy of examples/app: pack it, write a manifest with its sha256,
# pipe the manifest URL to stretcher, show what landed in dest.
# Usage: sh examples/demo.sh path/to/stretcher
set -eu
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/stretcher-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

tar -C "$here/app" -czf "$work/app.tar.gz" .
sum=$(sha256sum "$work/app.tar.gz" | cut -d' ' -f1)
mkdir "$work/dest"
echo "stale file from the previous release" > "$work/dest/stale.txt"

cat > "$work/manifest.yml" <<YAML
src: file://$work/app.tar.gz
checksum: $sum
dest: {{ env "DEMO_DEST" "$work/dest" }}
dest_mode: 0755
exclude_from: exclude.list
commands:
  pre:
    - 'echo "pre: about to deploy \$STRETCHER_SRC"'
  post:
    - 'echo "post: deployed into \$STRETCHER_DEST"'
  success:
    - echo "success hook read \$(wc -l) log lines on stdin"
  failure:
    - cat >&2
YAML

echo "== manifest"
cat "$work/manifest.yml"
echo "== deploy"
echo "file://$work/manifest.yml" | "$bin"
echo "== dest after deploy"
(cd "$work/dest" && find . | sort)
test ! -e "$work/dest/stale.txt"
test -x "$work/dest/bin/start"
echo "== demo deploy OK"
