"""Scenario 2: how fast `ArtifactSync` moves a job's artifacts, against plain tools.

A mix of a few large files and many small ones (random 1 MiB blocks, repeated: fast to
write, not compressible) is generated once. It is synced by
`dstack.store.artifact_sync.ArtifactSync` (its thread pool, `UPLOAD_THREADS`) to a
`LocalStore` against `cp -r` of the same tree, and to an `S3Store` on moto (loopback)
against boto3's `upload_file` with the store's own `TransferConfig`, `UPLOAD_THREADS` files
at a time. Every pass writes into an empty destination; the order of the two tools
alternates, dstack first in the first pass. The page cache is not dropped: the first pass
("cold-ish") reads a tree that was just written and synced to disk (likely still cached);
later passes are warm. The freshness of artifacts while a job runs is measured by
`bench.freshness`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench import freshness
from bench.command import BenchError
from bench.config import Config
from bench.homes import log
from bench.machine import meminfo_mib
from bench.s3server import BUCKET, MotoServer, fake_aws_env
from bench.stats import Section, Target, fmt
from dstack.store.artifact_sync import UPLOAD_THREADS, ArtifactSync
from dstack.store.local import LocalStore

MIB = 1 << 20
RATIO_TARGET_PCT = 90.0
S3_WARM_PASSES_MAX = 2


@dataclass(frozen=True)
class Mix:
    """A tree of `large` files of `large_mib` MiB and `small` files of `small_kib` KiB."""

    large: int
    large_mib: int
    small: int
    small_kib: int

    @property
    def total_bytes(self) -> int:
        """The size of the whole tree."""
        return self.large * self.large_mib * MIB + self.small * self.small_kib * 1024

    def describe(self) -> str:
        """E.g. `4 x 200 MiB + 1000 x 200 KiB (995 MiB)`."""
        return (f"{self.large} x {self.large_mib} MiB + {self.small} x {self.small_kib} KiB "
                f"({self.total_bytes / MIB:.0f} MiB)")


FULL_MIX = Mix(large=4, large_mib=200, small=1000, small_kib=200)
QUICK_MIX = Mix(large=4, large_mib=16, small=100, small_kib=200)


def generate(root: Path, mix: Mix) -> list[tuple[str, Path]]:
    """Write the mix under `root/data`; return (path relative to root, file) pairs."""
    blocks = [os.urandom(MIB) for _ in range(16)]
    files: list[tuple[str, Path]] = []
    data = root / "data"
    data.mkdir(parents=True)
    for i in range(mix.large):
        path = data / f"large-{i}.bin"
        with open(path, "wb") as f:
            for j in range(mix.large_mib):
                f.write(blocks[(i * 7 + j) % len(blocks)])
        files.append((path.relative_to(root).as_posix(), path))
    size = mix.small_kib * 1024
    for i in range(mix.small):
        folder = data / "small" / f"{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        block = blocks[i % len(blocks)]
        offset = (i * 4099) % (len(block) - size)
        path = folder / f"s-{i:04d}.bin"
        path.write_bytes(block[offset:offset + size])
        files.append((path.relative_to(root).as_posix(), path))
    os.sync()
    return files


def _tree_bytes(root: Path) -> int:
    return sum((Path(d) / n).stat().st_size for d, _dirs, names in os.walk(root) for n in names)


def _local_pass(tool: str, src: Path, dest: Path, expect: int) -> float:
    """One copy of `src/data` into the empty `dest` by `tool`; seconds."""
    os.sync()  # earlier passes' dirty pages do not slow this one down
    if tool == "dstack":
        sync = ArtifactSync(LocalStore(dest), "bench-run", src, ["data"])
        t0 = time.perf_counter()
        sync.sync()
        seconds = time.perf_counter() - t0
    else:
        dest.mkdir()
        t0 = time.perf_counter()
        subprocess.run(["cp", "-r", str(src / "data"), str(dest / "data")], check=True,
                       timeout=900)
        seconds = time.perf_counter() - t0
    got = _tree_bytes(dest)
    shutil.rmtree(dest)
    if got != expect:
        raise BenchError(f"{tool} copied {got} bytes, not {expect}")
    return seconds


def _s3_pass(tool: str, server: MotoServer, src: Path, paths: list[str],
             files: list[tuple[str, Path]], n: int) -> float:
    """One upload of `files` to moto by `tool`; seconds."""
    from boto3.s3.transfer import TransferConfig

    from dstack.store.s3 import CONCURRENCY, MULTIPART_THRESHOLD, PART_SIZE, S3Store

    if tool == "dstack":
        store = S3Store(BUCKET, "dstack", endpoint_url=server.url, region="us-east-1")
        sync = ArtifactSync(store, f"bench-{n}", src, paths)
        t0 = time.perf_counter()
        sync.sync()
        seconds = time.perf_counter() - t0
    else:
        client = server.client(max_pool=4 * CONCURRENCY)  # as the store's client
        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                                multipart_chunksize=PART_SIZE, max_concurrency=CONCURRENCY,
                                use_threads=True)

        def upload(item: tuple[str, Path]) -> None:
            client.upload_file(str(item[1]), BUCKET, f"baseline/{n}/{item[0]}", Config=config)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            list(pool.map(upload, files))
        seconds = time.perf_counter() - t0
    listed = sum(len(p.get("Contents", [])) for p in server.client().get_paginator(
        "list_objects_v2").paginate(Bucket=BUCKET))
    server.empty_bucket()
    if listed != len(files):
        raise BenchError(f"{tool} left {listed} objects in the bucket, not {len(files)}")
    return seconds


def _s3_subset(mix: Mix, files: list[tuple[str, Path]]
               ) -> tuple[list[str], list[tuple[str, Path]], str]:
    """The artifact paths and files for S3: all of them, or fewer large files when moto
    (which may hold ~3x what it receives while it assembles objects) could run short of
    memory."""
    avail = meminfo_mib().get("MemAvailable", 0.0)
    small_mib = mix.small * mix.small_kib / 1024
    large = mix.large
    while large > 0 and 3 * (small_mib + large * mix.large_mib) + 1024 > avail:
        large -= 1
    chosen = [f for f in files if not f[0].startswith("data/large-") or
              int(f[0][len("data/large-"):-len(".bin")]) < large]
    paths = ["data/small", *(f"data/large-{i}.bin" for i in range(large))]
    note = "" if large == mix.large else (
        f"S3 used {large} of the {mix.large} large files: only {avail:.0f} MiB of memory was "
        f"available, and moto may hold ~3x what it receives.")
    return paths, chosen, note


def _mibs(total: int, seconds: list[float]) -> list[float]:
    return [total / MIB / s for s in seconds]


def measure(cfg: Config) -> Section:
    """Run the artifact scenarios (local, S3, freshness) and return their section."""
    sec = Section("artifacts", "2. Artifacts: throughput and freshness")
    mix = QUICK_MIX if cfg.quick else FULL_MIX
    passes = cfg.repeat + 1
    tmp = Path(tempfile.mkdtemp(prefix="dstack-bench-artifacts-", dir=cfg.base))
    try:
        log(f"artifacts: generating {mix.describe()}")
        t0 = time.perf_counter()
        files = generate(tmp / "src", mix)
        total = mix.total_bytes
        sec.notes.append(f"Artifact mix: {mix.describe()}, generated in "
                         f"{time.perf_counter() - t0:.1f} s (including `sync`).")
        local: dict[str, list[float]] = {"dstack": [], "cp": []}
        for p in range(passes):
            log(f"artifacts: local pass {p + 1}/{passes}")
            for tool in (("dstack", "cp") if p % 2 == 0 else ("cp", "dstack")):
                local[tool].append(_local_pass(tool, tmp / "src", tmp / f"dest-{tool}", total))
        d_tp, c_tp = _mibs(total, local["dstack"]), _mibs(total, local["cp"])
        sec.add("local: ArtifactSync → LocalStore, cold-ish (first pass)", "MiB/s", d_tp[:1])
        sec.add("local: `cp -r`, cold-ish (first pass)", "MiB/s", c_tp[:1])
        sec.add("local: ArtifactSync / `cp -r` throughput, cold-ish", "%",
                [100 * d_tp[0] / c_tp[0]], Target(RATIO_TARGET_PCT, higher=True))
        sec.add("local: ArtifactSync → LocalStore, warm", "MiB/s", d_tp[1:])
        sec.add("local: `cp -r`, warm", "MiB/s", c_tp[1:])
        sec.add("local: ArtifactSync / `cp -r` throughput, warm (paired by pass)", "%",
                [100 * d / c for d, c in zip(d_tp[1:], c_tp[1:], strict=True)],
                Target(RATIO_TARGET_PCT, higher=True))

        s3_passes = min(cfg.repeat, S3_WARM_PASSES_MAX) + 1
        paths, chosen, note = _s3_subset(mix, files)
        s3_total = sum(p.stat().st_size for _rel, p in chosen)
        if note:
            sec.notes.append(note)
        s3: dict[str, list[float]] = {"dstack": [], "boto3": []}
        with fake_aws_env(tmp), MotoServer(tmp) as server:
            for p in range(s3_passes):
                log(f"artifacts: S3 (moto) pass {p + 1}/{s3_passes}")
                for tool in (("dstack", "boto3") if p % 2 == 0 else ("boto3", "dstack")):
                    s3[tool].append(_s3_pass(tool, server, tmp / "src", paths, chosen, p))
            moto_peak = server.peak_rss_mib()
        d3, b3 = _mibs(s3_total, s3["dstack"]), _mibs(s3_total, s3["boto3"])
        warm = slice(1, None) if s3_passes > 1 else slice(None)
        sec.add("S3 (moto): ArtifactSync → S3Store, warm", "MiB/s", d3[warm])
        sec.add("S3 (moto): boto3 `upload_file`, same TransferConfig and threads, warm",
                "MiB/s", b3[warm])
        sec.add("S3 (moto): ArtifactSync / boto3 throughput (paired by pass)", "%",
                [100 * d / b for d, b in zip(d3[warm], b3[warm], strict=True)],
                Target(RATIO_TARGET_PCT, higher=True))
        if moto_peak is not None:
            sec.add("S3 (moto): server's peak memory", "MiB", [moto_peak])
        sec.detail("Every pass (seconds; pass 1 is cold-ish)",
                   ["copy", *(f"pass {i + 1}" for i in range(passes))],
                   [["local: ArtifactSync", *(fmt(s) for s in local["dstack"])],
                    ["local: cp -r", *(fmt(s) for s in local["cp"])],
                    ["S3: ArtifactSync", *(fmt(s) for s in s3["dstack"])],
                    ["S3: boto3 upload_file", *(fmt(s) for s in s3["boto3"])]])
        sec.notes.append(
            f"S3 passes moved {s3_total / MIB:.0f} MiB each. ArtifactSync records each "
            f"file's SHA-256 (the store's integrity check): a file under the multipart "
            f"threshold is read once and sent in one PUT, a larger one is read once more to "
            f"hash it before its multipart upload; the boto3 baseline hashes nothing. moto "
            f"shares the machine's {os.cpu_count()} cores with the client.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    freshness.measure(cfg, sec)
    return sec
