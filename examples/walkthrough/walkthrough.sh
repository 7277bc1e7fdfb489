#!/bin/sh
# A walk through stretcher on one machine, from an archive to a signed,
# verified deploy on several "hosts", and how to see which host did what.
#
#   sh examples/walkthrough/walkthrough.sh [path/to/stretcher]
#
# The binary is the first argument, else $STRETCHER, else
# target/release/stretcher (`make walkthrough` builds it and runs this).
# Needs: rsync, serf, minisign, python3 (`sh scripts/test-deps.sh walkthrough`).
#
# Everything happens in a temp dir and on 127.0.0.1, and is removed at the
# end (servers and agents are stopped too). Each "host" is a directory of
# its own under hosts/: the dest it deploys into (app/), its --state-dir
# (state/) and its --report-file (report.json). On a real fleet each host
# runs the same command with the same paths.
#
# WALKTHROUGH_DIR=/some/empty/dir keeps the files there for a look
# afterwards (the caller removes that dir).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${1:-${STRETCHER:-$repo/target/release/stretcher}}
if [ ! -x "$bin" ]; then
    echo "no stretcher binary at $bin: run make release, or pass its path" >&2
    exit 1
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
for tool in rsync serf minisign python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$tool is missing: sh scripts/test-deps.sh walkthrough installs it" >&2
        exit 1
    fi
done

if [ -n "${WALKTHROUGH_DIR:-}" ]; then
    work=$WALKTHROUGH_DIR
    mkdir -p "$work"
    if [ -n "$(ls -A "$work")" ]; then
        echo "WALKTHROUGH_DIR=$work is not empty: give a new or empty dir" >&2
        exit 1
    fi
    keep=yes
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/stretcher-walkthrough.XXXXXX")
    keep=no
fi
work=$(cd "$work" && pwd)
pids=""
cleanup() {
    for pid in $pids; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $pids; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$keep" = no ]; then
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() {
    printf '\n==== %s\n' "$*"
}

# waits up to $1 seconds for the command after it to succeed
wait_for() {
    limit=$1
    shift
    tries=$((limit * 10))
    while ! "$@" >/dev/null 2>&1; do
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            echo "gave up after ${limit}s waiting for: $*" >&2
            return 1
        fi
        sleep 0.1
    done
}

# a free TCP port on 127.0.0.1
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mkdir -p "$work/www" "$work/keys" "$work/hosts"
"$bin" --version

step "1. Build the archive: a tar.gz of the app, and its sha256"
# Any tar works (gzip, bzip2, xz, zstd or none). The checksum in the
# manifest pins this exact file.
tar -C "$repo/examples/app" -czf "$work/www/app-1.tar.gz" .
sum=$(sha256sum "$work/www/app-1.tar.gz" | cut -d' ' -f1)
echo "app-1.tar.gz  sha256 $sum"

step "2. Serve it over HTTP on 127.0.0.1 (python3 -m http.server)"
# In production: S3, GCS or any web server. Port 0 picks a free port, which
# the server prints.
(cd "$work/www" && exec python3 -u -m http.server 0 --bind 127.0.0.1) \
    >"$work/http.log" 2>&1 &
pids="$pids $!"
wait_for 15 grep -q 'port' "$work/http.log"
port=$(sed -n 's/.* port \([0-9][0-9]*\) .*/\1/p' "$work/http.log" | head -n 1)
base=http://127.0.0.1:$port
echo "serving $work/www at $base"

step "3. Write the manifest"
# dest comes from each host's environment ({{ must_env "APP_DEST" }}), so
# one manifest serves every host. The post hook runs after the sync.
cat >"$work/www/manifest.yml" <<YAML
src: $base/app-1.tar.gz
checksum: $sum
dest: {{ must_env "APP_DEST" }}
exclude_from: exclude.list
commands:
  post:
    - 'echo "post hook: deployed \$(cat \$STRETCHER_DEST/VERSION) into \$STRETCHER_DEST"'
YAML
cat "$work/www/manifest.yml"

step "4. Sign it with minisign"
# Once, on the release machine: a key pair (-W: no password, for this demo
# only; a real key gets one). The hosts get the public key.
minisign -G -W -p "$work/keys/stretcher.pub" -s "$work/keys/stretcher.key" >/dev/null
# For every release: sign the manifest, and upload manifest.yml.minisig
# next to it. The agent fetches <manifest URL>.minisig and checks it.
minisign -S -s "$work/keys/stretcher.key" -m "$work/www/manifest.yml" >/dev/null
echo "public key for the hosts: $work/keys/stretcher.pub"
cat "$work/keys/stretcher.pub"
echo "signature: $base/manifest.yml.minisig"

url=$base/manifest.yml
pub=$work/keys/stretcher.pub

# The flags every host runs stretcher with: the key, the replay guard's
# state, the per-host report. (Under consul watch or serf, these go in the
# handler's command line.)
host_flags() {
    echo "--verify-key-file $pub --state-dir $work/hosts/$1/state --report-file $work/hosts/$1/report.json --timeout 1m"
}

step "5. Deploy by hand: the manifest URL on stdin"
mkdir -p "$work/hosts/by-hand"
# shellcheck disable=SC2046
echo "$url" | APP_DEST="$work/hosts/by-hand/app" "$bin" $(host_flags by-hand)

step "6. A manifest changed after signing is refused"
# Someone who can write to the server, but has no key, edits the manifest:
# the agent refuses it before running anything, and says why.
mkdir -p "$work/hosts/tampered"
sed 's/post hook:/tampered hook:/' "$work/www/manifest.yml" >"$work/www/tampered.yml"
cp "$work/www/manifest.yml.minisig" "$work/www/tampered.yml.minisig"
# shellcheck disable=SC2046
if echo "$base/tampered.yml" | APP_DEST="$work/hosts/tampered/app" "$bin" $(host_flags tampered); then
    echo "a tampered manifest deployed" >&2
    exit 1
fi
echo "(refused, as it should be: exit status 1, nothing deployed)"

step "7. Deploy through Serf: two agents on 127.0.0.1, one event"
# Each agent runs stretcher as its handler for the "deploy" user event and
# the "deploy" query (examples/serf/serf.json is the same for a real host).
first=""
for n in 1 2; do
    home=$work/hosts/serf-$n
    mkdir -p "$home"
    bind=127.0.0.1:$(free_port)
    rpc=127.0.0.1:$(free_port)
    handler="$bin $(host_flags "serf-$n")"
    join=""
    if [ -n "$first" ]; then
        join=-join=$first
    else
        first=$bind
        rpc1=$rpc
    fi
    (cd "$home" && APP_DEST="$home/app" exec serf agent -node="serf-$n" \
        -bind="$bind" -rpc-addr="$rpc" -log-level=warn \
        -event-handler="user:deploy=$handler" \
        -event-handler="query:deploy=$handler" ${join:+"$join"}) \
        >"$home/serf.log" 2>&1 </dev/null &
    pids="$pids $!"
    wait_for 20 serf members -rpc-addr="$rpc"
done
members_alive() {
    [ "$(serf members -rpc-addr="$rpc1" -status=alive | wc -l)" -eq 2 ]
}
wait_for 30 members_alive
serf members -rpc-addr="$rpc1"
echo "\$ serf event deploy $url"
serf event -rpc-addr="$rpc1" deploy "$url"
# Handlers run in the background of each agent; wait until both reports
# say the user event deployed.
event_deployed() {
    grep -q '"result":"success"' "$1" && grep -q '"event_id":"serf deploy@' "$1"
}
wait_for 60 event_deployed "$work/hosts/serf-1/report.json"
wait_for 60 event_deployed "$work/hosts/serf-2/report.json"
echo "both agents deployed the event:"
cat "$work/hosts/serf-1/report.json" "$work/hosts/serf-2/report.json"
# A query deploys too (already deployed: nothing changes) and every host
# answers with one line: which host did what, from one command. serf query
# collects answers until its timeout.
echo "\$ serf query -timeout=10s deploy $url"
serf query -rpc-addr="$rpc1" -timeout=10s deploy "$url"

step "8. Deploy as consul watch does: the event list as JSON on stdin"
# consul watch -type=event -name=deploy runs the handler with the recent
# events as a JSON array (the URL base64 in Payload) and CONSUL_INDEX set;
# stretcher deploys the last one. examples/consul/deploy-watch.json and
# examples/systemd/stretcher-watch.service set this up on a real host.
mkdir -p "$work/hosts/consul"
payload=$(printf '%s' "$url" | base64 | tr -d '\n')
events='[{"ID":"3f1c2b7e-walkthrough","Name":"deploy","Payload":"'$payload'","NodeFilter":"","ServiceFilter":"","TagFilter":"","Version":1,"LTime":1}]'
echo "$events"
# shellcheck disable=SC2046
echo "$events" | CONSUL_INDEX=1 APP_DEST="$work/hosts/consul/app" "$bin" $(host_flags consul)
# consul watch hands the same list again when it restarts; the replay guard
# (--state-dir) skips what was deployed.
echo "-- consul watch restarts and replays the same event:"
# shellcheck disable=SC2046
echo "$events" | CONSUL_INDEX=2 APP_DEST="$work/hosts/consul/app" "$bin" $(host_flags consul)

step "9. What each host has"
for h in by-hand serf-1 serf-2 consul; do
    echo "-- $h: $work/hosts/$h/app"
    (cd "$work/hosts/$h/app" && find . -type f | sort)
done

step "10. Which host did what: the per-host reports (--report-file)"
for h in by-hand tampered serf-1 serf-2 consul; do
    echo "-- $h"
    cat "$work/hosts/$h/report.json"
    echo
done

step "11. stretcher status: what to type on a host when paged"
for h in by-hand consul; do
    echo "\$ stretcher status --report-file hosts/$h/report.json --state-dir hosts/$h/state"
    "$bin" status --report-file "$work/hosts/$h/report.json" --state-dir "$work/hosts/$h/state"
    echo
done

step "Walkthrough done"
if [ "$keep" = yes ]; then
    echo "the files are in $work"
fi
