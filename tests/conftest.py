"""Shared fixtures: a private dstack home per test that reuses the installed engine."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.home import dstack_home
from dstack.stacks.engine_install import PULUMI_VERSION, engine_root, is_installed

INSTALLED_HOME = dstack_home()


REAL_NODES = "test_kubernetes_real.py"
"""The real-node tests: run by `make test-real-nodes` (`--real-nodes`), not by `make test`."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--real-nodes", action="store_true",
                     help="Also collect the real-node Kubernetes tests (root; containerd).")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave the real-node tests out unless `--real-nodes` asks for them."""
    if collection_path.name == REAL_NODES and not config.getoption("--real-nodes"):
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Run the suite as from a terminal: with SIGINT ignored (a suite a script started in
    the background, `make test &`), every `dstack` it starts would ignore Ctrl-C too, and
    the tests of what Ctrl-C does would test the shell."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Collect garbage before the plugins' end-of-session work. An engine call that failed
    leaves its inline program's coroutine suspended (Pulumi's language server stops its loop
    on the engine's RPC error); finalized later inside an `ast` compile (the hypothesis
    plugin imports at session end, with assertion rewriting), CPython 3.11 fails that compile
    with "AST constructor recursion depth mismatch" and pytest exits 1."""
    gc.collect()


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
