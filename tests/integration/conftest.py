"""Fixtures of the integration tests: after every test, no run stack holds resources and no
runner or job process of the test's dstack home is left (`no_leftovers`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import HOMES_IN_TEST, check_no_leftovers, make_home

# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test: no run stack holds resources, no runner or job process is left."""
    HOMES_IN_TEST.clear()
    own_home = Path(request.getfixturevalue("home")) if "home" in request.fixturenames else None
    yield
    homes = set(HOMES_IN_TEST) | ({own_home} if own_home else set())
    problems = [f"{home}: {p}" for home in sorted(homes) for p in check_no_leftovers(home)]
    HOMES_IN_TEST.clear()
    if problems:
        pytest.fail("left behind after the test:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dstack home shared by the tests of one module (its workspace stack is made once)."""
    return make_home(tmp_path_factory.mktemp("shared") / "dstack-home")
