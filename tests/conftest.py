"""Shared fixtures: a private dstack home per test that reuses the installed engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.home import dstack_home
from dstack.stacks.engine_install import PULUMI_VERSION, engine_root, is_installed

INSTALLED_HOME = dstack_home()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh DSTACK_HOME whose engine folder links to the one `make engine` installed."""
    if not is_installed(INSTALLED_HOME):
        pytest.fail(f"the Pulumi engine {PULUMI_VERSION} is not installed in "
                    f"{engine_root(INSTALLED_HOME)}: run `make engine` first")
    h = tmp_path / "dstack-home"
    (h / "engine").mkdir(parents=True)
    os.symlink(engine_root(INSTALLED_HOME), h / "engine" / PULUMI_VERSION)
    monkeypatch.setenv("DSTACK_HOME", str(h))
    yield h
