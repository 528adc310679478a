"""Artifact freshness: how soon a file a running job writes is in the store.

A real `dstack run -d` runs a job that writes a new file every 200 ms, each holding the
time it was written. Once the run is done, every store copy's mtime (the store writes a
temp file and renames it, so the mtime is when the copy arrived) minus that time is the
file's delay. Files written in the job's last half second arrive with the final sync.
"""

from __future__ import annotations

from bench.command import BenchError
from bench.config import Config
from bench.homes import BenchHome, log
from bench.stats import Section, Target, fmt, percentile

FRESHNESS_TARGET_S = 1.0
WRITE_EVERY_S = 0.2

WORKFLOWS = """
workflows:
  - name: fresh
    provider: python
    file: fresh.py
    artifacts: ["fresh"]
"""
FRESH_PY = f"""
    import os, sys, time
    os.makedirs("fresh", exist_ok=True)
    end = time.time() + float(sys.argv[1])
    i = 0
    while time.time() < end:
        t = time.time()
        with open(f"fresh/f-{{i:04d}}.txt", "w") as f:
            f.write(f"{{t:.6f}}\\n")
        i += 1
        time.sleep({WRITE_EVERY_S})
    print(f"wrote {{i}} files", flush=True)
"""


def measure(cfg: Config, sec: Section) -> None:
    """Run the freshness job once and add its delay distribution to `sec`."""
    duration = 3.0 if cfg.quick else 10.0
    with BenchHome("fresh", cfg.base, cfg.keep) as h:
        h.write_project(WORKFLOWS, {"fresh.py": FRESH_PY})
        log(f"artifacts: freshness, a detached run writing a file every "
            f"{WRITE_EVERY_S * 1000:.0f} ms for {duration:.0f} s")
        done = h.dstack("run", "fresh", "-d", "--", str(duration), timeout=300)
        name = done.out_text().strip().splitlines()[-1]
        doc = h.wait_finished(name, duration + 180)
        h.dstack("ps")  # the next command tears the finished run's stack down
        if doc["status"] != "done":
            raise BenchError(f"the freshness run ended {doc['status']}: {doc.get('message')}")
        log_text = b"".join(p.read_bytes() for p in
                            sorted((h.store / "runs" / name / "logs").glob("*.log"))).decode()
        wrote = next((int(line.split()[1]) for line in log_text.splitlines()
                      if line.startswith("wrote ")), None)
        delays = []
        for copy in sorted((h.store / "runs" / name / "artifacts" / "fresh").glob("f-*.txt")):
            delays.append(copy.stat().st_mtime - float(copy.read_text()))
        problems = h.leftovers()
    sec.add("freshness: delay from the job's write to the store copy", "s", delays,
            Target(FRESHNESS_TARGET_S, on="max"))
    sec.detail("Freshness: delay distribution (a file every 200 ms, a real detached run)",
               ["files written", "in the store", "median s", "p95 s", "max s", "min s"],
               [[str(wrote if wrote is not None else "?"), str(len(delays)),
                 fmt(percentile(delays, 50)), fmt(percentile(delays, 95)),
                 fmt(max(delays, default=float("nan"))),
                 fmt(min(delays, default=float("nan")))]])
    if problems:
        sec.notes.append("Freshness run left behind: " + "; ".join(problems))
