"""The wheel a cloud instance installs is this very dstack, under the one import name."""

from __future__ import annotations

import zipfile
from pathlib import Path

from dstack.stacks.wheel import build_wheel, source_digest, source_root


def test_wheel_holds_every_package_under_dstack_only(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel.path).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"dstack", f"dstack-{wheel.path.name.split('-')[1]}.dist-info"}
    for module in ("dstack/runner/job_runner.py", "dstack/runner/__main__.py",
                   "dstack/spec/models.py", "dstack/store/base.py", "dstack/run/record.py",
                   "dstack/code/archive.py", "dstack/config/profiles.py",
                   "dstack/stacks/engine.py", "dstack/providers/apps.py",
                   "dstack/cli/app.py", "dstack/catalogue/data/instances.json"):
        assert module in names
    assert wheel.store_key == f"wheels/{wheel.digest}/{wheel.path.name}"
    again = build_wheel(tmp_path)  # cached: the same file, not rebuilt
    assert again.path == wheel.path and again.path.stat().st_mtime == wheel.path.stat().st_mtime


def test_digest_follows_the_source(tmp_path: Path) -> None:
    root = source_root()
    assert root is not None
    digest = source_digest(root)
    assert digest == source_digest(root)
    copy = tmp_path / "copy"
    for rel in ["pyproject.toml", "dstack/__init__.py", "stacks/__init__.py",
                "providers/__init__.py", "cli/__init__.py"]:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes((root / rel).read_bytes())
    before = source_digest(copy)
    (copy / "dstack" / "__init__.py").write_text("# changed\n")
    assert source_digest(copy) != before
