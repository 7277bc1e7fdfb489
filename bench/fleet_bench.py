#!/usr/bin/env python3
"""make fleet-bench: 100 real Serf agents on 127.0.0.1, each with the
release build of stretcher as its handler (its own dest, state dir and
report file), deploying from one local HTTP origin. Measures:

- all at once: `serf event deploy URL`, from the event to the last host's
  report file written;
- `serf query deploy URL -timeout 60s`, which waits out its timeout;
- `stretcher fleet query URL`, to all answers, and how long after the last
  answer it returned;
- `stretcher fleet rollout URL --batch 10`, against 1.5x the all-at-once
  time.

Each step deploys a new version (10% of the files changed) over the last.
Prints Markdown and puts it in bench/results.md between the fleet-bench
markers (the rest of the file is left as it is); the rollout's own output
goes to target/fleet-bench-rollout.log.

Usage: fleet_bench.py [--agents 100] [--batch 10] [--bin target/release/stretcher]
"""
import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BEGIN = "<!-- fleet-bench -->"
END = "<!-- /fleet-bench -->"
EVENTS = "user:deploy,query:deploy,query:stretcher-status,query:stretcher-rollback"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_block(count, start=21000, stop=32000):
    """`count` consecutive ports, free for TCP and UDP, below Linux's
    ephemeral range (so no outgoing connection takes one meanwhile)."""
    def free(port):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    return False
        return True
    for base in range(start, stop - count, count):
        if all(free(p) for p in range(base, base + count)):
            return list(range(base, base + count))
    raise SystemExit("fleet-bench: no block of free ports")


def wait(what, limit, check, every=0.05):
    deadline = time.time() + limit
    while time.time() < deadline:
        if check():
            return
        time.sleep(every)
    raise SystemExit(f"fleet-bench: {what} did not happen within {limit}s")


def artifact(path, version, files=400, seed=7):
    """A tar.gz of `files` files of hex text in 40 dirs (about 4 MB, half
    that compressed); version n changes every 10th file from the n-th, and
    index.html."""
    rng = random.Random(seed)
    sizes = [rng.randint(2_000, 18_000) for _ in range(files)]
    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000 + version, 0o644
            tar.addfile(info, io.BytesIO(data))
        add("index.html", f"<p>version {version}</p>\n".encode() * (version + 1))
        for i, size in enumerate(sizes):
            rev = version if i % 10 == version % 10 else 0
            data = random.Random(seed * 1_000_003 + i * 101 + rev).randbytes(size // 2).hex()
            add(f"d{i % 40}/f{i}.txt", data.encode())
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Origin:
    """python's http.server on 127.0.0.1 serving the archives and manifests."""

    def __init__(self, directory):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
             "--directory", directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait("the HTTP origin", 20, self.up, 0.1)

    def up(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Fleet:
    """`n` serf agents, node001…, each in its own home under `work`."""

    def __init__(self, work, n, binary):
        self.agents = []
        self.procs = []
        ports = port_block(2 * n)
        for i in range(1, n + 1):
            home = os.path.join(work, f"node{i:03}")
            os.makedirs(os.path.join(home, "tmp"))
            self.agents.append({
                "name": f"node{i:03}", "home": home,
                "bind": f"127.0.0.1:{ports[2 * i - 2]}", "rpc": f"127.0.0.1:{ports[2 * i - 1]}",
                "report": os.path.join(home, "report.json"),
            })
        self.rpc = self.agents[0]["rpc"]
        try:
            self.start(binary)
        except BaseException:
            self.stop()
            raise

    def start(self, binary):
        n = len(self.agents)
        handler = [binary, "--state-dir", "{home}/state", "--report-file", "{home}/report.json"]
        for i, a in enumerate(self.agents):
            cmd = ["serf", "agent", f"-node={a['name']}", f"-bind={a['bind']}",
                   f"-rpc-addr={a['rpc']}", "-log-level=warn",
                   f"-event-handler={EVENTS}=" + " ".join(handler).replace("{home}", a["home"])]
            if i > 0:
                cmd.append(f"-join={self.agents[0]['bind']}")
            env = dict(os.environ, APP_DEST=os.path.join(a["home"], "app"),
                       TMPDIR=os.path.join(a["home"], "tmp"))
            log = open(os.path.join(a["home"], "serf.log"), "wb")
            self.procs.append(subprocess.Popen(cmd, cwd=a["home"], env=env, stdout=log,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            if i == 0:
                wait("the first agent's RPC", 20, lambda: self.serf("members").returncode == 0)
        try:
            wait(f"{n} alive members", 120, lambda: self.alive() == n, 0.5)
        except SystemExit:
            dead = [a["name"] for a, p in zip(self.agents, self.procs) if p.poll() is not None]
            print(f"alive: {self.alive()}; exited: {' '.join(dead) or 'none'}", file=sys.stderr)
            for a in self.agents:
                if a["name"] in dead[:3]:
                    print(open(os.path.join(a["home"], "serf.log")).read()[-2000:], file=sys.stderr)
            raise

    def serf(self, command, *args):
        """`serf COMMAND -rpc-addr=… ARGS…` (Go's flags end at the first argument)."""
        out = subprocess.run(["serf", command, f"-rpc-addr={self.rpc}", *args], capture_output=True)
        if out.returncode != 0 and command != "members":
            raise SystemExit(f"fleet-bench: serf {command}: {out.stderr.decode().strip()}")
        return out

    def alive(self):
        out = self.serf("members", "-status=alive").stdout.decode()
        return len(out.splitlines())

    def reports(self):
        out = []
        for a in self.agents:
            try:
                with open(a["report"]) as f:
                    out.append((json.load(f), os.stat(a["report"]).st_mtime))
            except (OSError, ValueError):
                out.append((None, 0))
        return out

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()
        self.procs = []


def deployed(fleet, url):
    return all(r and r["result"] == "success" and r["manifest"] == url for r, _ in fleet.reports())


def wait_deployed(fleet, url, limit):
    """Waits until every host's report says `url` deployed; on a timeout,
    says which hosts did not and why."""
    try:
        wait(f"{url} on every host", limit, lambda: deployed(fleet, url))
    except SystemExit:
        for a, (r, _) in zip(fleet.agents, fleet.reports()):
            if not (r and r["result"] == "success" and r["manifest"] == url):
                why = r and (r["manifest"], r["result"], r.get("error"))
                print(f"{a['name']}: {why}", file=sys.stderr)
        raise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/stretcher"))
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    started = time.time()
    load = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="fleet-bench-")
    site = os.path.join(work, "site")
    os.makedirs(site)
    origin = fleet = None
    try:
        origin = Origin(site)
        urls = {}
        for v in range(1, 6):
            sha = artifact(os.path.join(site, f"app-{v}.tar.gz"), v)
            with open(os.path.join(site, f"v{v}.yml"), "w") as f:
                f.write(f"src: {origin.url(f'app-{v}.tar.gz')}\nchecksum: {sha}\n"
                        "dest: {{ must_env \"APP_DEST\" }}\n")
            urls[v] = origin.url(f"v{v}.yml")
        size = os.path.getsize(os.path.join(site, "app-1.tar.gz"))
        t = time.time()
        fleet = Fleet(os.path.join(work, "agents"), args.agents, binary)
        startup = time.time() - t
        rows = []

        # v1: the first deploy everywhere (into empty dests), not measured.
        fleet.serf("event", "-coalesce=false", "deploy", urls[1])
        wait_deployed(fleet, urls[1], 600)

        # All at once: the user event.
        t0 = time.time()
        fleet.serf("event", "-coalesce=false", "deploy", urls[2])
        wait_deployed(fleet, urls[2], 600)
        all_at_once = max(m for _, m in fleet.reports()) - t0
        rows.append(("`serf event deploy`, event to the last host's report", f"{all_at_once:.2f}s"))

        # serf query: waits out its timeout.
        t0 = time.time()
        out = subprocess.run(["serf", "query", f"-rpc-addr={fleet.rpc}", "-timeout=60s",
                              "-format=json", "deploy", urls[3]], capture_output=True)
        serf_query = time.time() - t0
        answered = len(json.loads(out.stdout or b"{}").get("Responses") or {})
        last3 = max(m for _, m in fleet.reports()) - t0
        rows.append((f"`serf query deploy -timeout 60s` ({answered} answers, last deploy at {last3:.2f}s)",
                     f"{serf_query:.2f}s"))

        # fleet query: returns with the last answer.
        t0 = time.time()
        out = subprocess.run([binary, "fleet", "query", "--rpc-addr", fleet.rpc, "--json", urls[4]],
                             capture_output=True)
        fleet_query = time.time() - t0
        doc = json.loads(out.stdout)
        last_answer = max(a["seconds"] for a in doc["answers"].values())
        after_last = fleet_query - last_answer
        rows.append((f"`stretcher fleet query` ({len(doc['ok'])} ok), to all answers", f"{fleet_query:.2f}s"))
        rows.append(("… returned after the last answer", f"{after_last:.2f}s"))

        # fleet rollout in batches.
        t0 = time.time()
        out = subprocess.run([binary, "fleet", "rollout", "--rpc-addr", fleet.rpc,
                              "--batch", str(args.batch), urls[5]], capture_output=True)
        rollout = time.time() - t0
        with open(os.path.join(HERE, "..", "target", "fleet-bench-rollout.log"), "wb") as f:
            f.write(out.stdout + out.stderr)
        tail = out.stdout.decode().strip().splitlines()[-1]
        rows.append((f"`stretcher fleet rollout --batch {args.batch}` ({tail})", f"{rollout:.2f}s"))
        ok = deployed(fleet, urls[5]) and out.returncode == 0 and doc["failed"] == [] \
            and not doc["no_answer"]

        # fleet status.
        t0 = time.time()
        out = subprocess.run([binary, "fleet", "status", "--rpc-addr", fleet.rpc, "--json"],
                             capture_output=True)
        status = time.time() - t0
        groups = json.loads(out.stdout)["checksums"]
        rows.append((f"`stretcher fleet status` ({len(groups)} checksum group)", f"{status:.2f}s"))
    finally:
        if fleet:
            fleet.stop()
        if origin:
            origin.stop()
        shutil.rmtree(work, ignore_errors=True)

    # All at once: the faster of the user event and fleet query (a host the
    # event's gossip misses only gets it at Serf's next push-pull sync).
    once = min(all_at_once, fleet_query)
    targets = [
        ("`fleet query` returns within 2 s of the last answer", f"{after_last:.2f}s", after_last <= 2),
        (f"rollout in batches of {args.batch} within 1.5x all at once (no pauses)",
         f"{rollout / once:.2f}x ({rollout:.2f}s vs {once:.2f}s)",
         rollout <= 1.5 * once),
        ("every host deployed every step", "yes" if ok else "no", ok),
    ]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        BEGIN,
        "## Fleet over Serf (`make fleet-bench`)",
        "",
        f"- machine: {cpu}, {os.cpu_count()} cores; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"1-minute load average {load:.1f} at the start; whole bench {time.time() - started:.0f}s",
        f"- {args.agents} serf agents ({subprocess.run(['serf', 'version'], capture_output=True).stdout.decode().splitlines()[0]}) "
        f"on 127.0.0.1, started and joined in {startup:.1f}s; each one's handler is the release "
        "build with its own `--state-dir`, `--report-file` and dest (rsync strategy)",
        f"- artifact: {size / 1e6:.1f} MB tar.gz, 400 files in 40 dirs, from one local HTTP origin "
        "(python http.server); each step deploys a new version with 10% of the files changed",
        "",
        "| step | time |",
        "|---|---:|",
        *[f"| {what} | {value} |" for what, value in rows],
        "",
        "| target | measured | |",
        "|---|---:|---|",
        *[f"| {what} | {value} | {'met' if met else '**missed**'} |" for what, value, met in targets],
        END,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    path = os.path.join(HERE, "results.md")
    old = open(path).read() if os.path.exists(path) else ""
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()
