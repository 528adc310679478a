"""`python -m bench.runner_install [--repeat N] [--tmp DIR]`: what a fresh remote machine pays
before its runner starts, with the whole wheel's dependencies ("before") and with the wheel
`--no-deps` plus the runner's requirements ("after").

Bytes: `pip download --no-cache-dir` of each requirement set into an empty folder (this
machine's platform and Python), summed. Time: from `python -m venv` of a fresh venv, through
`pip install --upgrade pip` and the installs (no cache, no local wheel folder: pip fetches
from the package index as a user's pip would), to the runner's first job output line in a
local folder store; the job is one `echo`. Prints a markdown section; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

from dstack.run.job import Job
from dstack.run.record import RunRecord, Status, load_run
from dstack.runner.requirements import runner_requirements
from dstack.stacks.wheel import build_wheel, source_root
from dstack.store.job_log import read_log_text
from dstack.store.keys import run_key
from dstack.store.local import LocalStore

MARK = "first-line-of-the-job"
PIP = ["-m", "pip", "--disable-pip-version-check", "-q"]


def pip_env() -> dict[str, str]:
    """This environment without the local wheel folder, so pip uses the package index."""
    return {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}


def full_requirements() -> list[str]:
    """pyproject.toml's dependencies: what `pip install <wheel>` brings."""
    root = source_root()
    assert root is not None, "run from the dstack checkout"
    doc = tomllib.loads((root / "pyproject.toml").read_text())
    return list(doc["project"]["dependencies"])


def download_bytes(requirements: list[str], tmp: Path) -> tuple[int, int]:
    """(bytes, files) `pip download` fetches for `requirements` into an empty folder."""
    folder = Path(tempfile.mkdtemp(dir=tmp))
    subprocess.run([sys.executable, *PIP, "download", "--no-cache-dir", "-d", str(folder),
                    *requirements], check=True, env=pip_env())
    files = [p for p in folder.iterdir() if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    shutil.rmtree(folder)
    return size, len(files)


def _store_with_run(root: Path) -> LocalStore:
    store = LocalStore(root)
    record = RunRecord(name="bench-run-1", provider="bash", profile="local", backend="local",
                       job=Job(provider="bash", shell=[f"echo {MARK}"]), stack="run-bench-run-1",
                       status=Status.PROVISIONING)
    store.put_json(run_key(record.name), record.model_dump(mode="json"))
    return store


def boot(mode: str, wheel: Path, tmp: Path) -> dict[str, float]:
    """One fresh venv to the job's first output line; seconds per phase and the venv's size."""
    work = Path(tempfile.mkdtemp(dir=tmp))
    venv, env = work / "venv", pip_env()
    py = str(venv / "bin" / "python")
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    t1 = time.monotonic()
    subprocess.run([py, *PIP, "install", "--no-cache-dir", "--upgrade", "pip"], check=True,
                   env=env)
    t2 = time.monotonic()
    if mode == "before":
        subprocess.run([py, *PIP, "install", "--no-cache-dir", str(wheel)], check=True, env=env)
    else:
        subprocess.run([py, *PIP, "install", "--no-cache-dir",
                        *runner_requirements("s3://bucket")], check=True, env=env)
        subprocess.run([py, *PIP, "install", "--no-cache-dir", "--no-deps", str(wheel)],
                       check=True, env=env)
    t3 = time.monotonic()
    store = _store_with_run(work / "store")
    runner = subprocess.Popen([py, "-m", "dstack.runner", "--store", store.url, "--run",
                               "bench-run-1", "--workdir", str(work / "run"), "--cache",
                               str(work / "cache")], cwd=work)
    while MARK not in read_log_text(store, "bench-run-1").decode(errors="replace"):
        if runner.poll() is not None and runner.returncode != 0:
            raise RuntimeError(f"the runner exited with {runner.returncode}")
        time.sleep(0.02)
    t4 = time.monotonic()
    runner.wait(timeout=120)
    assert load_run(store, "bench-run-1").status is Status.DONE
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    shutil.rmtree(work)
    return {"venv": t1 - t0, "pip": t2 - t1, "install": t3 - t2, "runner": t4 - t3,
            "total": t4 - t0, "venv_mb": size / 1e6}


def main(argv: list[str] | None = None) -> int:
    """Measure and print the markdown section."""
    parser = argparse.ArgumentParser(prog="python -m bench.runner_install")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=None)
    parser.add_argument("--only", choices=["bytes", "time"], default=None)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-runner-install-", dir=args.tmp))
    try:
        if args.only != "time":
            print("| requirement set | downloaded | files |\n|---|---|---|")
            for label, reqs in [("before: the wheel's dependencies", full_requirements()),
                                ("after, file:// store", list(runner_requirements("file:"))),
                                ("after, s3:// store", list(runner_requirements("s3:"))),
                                ("after, gs:// store", list(runner_requirements("gs:")))]:
                size, files = download_bytes(reqs, tmp)
                print(f"| {label} | {size / 1e6:.1f} MB | {files} |", flush=True)
        if args.only != "bytes":
            wheel = build_wheel(tmp / "wheel").path
            rows: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
            for _ in range(args.repeat):
                for mode in ("before", "after"):  # interleaved, so load drifts hit both
                    rows[mode].append(boot(mode, wheel, tmp))
                    print(mode, {k: round(v, 2) for k, v in rows[mode][-1].items()},
                          flush=True)
            print("\n| mode | venv s | pip upgrade s | install s | runner to first line s "
                  "| total s (min-max) | venv MB |\n|---|---|---|---|---|---|---|")
            for mode, runs in rows.items():
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                lo, hi = min(r["total"] for r in runs), max(r["total"] for r in runs)
                print(f"| {mode} | {med['venv']:.1f} | {med['pip']:.1f} | "
                      f"{med['install']:.1f} | {med['runner']:.2f} | {med['total']:.1f} "
                      f"({lo:.1f}-{hi:.1f}) | {med['venv_mb']:.0f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
