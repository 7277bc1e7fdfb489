#!/usr/bin/env python3
"""stretcher benchmark: the default rsync deploy against the exact sequence
of external steps Go stretcher runs (baseline.sh), plus download+hash
throughput and peak memory. Prints a Markdown table and writes it to
bench/results.md.

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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
SHM = "/dev/shm"


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
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
             "--directory", directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("http server did not start")

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Place:
    """A filesystem location holding archives, TMPDIR and dest."""

    def __init__(self, name, base):
        self.name = name
        self.dir = os.path.join(base, "stretcher-bench")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "tmp"))
        for v in ("v1.tar.gz", "v2.tar.gz"):
            shutil.copy(os.path.join(WORK, v), self.dir)
        # A pristine v1 tree, to set up redeploy scenarios outside the timing.
        self.pristine = os.path.join(self.dir, "pristine")
        os.makedirs(self.pristine)
        subprocess.run(["tar", "xf", os.path.join(self.dir, "v1.tar.gz"), "-C", self.pristine],
                       check=True)
        os.chmod(self.pristine, 0o755)
        self.dest = os.path.join(self.dir, "dest")
        self.tmp = os.path.join(self.dir, "tmp")

    def reset_dest(self, with_v1):
        subprocess.run(["rm", "-rf", self.dest], check=True)
        if with_v1:
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


def run_ours(binary, place, src_url, checksum):
    stamp = os.path.join(place.dir, "post-stamp")
    manifest = os.path.join(place.dir, "manifest.yml")
    with open(manifest, "w") as f:
        f.write(f"src: {src_url}\nchecksum: {checksum}\ndest: {place.dest}\n"
                f"commands:\n  post:\n    - date +%s.%N > {stamp}\n")
    env = dict(os.environ, TMPDIR=place.tmp)
    start = time.time()
    subprocess.run([binary], input=f"file://{manifest}", env=env, check=True,
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


def scenarios(binary, runs):
    rows = []
    places = [Place("disk", WORK)]
    if os.path.isdir(SHM):
        places.append(Place("tmpfs", SHM))
    try:
        for place in places:
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
                        times = {"baseline": [], "ours": []}
                        digests = {}
                        for i in range(runs * 2):
                            tool = "baseline" if i % 2 == 0 else "ours"
                            place.reset_dest(with_v1)
                            if tool == "baseline":
                                t = run_baseline(place, url)
                            else:
                                t = run_ours(binary, place, url, checksum)
                            times[tool].append(t)
                            if i < 2:
                                digests[tool] = tree_digest(place.dest)
                        if digests["baseline"] != digests["ours"]:
                            raise SystemExit(f"dest trees differ: {place.name} {source} {scenario}")
                        b = statistics.median(times["baseline"])
                        o = statistics.median(times["ours"])
                        rows.append((place.name, source, scenario, b, o, o / b))
                        print(f"  {place.name:5} {source:4} {scenario:22} baseline {b:6.2f}s  "
                              f"ours {o:6.2f}s  ratio {o / b:.2f}", flush=True)
            finally:
                server.stop()
    finally:
        for place in places:
            place.cleanup()
    return rows


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


def measure_rss(binary, d, src, checksum, env=None):
    """Peak RSS (MB) of a whole deploy with the mv strategy (no rsync child)."""
    manifest = os.path.join(d, "m.yml")
    dest = os.path.join(d, "dest")
    with open(manifest, "w") as f:
        f.write(f"src: {src}\nchecksum: {checksum}\ndest: {dest}\nsync_strategy: mv\n")
    out = subprocess.run(["/usr/bin/time", "-v", binary], input=f"file://{manifest}",
                         capture_output=True, text=True,
                         env=dict(os.environ, TMPDIR=d, **(env or {})))
    if "Deploy manifest succeeded." not in out.stderr:
        raise SystemExit(f"deploy for the RSS measurement failed:\n{out.stderr[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/stretcher"))
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    if not os.path.exists(os.path.join(WORK, "v2.tar.gz")):
        print("generating artifacts…", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, "gen.py"), WORK], check=True)
    print("deploy scenarios (time from start to the post hook, median):", flush=True)
    rows = scenarios(binary, args.runs)
    print("download+hash throughput…", flush=True)
    cat_mbs, ours_mbs = throughput(binary, 3)
    print("peak RSS…", flush=True)
    rss = peak_rss(binary)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    lines = [
        "# stretcher benchmark",
        "",
        f"- machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- artifact: {os.path.getsize(os.path.join(WORK, 'v1.tar.gz')) / 1e6:.0f} MB tar.gz, "
        "20,000 files in 2,000 dirs (bench/gen.py, fixed seed); v2 changes 1% of files",
        f"- {args.runs} runs per tool, alternated baseline/ours; medians; time from start to "
        "the post hook",
        "- baseline: bench/baseline.sh (Go stretcher's steps: cat|tee|sha256sum, tar xf, chmod, "
        "rsync -a --delete -v)",
        "",
        "| place | source | scenario | baseline | stretcher | ratio |",
        "|---|---|---|---:|---:|---:|",
    ]
    for place, source, scenario, b, o, r in rows:
        lines.append(f"| {place} | {source} | {scenario} | {b:.2f}s | {o:.2f}s | {r:.2f} |")
    lines += [
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
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    with open(os.path.join(HERE, "results.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
