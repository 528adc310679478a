"""Benchmarks of dstack: how fast it starts a job, moves artifacts, and scales.

`python -m bench [--quick] [--only overhead,artifacts,scale] [--repeat N]` (`make bench`)
runs the scenarios against the real CLI, the real Pulumi engine and real servers on
loopback, and writes `bench/RESULTS.md`: medians (with min and max) over repeated runs,
the machine and versions, and each target with a pass/miss verdict. Nothing here asserts a
timing; the benchmark reports.

Modules: `stats` (measurements, targets, sections), `command` (subprocesses with
timestamped output and peak memory), `homes` (throw-away dstack homes and clean-up),
`machine` (what ran it), `overhead`, `artifacts`, `freshness`, `s3server`, `scale` (the
scenarios), `report` (the markdown).
"""
