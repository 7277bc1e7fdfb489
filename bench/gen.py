#!/usr/bin/env python3
"""Deterministic, app-like deploy artifacts for the benchmark.

Writes OUT/v1.tar.gz: ~20,000 files in ~2,000 directories (75% small text
files of ~2 KB, 24% mixed text/binary files of ~5 KB, 1% binary assets of
~160 KB), and OUT/v2.tar.gz: the same tree with 1% of the files changed
(content and mtime). Same seed, same bytes.

With --tiny N, writes only OUT/tiny-N.tar.gz: N one-byte files, 100 to a
directory, for measuring memory per archive path.
"""
import argparse
import gzip
import io
import os
import random
import tarfile

BASE_MTIME = 1_700_000_000


def words(rng, n):
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
        for _ in range(4000)
    ]
    return vocab[:n]


def text(rng, vocab, size):
    out = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 14))) + "\n"
        out.append(line)
        total += len(line)
    return "".join(out).encode()[:size]


def make_entries(seed, files, dirs):
    rng = random.Random(seed)
    vocab = words(rng, 4000)
    dir_list = ["app"]
    for i in range(dirs - 1):
        parent = rng.choice(dir_list[-200:] if rng.random() < 0.7 else dir_list)
        if parent.count("/") > 5:
            parent = "app"
        dir_list.append(f"{parent}/d{i:04d}")
    entries = []
    for i in range(files):
        kind = rng.random()
        d = rng.choice(dir_list)
        if kind < 0.75:
            data = text(rng, vocab, int(rng.gauss(2048, 600)) or 1)
            name = f"{d}/f{i:05d}.rb"
        elif kind < 0.99:
            half = max(1, int(rng.gauss(5120, 1200)) // 2)
            data = text(rng, vocab, half) + rng.randbytes(half)
            name = f"{d}/m{i:05d}.dat"
        else:
            data = rng.randbytes(max(1, int(rng.gauss(163840, 30000))))
            name = f"{d}/a{i:05d}.png"
        mode = 0o755 if i % 97 == 0 else 0o644
        entries.append([name, data, BASE_MTIME + rng.randint(0, 10_000_000), mode])
    return dir_list, entries


def write_tar(path, dir_list, entries):
    # Members in the order `tar cf` writes them: each directory followed by
    # its contents.
    members = [(d.split("/"), None) for d in dir_list]
    members += [(e[0].split("/"), e) for e in entries]
    members.sort(key=lambda m: m[0])
    with open(path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for parts, entry in members:
                    info = tarfile.TarInfo("/".join(parts))
                    if entry is None:
                        info.type = tarfile.DIRTYPE
                        info.mode = 0o755
                        info.mtime = BASE_MTIME
                        tar.addfile(info)
                    else:
                        _, data, mtime, mode = entry
                        info.size = len(data)
                        info.mtime = mtime
                        info.mode = mode
                        tar.addfile(info, io.BytesIO(data))


def write_tiny(path, n):
    with open(path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for i in range(n):
                    if i % 100 == 0:
                        info = tarfile.TarInfo(f"app/d{i // 100:05d}")
                        info.type = tarfile.DIRTYPE
                        info.mode = 0o755
                        info.mtime = BASE_MTIME
                        tar.addfile(info)
                    info = tarfile.TarInfo(f"app/d{i // 100:05d}/f{i:07d}.txt")
                    info.size = 1
                    info.mtime = BASE_MTIME
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(b"x"))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=20161105)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--dirs", type=int, default=2_000)
    ap.add_argument("--tiny", type=int, metavar="N")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.tiny:
        write_tiny(os.path.join(args.out, f"tiny-{args.tiny}.tar.gz"), args.tiny)
        return
    dir_list, entries = make_entries(args.seed, args.files, args.dirs)
    write_tar(os.path.join(args.out, "v1.tar.gz"), dir_list, entries)
    rng = random.Random(args.seed + 1)
    for i in rng.sample(range(len(entries)), len(entries) // 100):
        name, data, mtime, mode = entries[i]
        entries[i] = [name, rng.randbytes(8) + data[8:], mtime + 1000, mode]
    write_tar(os.path.join(args.out, "v2.tar.gz"), dir_list, entries)
    total = sum(len(e[1]) for e in entries)
    print(f"{len(entries)} files, {len(dir_list)} dirs, {total / 1e6:.0f} MB of content")


if __name__ == "__main__":
    main()
