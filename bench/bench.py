#!/usr/bin/env python3
"""stretcher benchmark: deploys with the default rsync strategy, with
sync_strategy: native and with sync_strategy: release against the exact sequence of external steps Go
stretcher runs (baseline.sh), and against a floor (the archive read, hashed
and inflated with nothing written); plus download+hash throughput and peak
memory. Prints Markdown and writes it to bench/results.md.

Usage: bench.py [--runs N] [--bin target/release/stretcher]
"""
import argparse
import datetime
import hashlib
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
SHM = "/dev/shm"
# The machine's own disk, beside the loop-mounted image (see Ext4).
OWN_DISK = "/var/tmp"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpServer:
    """python's http.server on 127.0.0.1, serving one directory."""

    def __init__(self, directory):
        self.port = free_port()
        self.proc = subprocess.Popen(self.command(directory), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("http server did not start")

    def command(self, directory):
        return [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                "--directory", directory]

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Ext4:
    """The disk place: a fresh ext4 image (mkfs.ext4 defaults, so with a
    journal) loop-mounted under bench/work. The machine's own filesystem
    may be ext4 without a journal, whose inode allocator skips every inode
    freed in the last 60-300 s (recently_deleted in fs/ext4/ialloc.c): back
    to back, each deploy would pay for the inodes the previous one freed,
    and the rows would measure that instead of the tools. Falls back to
    bench/work itself where a loop mount is not possible (not root)."""

    def __init__(self):
        self.img = os.path.join(WORK, "ext4.img")
        self.mnt = os.path.join(WORK, "ext4")
        self.mounted = False
        self.label = f"bench/work ({fs_type(WORK)})"
        if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
            return
        os.makedirs(self.mnt, exist_ok=True)
        with open(self.img, "wb") as f:
            f.truncate(4 << 30)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", self.img], capture_output=True)
        if made.returncode == 0 and subprocess.run(
                ["mount", "-o", "loop", self.img, self.mnt], capture_output=True).returncode == 0:
            self.mounted = True
            self.label = ("a 4 GiB ext4 image (mkfs.ext4 defaults, with a journal), "
                          f"loop-mounted; bench/work itself is {fs_type(WORK)}, see Ext4 in "
                          "bench/bench.py for why it is not used")
        else:
            os.remove(self.img)

    def base(self):
        return self.mnt if self.mounted else WORK

    def close(self):
        if self.mounted:
            subprocess.run(["umount", self.mnt], check=True)
            self.mounted = False
        if os.path.exists(self.img):
            os.remove(self.img)
        shutil.rmtree(self.mnt, ignore_errors=True)


def fs_type(path):
    out = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


class Place:
    """A filesystem location holding archives, TMPDIR and dest."""

    def __init__(self, name, base):
        self.name = name
        self.dir = os.path.join(base, "stretcher-bench")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "tmp"))
        for v in ("v1.tar.gz", "v2.tar.gz", "packed-v1.tar.gz", "packed-v2.tar.gz"):
            shutil.copy(os.path.join(WORK, v), self.dir)
        # A pristine v1 tree, to set up redeploy scenarios outside the timing.
        self.pristine = os.path.join(self.dir, "pristine")
        os.makedirs(self.pristine)
        subprocess.run(["tar", "xf", os.path.join(self.dir, "v1.tar.gz"), "-C", self.pristine],
                       check=True)
        os.chmod(self.pristine, 0o755)
        self.dest = os.path.join(self.dir, "dest")
        self.tmp = os.path.join(self.dir, "tmp")

    def reset_dest(self, with_v1, release=False):
        releases = os.path.join(self.dir, "releases")
        subprocess.run(["rm", "-rf", self.dest, releases], check=True)
        if release:
            # The release layout: v1 live in releases/, dest a symlink to it.
            if with_v1:
                os.makedirs(releases)
                live = "20000101000000-00000000"
                subprocess.run(["cp", "-al", self.pristine, os.path.join(releases, live)],
                               check=True)
                os.symlink(os.path.join("releases", live), self.dest)
        elif with_v1:
            # Hard links: a deploy replaces changed files by rename, so the
            # pristine tree is never modified, and set-up stays cheap.
            subprocess.run(["cp", "-al", self.pristine, self.dest], check=True)
        else:
            os.makedirs(self.dest)
        subprocess.run(["sync"], check=True)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def run_baseline(place, src_url):
    env = dict(os.environ, TMPDIR=place.tmp)
    start = time.time()
    out = subprocess.run([os.path.join(HERE, "baseline.sh"), src_url, place.dest], env=env,
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1]) - start


def run_ours(binary, place, src_url, checksum, strategy, extra="", args=()):
    stamp = os.path.join(place.dir, "post-stamp")
    manifest = os.path.join(place.dir, "manifest.yml")
    with open(manifest, "w") as f:
        f.write(f"src: {src_url}\nchecksum: {checksum}\ndest: {place.dest}\n"
                f"sync_strategy: {strategy}\n{extra}"
                f"commands:\n  post:\n    - date +%s.%N > {stamp}\n")
    env = dict(os.environ, TMPDIR=place.tmp)
    start = time.time()
    subprocess.run([binary, *args], input=f"file://{manifest}", env=env, check=True,
                   capture_output=True, text=True)
    with open(stamp) as f:
        return float(f.read().strip()) - start


def tree_digest(path):
    """Paths, modes, mtimes and contents of a tree (not its root, whose mtime
    is the time of extraction), for an equality check."""
    out = subprocess.run(
        f"cd {path} && find . -mindepth 1 -printf '%p %y %m %T@ %s\\n' | sort && "
        f"find . -type f -print0 | sort -z | xargs -0 sha256sum",
        shell=True, check=True, capture_output=True, text=True)
    return hashlib.sha256(out.stdout.encode()).hexdigest()


def floor_python(path):
    """One pass over the archive: every byte read once, fed to sha256 and
    to zlib's inflate; the inflated bytes are dropped. Nothing is written."""
    h = hashlib.sha256()
    z = zlib.decompressobj(wbits=31)  # gzip
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            z.decompress(chunk)
    z.flush()
    h.hexdigest()


def floor_shell(cmd, path):
    subprocess.run(cmd.format(a=path), shell=True, check=True)


FLOOR_CANDIDATES = {
    "python, one pass: hashlib.sha256 + zlib.decompressobj": floor_python,
    "sha256sum; gzip -dc >/dev/null": lambda p: floor_shell(
        "sha256sum {a} >/dev/null && gzip -dc {a} >/dev/null", p),
    "sha256sum; pigz -dc >/dev/null": lambda p: floor_shell(
        "sha256sum {a} >/dev/null && pigz -dc {a} >/dev/null", p),
}


def pick_floor(place):
    """The fastest available way to read, hash and inflate v1 in this place
    (median of 3): the floor every deploy there is compared with."""
    path = os.path.join(place.dir, "v1.tar.gz")
    medians = {}
    for name, fn in FLOOR_CANDIDATES.items():
        if "pigz" in name and not shutil.which("pigz"):
            continue
        times = []
        for _ in range(3):
            start = time.time()
            fn(path)
            times.append(time.time() - start)
        medians[name] = statistics.median(times)
    best = min(medians, key=medians.get)
    return best, medians


# The tools timed per scenario, in the order they alternate. The floor and
# "excluded" (a native deploy with `excludes: ['*']`: the agent downloads
# the archive to its temp file, hashes, inflates and parses all of it, and
# places nothing) are timed only for file:// sources.
TOOLS = ("baseline", "rsync", "native", "release", "floor", "excluded")
FILE_ONLY = ("floor", "excluded")


def new_bytes(place):
    """Of the live release's file bytes, the fraction in files it shares
    with no other release (written by this deploy, not hard linked)."""
    live = os.path.realpath(place.dest)
    total = fresh = 0
    for d, _, files in os.walk(live):
        for name in files:
            st = os.lstat(os.path.join(d, name))
            total += st.st_size
            if st.st_nlink == 1:
                fresh += st.st_size
    return fresh / total if total else 0.0


def scenarios(binary, runs, disk):
    rows = []
    packed = []
    floors = {}
    places = [Place("disk", disk.base()), Place("own disk", OWN_DISK)]
    if os.path.isdir(SHM):
        places.append(Place("tmpfs", SHM))
    try:
        for place in places:
            best, medians = pick_floor(place)
            floors[place.name] = (best, medians)
            floor_fn = FLOOR_CANDIDATES[best]
            print(f"  {place.name:5} floor: {best}", flush=True)
            server = HttpServer(place.dir)
            try:
                for source in ("file", "http"):
                    for scenario, archive, with_v1 in (
                        ("fresh deploy", "v1.tar.gz", False),
                        ("redeploy, same", "v1.tar.gz", True),
                        ("redeploy, 1% changed", "v2.tar.gz", True),
                    ):
                        path = os.path.join(place.dir, archive)
                        url = f"file://{path}" if source == "file" else server.url(archive)
                        checksum = sha256(path)
                        tools = [t for t in TOOLS if t not in FILE_ONLY or source == "file"]
                        times = {tool: [] for tool in tools}
                        digests = {}
                        for i in range(runs * len(tools)):
                            tool = tools[i % len(tools)]
                            if tool == "floor":
                                start = time.time()
                                floor_fn(path)
                                times[tool].append(time.time() - start)
                                continue
                            place.reset_dest(with_v1 and tool != "excluded", tool == "release")
                            if tool == "baseline":
                                t = run_baseline(place, url)
                            elif tool == "excluded":
                                t = run_ours(binary, place, url, checksum, "native",
                                             "excludes: ['*']\n")
                                times[tool].append(t)
                                continue
                            else:
                                t = run_ours(binary, place, url, checksum, tool)
                            times[tool].append(t)
                            if tool not in digests:
                                digests[tool] = tree_digest(place.dest)
                                if tool == "release":
                                    times["release new bytes"] = [new_bytes(place)]
                        for tool, digest in digests.items():
                            if digest != digests["baseline"]:
                                raise SystemExit(f"dest trees differ: {place.name} {source} "
                                                 f"{scenario}: {tool} vs baseline")
                        med = {tool: statistics.median(t) for tool, t in times.items()}
                        rows.append((place.name, source, scenario, med))
                        b = med["baseline"]
                        print(f"  {place.name:5} {source:4} {scenario:22} baseline {b:6.2f}s  "
                              f"rsync {med['rsync']:6.2f}s ({med['rsync'] / b:.2f})  "
                              f"native {med['native']:6.2f}s ({med['native'] / b:.2f})  "
                              f"release {med['release']:6.2f}s ({med['release'] / b:.2f})"
                              + (f"  floor {med['floor']:6.2f}s" if "floor" in med else ""),
                              flush=True)
            finally:
                server.stop()
            packed += packed_rows(binary, place, runs)
    finally:
        for place in places:
            place.cleanup()
    return rows, floors, packed


class RangeServer(HttpServer):
    """bench/range_server.py on 127.0.0.1, serving one directory: single
    ranges, an ETag, and a count of the body bytes sent."""

    def command(self, directory):
        return [sys.executable, os.path.join(HERE, "range_server.py"), directory, str(self.port)]

    def counts(self, reset=False):
        """(body bytes sent, requests) since the last reset."""
        import urllib.request
        path = "_reset" if reset else "_bytes"
        with urllib.request.urlopen(self.url(path)) as r:
            sent, requests = r.read().decode().split()
        return int(sent), int(requests)


def make_packed(binary):
    """packed-v1.tar.gz and packed-v2.tar.gz in bench/work: `stretcher pack`
    of the trees v1.tar.gz and v2.tar.gz hold (made once). Returns the
    figures of packing v1's tree against `tar czf` of it (median of 3)."""
    figures = {}
    for v in ("v1", "v2"):
        tree = os.path.join(WORK, f"tree-{v}")
        out = os.path.join(WORK, f"packed-{v}.tar.gz")
        if not os.path.isdir(tree):
            os.makedirs(tree)
            subprocess.run(["tar", "xf", os.path.join(WORK, f"{v}.tar.gz"), "-C", tree],
                           check=True)
        if v == "v1" or not os.path.exists(out):
            figures[v] = pack_figures(binary, tree, out)
    return figures["v1"]


def pack_figures(binary, tree, out, runs=3):
    """Times `stretcher pack` of `tree` into `out` and `tar czf` of it
    (median of `runs`, alternated), with sizes and pack's peak RSS."""
    plain = out + ".plain.tar.gz"
    packs, tars, rss = [], [], []
    for _ in range(runs):
        start = time.time()
        proc = subprocess.run(["/usr/bin/time", "-v", binary, "pack", tree, "-o", out],
                              check=True, capture_output=True, text=True)
        packs.append(time.time() - start)
        rss.append(max_rss(proc.stderr))
        start = time.time()
        subprocess.run(["tar", "czf", plain, "-C", tree, "."], check=True)
        tars.append(time.time() - start)
    figures = {"pack": statistics.median(packs), "tar": statistics.median(tars),
               "packed bytes": os.path.getsize(out), "tar bytes": os.path.getsize(plain),
               "pack rss": statistics.median(rss)}
    os.remove(plain)
    return figures


def max_rss(time_v_stderr):
    """Peak RSS (MB) from `/usr/bin/time -v`'s report."""
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_v_stderr)
    return int(m.group(1)) / 1024


# Packed archives over a Range-capable server with --state-dir: the
# scenario, the archive deployed, and whether v1 was deployed (and kept)
# before it.
PACKED_SCENARIOS = (
    ("fresh deploy", "packed-v1.tar.gz", False),
    ("redeploy, same", "packed-v1.tar.gz", True),
    ("redeploy, 1% changed", "packed-v2.tar.gz", True),
)


def packed_floor(archive, dest):
    """The work no redeploy can skip, timed: the whole archive hashed
    (`checksum` covers every byte; openssl, the fastest sha256 here, when
    installed) and every entry of dest looked at (rsync's quick check and
    delete pass: `find` reads every directory and lstats every entry)."""
    hasher = "openssl dgst -sha256" if shutil.which("openssl") else "sha256sum"
    start = time.time()
    subprocess.run(f"{hasher} {archive} >/dev/null && "
                   f"find {dest} -printf '%s %T@\\n' >/dev/null", shell=True, check=True)
    return time.time() - start


def packed_rows(binary, place, runs):
    """native and release deploying the packed archives over http with a
    state dir (delta fetch, placement by the index): time to the post hook
    and body bytes the server sent, per scenario."""
    server = RangeServer(place.dir)
    state = os.path.join(place.dir, "state")
    sums = {a: sha256(os.path.join(place.dir, a))
            for a in ("packed-v1.tar.gz", "packed-v2.tar.gz")}
    refs = {}
    for archive in sums:
        ref = os.path.join(place.dir, "reference")
        os.makedirs(ref)
        subprocess.run(["tar", "xf", os.path.join(place.dir, archive), "-C", ref], check=True)
        refs[archive] = tree_digest(ref)
        shutil.rmtree(ref)
    rows = []
    try:
        for scenario, archive, with_v1 in PACKED_SCENARIOS:
            times = {"native": [], "release": []}
            wire = {}
            for i in range(runs * 2):
                strategy = ("native", "release")[i % 2]
                args = ("--state-dir", state)
                shutil.rmtree(state, ignore_errors=True)
                place.reset_dest(False, strategy == "release")
                if with_v1:
                    run_ours(binary, place, server.url("packed-v1.tar.gz"),
                             sums["packed-v1.tar.gz"], strategy, args=args)
                    subprocess.run(["sync"], check=True)
                server.counts(reset=True)
                t = run_ours(binary, place, server.url(archive), sums[archive], strategy,
                             args=args)
                times[strategy].append(t)
                wire.setdefault(strategy, server.counts())
                if i < 2 and tree_digest(place.dest) != refs[archive]:
                    raise SystemExit(f"dest tree differs from tar xf: {place.name} packed "
                                     f"{scenario} {strategy}")
                if with_v1 and strategy == "native":
                    times.setdefault("floor", []).append(
                        packed_floor(os.path.join(place.dir, archive), place.dest))
            med = {k: statistics.median(v) for k, v in times.items()}
            size = os.path.getsize(os.path.join(place.dir, archive))
            rows.append((place.name, scenario, med, wire, size))
            print(f"  {place.name:8} packed {scenario:22} native {med['native']:6.2f}s  "
                  f"release {med['release']:6.2f}s  wire {wire['native'][0] / size:.2%}",
                  flush=True)
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
    return rows


def packed_rss(binary):
    """Peak RSS of native deploys of packed archives over http with a state
    dir (delta fetch, index in hand, placement by it): the 20k-file
    artifact 1% changed, and 100k one-byte files redeployed (every entry
    quick-checked); and `stretcher pack` of a tree of one 1 GiB and of
    one 2 GiB file (pack streams: a few members in flight, whatever the
    size). Medians of 3."""
    base = SHM if os.path.isdir(SHM) else WORK
    d = tempfile.mkdtemp(prefix="stretcher-bench-", dir=base)
    result = {}
    server = RangeServer(d)
    try:
        tiny = os.path.join(WORK, "tiny-100000.tar.gz")
        if not os.path.exists(tiny):
            subprocess.run([sys.executable, os.path.join(HERE, "gen.py"), WORK,
                            "--tiny", "100000"], check=True)
        tree = os.path.join(d, "tiny")
        os.makedirs(tree)
        subprocess.run(["tar", "xf", tiny, "-C", tree], check=True)
        subprocess.run([binary, "pack", tree, "-o", os.path.join(d, "tiny.tar.gz")],
                       check=True, capture_output=True)
        shutil.rmtree(tree)
        for v in ("v1", "v2"):
            shutil.copy(os.path.join(WORK, f"packed-{v}.tar.gz"), d)
        state, dest = os.path.join(d, "state"), os.path.join(d, "dest")

        def deploy(name):
            manifest = os.path.join(d, "m.yml")
            with open(manifest, "w") as f:
                f.write(f"src: {server.url(name)}\nchecksum: {sha256(os.path.join(d, name))}\n"
                        f"dest: {dest}\nsync_strategy: native\n")
            out = subprocess.run(["/usr/bin/time", "-v", binary, "--state-dir", state],
                                 input=f"file://{manifest}", capture_output=True, text=True,
                                 env=dict(os.environ, TMPDIR=d))
            if "Deploy manifest succeeded." not in out.stderr:
                raise SystemExit(f"packed deploy failed:\n{out.stderr[-2000:]}")
            return max_rss(out.stderr)

        # Median of 3: the peak moves with thread timing by a few 100 kB.
        changed, same = [], []
        for _ in range(3):
            shutil.rmtree(dest, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)
            deploy("packed-v1.tar.gz")
            changed.append(deploy("packed-v2.tar.gz"))
        result["20k files, 1% changed"] = statistics.median(changed)
        shutil.rmtree(dest)
        deploy("tiny.tar.gz")
        for _ in range(3):
            same.append(deploy("tiny.tar.gz"))
        result["100k tiny files, redeploy same"] = statistics.median(same)
        for label, size in (("1 GiB", 1 << 30), ("2 GiB", 2 << 30)):
            tree = os.path.join(d, "one-file")
            os.makedirs(tree)
            write_random(os.path.join(tree, "payload.bin"), size)
            peaks = []
            for _ in range(3):
                out = subprocess.run(["/usr/bin/time", "-v", binary, "pack", tree, "-o",
                                      os.path.join(d, "one.tar.gz")],
                                     check=True, capture_output=True, text=True)
                peaks.append(max_rss(out.stderr))
            result[f"pack, one {label} file"] = statistics.median(peaks)
            shutil.rmtree(tree)
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)
    return result


def write_random(path, size):
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            f.write(block[i % 256:] + block[:i % 256])


def throughput(binary, runs):
    """Download+hash of 1 GiB from file:// (to a temp file) vs cat | sha256sum."""
    base = SHM if os.path.isdir(SHM) else WORK
    d = tempfile.mkdtemp(prefix="stretcher-bench-", dir=base)
    try:
        big = os.path.join(d, "big.bin")
        write_random(big, 1 << 30)
        checksum = sha256(big)
        cat = []
        for _ in range(runs):
            start = time.time()
            subprocess.run(f"cat {big} | sha256sum >/dev/null", shell=True, check=True)
            cat.append(time.time() - start)
        ours = []
        manifest = os.path.join(d, "m.yml")
        with open(manifest, "w") as f:
            # Not a tar: the run fails after the download, which is all we time.
            f.write(f"src: file://{big}\nchecksum: {checksum}\ndest: {d}/dest\n")
        for _ in range(runs):
            out = subprocess.run([binary], input=f"file://{manifest}", capture_output=True,
                                 text=True, env=dict(os.environ, TMPDIR=d))
            m = re.search(r"Wrote [\d,]+ bytes to \S+ \(in ([^,]+),", out.stderr)
            ours.append(go_duration(m.group(1)))
        gib = (1 << 30) / 1e6
        c, o = statistics.median(cat), statistics.median(ours)
        return gib / c, gib / o
    finally:
        shutil.rmtree(d, ignore_errors=True)


def go_duration(s):
    units = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ns|µs|us|ms|s|m|h)", s))


def measure_rss(binary, d, src, checksum, env=None, strategy="mv", dest=None):
    """Peak RSS (MB) of a whole deploy (by default with the mv strategy: no
    rsync child). A given dest is left in place; the default one is removed."""
    manifest = os.path.join(d, "m.yml")
    keep = dest is not None
    dest = dest or os.path.join(d, "dest")
    with open(manifest, "w") as f:
        f.write(f"src: {src}\nchecksum: {checksum}\ndest: {dest}\nsync_strategy: {strategy}\n")
    out = subprocess.run(["/usr/bin/time", "-v", binary], input=f"file://{manifest}",
                         capture_output=True, text=True,
                         env=dict(os.environ, TMPDIR=d, **(env or {})))
    if "Deploy manifest succeeded." not in out.stderr:
        raise SystemExit(f"deploy for the RSS measurement failed:\n{out.stderr[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    if not keep:
        shutil.rmtree(dest, ignore_errors=True)
    return int(m.group(1)) / 1024


def make_tar(d, size):
    payload = os.path.join(d, "payload.bin")
    write_random(payload, size)
    archive = os.path.join(d, "a.tar")
    subprocess.run(["tar", "cf", archive, "-C", d, "payload.bin"], check=True)
    os.remove(payload)
    return archive


def peak_rss(binary):
    """Peak RSS of a whole deploy of a 10 MiB and a 1 GiB archive from
    file://, and of a 10 MiB and a 100 MiB object from S3 (moto)."""
    base = SHM if os.path.isdir(SHM) else WORK
    d = tempfile.mkdtemp(prefix="stretcher-bench-", dir=base)
    result = {}
    try:
        for label, size in (("10 MiB, file://", 10 << 20), ("1 GiB, file://", 1 << 30)):
            archive = make_tar(d, size)
            result[label] = measure_rss(binary, d, f"file://{archive}", sha256(archive))
            os.remove(archive)
        if shutil.which("moto_server"):
            result.update(s3_rss(binary, d))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return result


def s3_rss(binary, d):
    import boto3  # installed with moto[server]
    port = free_port()
    moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = {}
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_S3_FORCE_PATH_STYLE": "true",
               "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        s3.create_bucket(Bucket="bench")
        for label, size in (("10 MiB, s3://", 10 << 20), ("100 MiB, s3://", 100 << 20)):
            archive = make_tar(d, size)
            s3.upload_file(archive, "bench", "a.tar")
            result[label] = measure_rss(binary, d, "s3://bench/a.tar", sha256(archive), env)
            os.remove(archive)
    finally:
        moto.kill()
        moto.wait()
    return result


def native_rss(binary, runs=3):
    """Peak RSS of native deploys (median of `runs`): the 20k-file artifact
    fresh and 1%-changed; and archives of 10k and 100k one-byte files,
    fresh and redeployed, whose difference is the cost of the per-path
    sets (seen paths, written files, made dirs)."""
    base = SHM if os.path.isdir(SHM) else WORK
    d = tempfile.mkdtemp(prefix="stretcher-bench-", dir=base)
    result = {}

    def rss(archive, dest, prepare):
        mbs = []
        for _ in range(runs):
            prepare()
            mbs.append(measure_rss(binary, d, f"file://{archive}", sha256(archive),
                                   strategy="native", dest=dest))
        return statistics.median(mbs)

    try:
        dest = os.path.join(d, "dest")
        v1, v2 = (os.path.join(WORK, v) for v in ("v1.tar.gz", "v2.tar.gz"))
        fresh = lambda: shutil.rmtree(dest, ignore_errors=True)

        def with_v1():
            fresh()
            measure_rss(binary, d, f"file://{v1}", sha256(v1), strategy="native", dest=dest)

        result["20k files, fresh"] = rss(v1, dest, fresh)
        result["20k files, 1% changed"] = rss(v2, dest, with_v1)
        for n in (10_000, 100_000):
            tiny = os.path.join(WORK, f"tiny-{n}.tar.gz")
            if not os.path.exists(tiny):
                subprocess.run([sys.executable, os.path.join(HERE, "gen.py"), WORK,
                                "--tiny", str(n)], check=True)
            result[f"{n // 1000}k tiny files, fresh"] = rss(tiny, dest, fresh)
            result[f"{n // 1000}k tiny files, redeploy same"] = rss(tiny, dest, lambda: None)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return result


def targets(rows, rss):
    """The targets for sync_strategy native (file:// rows: the floor reads
    the archive where it lies): (target, measured, met)."""
    med = {(p, sc): m for p, src, sc, m in rows if src == "file"}
    out = []

    def ratio(place, scenario, of):
        m = med.get((place, scenario))
        return m and m["native"] / m[of]

    def floor_of(place, scenario):
        m = med[(place, scenario)]
        return f" (floor {m['floor'] / m['baseline']:.2f}×)"

    for place, limit in (("disk", 0.1), ("tmpfs", 0.3)):
        r = ratio(place, "redeploy, 1% changed", "baseline")
        if r is not None:
            out.append((f"1%-changed redeploy ≤ {limit}× baseline ({place})",
                        f"{r:.2f}×{floor_of(place, 'redeploy, 1% changed')}", r <= limit))
    for scenario, limit, name in (("redeploy, 1% changed", 1.5, "1%-changed redeploy"),
                                  ("redeploy, same", 1.3, "same-archive redeploy")):
        for place in ("disk", "tmpfs"):
            r = ratio(place, scenario, "floor")
            if r is None:
                continue
            e = ratio(place, scenario, "excluded")
            out.append((f"{name} ≤ {limit}× floor ({place})",
                        f"{r:.2f}× ({e:.2f}× the agent's fixed work)", r <= limit))
    for place in ("disk", "tmpfs"):
        r = ratio(place, "fresh deploy", "baseline")
        if r is not None:
            out.append((f"fresh deploy ≤ 0.3× baseline ({place})",
                        f"{r:.2f}×{floor_of(place, 'fresh deploy')}", r <= 0.3))
    for label in ("20k files, fresh", "20k files, 1% changed"):
        out.append((f"peak RSS ≤ 15 MB ({label})", f"{rss[label]:.1f} MB", rss[label] <= 15))
    return out


def packed_section(rows, packed, fig, rss):
    """The Markdown for packed archives: the rows, the pack figures, the
    memory, and the targets."""
    base = {(p, sc): m["baseline"] for p, src, sc, m in rows if src == "http"}
    lines = [
        "",
        "## Packed archives (`stretcher pack`), over http with `--state-dir`",
        "",
        "The same trees packed by `stretcher pack` (default member size), served by "
        "bench/range_server.py (single ranges, an ETag, bytes counted); each deploy runs with "
        "a fresh state dir, after an untimed deploy of packed v1 for the redeploys (so the "
        "agent keeps v1 and fetches the rest by range). Baseline: Go stretcher's steps on the "
        "plain archive over http, from the rows above. Wire: body bytes the server sent, of "
        "the archive's size. Every dest is checked equal to `tar xf` of the archive.",
        "",
        "Floor (redeploys): the whole archive hashed by `openssl dgst -sha256`, then "
        "`find dest -printf '%s %T@'` (every directory read, every entry lstat'ed), timed "
        "after the native run: the work the checksum and rsync's quick check leave to any "
        "agent, before a byte is fetched or placed.",
        "",
        "| place | scenario | baseline | native | ratio | release | ratio | floor | ratio "
        "| wire (native) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for place, scenario, med, wire, size in packed:
        b = base[(place, scenario)]
        sent, requests = wire["native"]
        floor = (f"{med['floor']:.3f}s | {med['floor'] / b:.3f}" if "floor" in med
                 else "– | –")
        lines.append(f"| {place} | {scenario} | {b:.2f}s | {med['native']:.2f}s | "
                     f"{med['native'] / b:.3f} | {med['release']:.2f}s | "
                     f"{med['release'] / b:.3f} | {floor} | {sent:,} B = {sent / size:.2%} "
                     f"in {requests} requests |")
    lines += [
        "",
        "| `stretcher pack` of v1's tree against `tar czf` (gzip -6), median of 3 | |",
        "|---|---:|",
        f"| stretcher pack | {fig['pack']:.2f}s, {fig['packed bytes']:,} bytes |",
        f"| tar czf | {fig['tar']:.2f}s, {fig['tar bytes']:,} bytes |",
        f"| stretcher pack, peak RSS | {fig['pack rss']:.1f} MB |",
        "",
        "| peak RSS, packed, native, http with --state-dir | MB |",
        "|---|---:|",
    ]
    for label, mb in rss.items():
        lines.append(f"| {label} | {mb:.1f} |")
    targets = []
    changed = [(p, m, w, size) for p, sc, m, w, size in packed if sc == "redeploy, 1% changed"]
    for place, med, wire, size in changed:
        r = med["native"] / base[(place, "redeploy, 1% changed")]
        fl = med["floor"] / base[(place, "redeploy, 1% changed")]
        targets.append((f"1%-changed native redeploy of a packed archive ≤ 0.1× baseline "
                        f"({place})", f"{r:.3f}× (floor {fl:.3f}×)", r <= 0.1))
    if changed:
        share = changed[0][2]["native"][0] / changed[0][3]
        targets.append(("1%-changed redeploy ≤ 3% of the archive's bytes over the wire",
                        f"{share:.2%}", share <= 0.03))
    ratio = fig["packed bytes"] / fig["tar bytes"]
    targets.append(("packed archive ≤ 1.10× `tar czf`", f"{ratio:.3f}×", ratio <= 1.10))
    targets.append(("`stretcher pack` no slower than `tar czf`",
                    f"{fig['pack']:.2f}s vs {fig['tar']:.2f}s", fig["pack"] <= fig["tar"]))
    for label, entries in (("20k files, 1% changed", 20_000),
                           ("100k tiny files, redeploy same", 100_000)):
        limit = 15 + 20 * entries / (1 << 20)
        targets.append((f"peak RSS ≤ 15 MB + 20 B per entry ({label}: {limit:.2f} MB)",
                        f"{rss[label]:.1f} MB", rss[label] <= limit))
    small, big = rss["pack, one 1 GiB file"], rss["pack, one 2 GiB file"]
    targets.append(("`pack` streams: RSS for a 2 GiB file within 2 MB of a 1 GiB one",
                    f"{big:.1f} vs {small:.1f} MB", big <= small + 2))
    lines += ["", "| target (packed archives) | measured | |", "|---|---:|---|"]
    for target, measured, met in targets:
        lines.append(f"| {target} | {measured} | {'met' if met else '**missed**'} |")
    return lines


def main():
    started = time.time()
    load_start = os.getloadavg()[0]
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/stretcher"))
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    if not os.path.exists(os.path.join(WORK, "v2.tar.gz")):
        print("generating artifacts…", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, "gen.py"), WORK], check=True)
    print("packing the bench trees…", flush=True)
    pack_fig = make_packed(binary)
    print("deploy scenarios (time from start to the post hook, median):", flush=True)
    disk = Ext4()
    try:
        rows, floors, packed = scenarios(binary, args.runs, disk)
    finally:
        disk.close()
    print("download+hash throughput…", flush=True)
    cat_mbs, ours_mbs = throughput(binary, 3)
    print("peak RSS…", flush=True)
    rss = peak_rss(binary)
    print("peak RSS, native…", flush=True)
    nrss = native_rss(binary)
    print("peak RSS, packed…", flush=True)
    prss = packed_rss(binary)
    elapsed = time.time() - started

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    floor_name = next(iter(floors.values()))[0]
    lines = [
        "# stretcher benchmark",
        "",
        f"- machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"whole bench {elapsed / 60:.0f} min; 1-minute load average {load_start:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end",
        f"- artifact: {os.path.getsize(os.path.join(WORK, 'v1.tar.gz')) / 1e6:.0f} MB tar.gz, "
        "20,000 files in 2,000 dirs (bench/gen.py, fixed seed); v2 changes 1% of files",
        f"- {args.runs} runs of each, alternated baseline / stretcher rsync / stretcher native / "
        "stretcher release / floor / native with every path excluded; medians; time from start "
        "to the post hook",
        f"- places: disk is {disk.label}; own disk is {OWN_DISK} on the machine's own "
        f"filesystem ({fs_type(OWN_DISK)}); tmpfs is /dev/shm. Each holds the archives, "
        "TMPDIR and dest; dest is reset and `sync` run before each timed deploy",
        "- baseline: bench/baseline.sh (Go stretcher's steps: cat|tee|sha256sum, tar xf, chmod, "
        "rsync -a --delete -v)",
        "- rsync: stretcher's default strategy (extract to a temp dir, rsync into dest); "
        "native: `sync_strategy: native` (stream the archive into dest); release: "
        "`sync_strategy: release` (a new release dir hard-linking unchanged files from the live "
        "one, then the dest symlink switched; redeploys start with v1 live in releases/)",
        "- floor: the least work any strategy must do: the archive (where it lies, so file:// "
        "rows only) read once, hashed and inflated, nothing written; timed in the bench process "
        f"with {floor_name} (the fastest of the ways below)",
        "- every strategy's dest tree (paths, types, modes, mtimes, bytes) is checked equal to "
        "the baseline's after its first run",
        "",
        "| place | source | scenario | baseline | stretcher rsync | ratio | stretcher native "
        "| ratio | floor | native ÷ floor | native, all excluded | native ÷ that |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for place, source, scenario, m in rows:
        b = m["baseline"]
        floor = (f"{m['floor']:.2f}s | {m['native'] / m['floor']:.2f} | "
                 f"{m['excluded']:.2f}s | {m['native'] / m['excluded']:.2f}" if "floor" in m
                 else "— | — | — | —")
        lines.append(f"| {place} | {source} | {scenario} | {b:.2f}s | {m['rsync']:.2f}s | "
                     f"{m['rsync'] / b:.2f} | {m['native']:.2f}s | {m['native'] / b:.2f} | "
                     f"{floor} |")
    lines += [
        "",
        "`sync_strategy: release` against the baseline, and the bytes a release deploy writes: "
        "of the new release's file bytes, the share in files it shares with no other release "
        "(target for a 1%-changed deploy: ≤ 2%).",
        "",
        "| place | source | scenario | baseline | stretcher release | ratio | new bytes |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for place, source, scenario, m in rows:
        b = m["baseline"]
        lines.append(f"| {place} | {source} | {scenario} | {b:.2f}s | {m['release']:.2f}s | "
                     f"{m['release'] / b:.2f} | {m['release new bytes'] * 100:.2f}% |")
    lines += [
        "",
        "Floor candidates (v1, median of 3; nothing written):",
        "",
        "| place | way | time |",
        "|---|---|---:|",
    ]
    for place, (best, medians) in floors.items():
        for name, t in medians.items():
            mark = " (used)" if name == best else ""
            lines.append(f"| {place} | {name}{mark} | {t:.2f}s |")
    lines += [
        "",
        "native, all excluded: the agent's own fixed work, a native deploy with "
        "`excludes: ['*']` into an empty dest: it downloads the archive (to its temp file), "
        "hashes, inflates (zlib-rs, on its own thread) and parses all of it and places nothing. "
        "It can come in under the floor, which inflates with the system zlib on one thread.",
        "",
        "| download + hash, 1 GiB from file:// | MB/s |",
        "|---|---:|",
        f"| cat \\| sha256sum | {cat_mbs:.0f} |",
        f"| stretcher (to a temp file) | {ours_mbs:.0f} ({ours_mbs / cat_mbs:.1f}×) |",
        "",
        "| peak RSS, whole deploy (mv strategy: no rsync child) | MB |",
        "|---|---:|",
    ]
    for label, mb in rss.items():
        lines.append(f"| {label} archive | {mb:.1f} |")
    per10k_fresh = (nrss["100k tiny files, fresh"] - nrss["10k tiny files, fresh"]) / 9
    per10k_same = (nrss["100k tiny files, redeploy same"]
                   - nrss["10k tiny files, redeploy same"]) / 9
    lines += [
        "",
        "| peak RSS, native deploy, file:// (median of 3) | MB |",
        "|---|---:|",
    ]
    for label, mb in nrss.items():
        lines.append(f"| {label} | {mb:.1f} |")
    lines += [
        "",
        "Memory for the per-path sets ((100k − 10k tiny files) ÷ 9): "
        f"{per10k_fresh:.2f} MB per 10k entries on a fresh deploy (every path seen, written "
        f"and its dir made), {per10k_same:.2f} MB per 10k entries on a redeploy (every path "
        "seen, nothing written).",
        "",
        "## Targets for `sync_strategy: native`",
        "",
        "Same run, medians, 20k-file artifact, file:// rows. Beside a ratio to the baseline, "
        "the floor's own ratio: the least any strategy could reach there.",
        "",
        "| target | measured | |",
        "|---|---:|---|",
    ]
    for target, measured, met in targets(rows, nrss):
        lines.append(f"| {target} | {measured} | {'met' if met else '**missed**'} |")
    lines += packed_section(rows, packed, pack_fig, prss)
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    path = os.path.join(HERE, "results.md")
    # The section make fleet-bench writes (bench/fleet_bench.py) stays.
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if "<!-- fleet-bench -->" in old:
            text += "\n" + old[old.index("<!-- fleet-bench -->"):]
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
