"""Every registered backend is one shape: the `Backend` protocol, built from a profile and the
dstack home (mypy checks the same statically, in each backend module)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from dstack.config.backends import BACKENDS, Backend, load_backend
from dstack.config.profiles import Profile

SETTINGS = {"local": {}, "aws": {"region": "us-east-1"},
            "gcp": {"project": "p", "zone": "us-central1-a"},
            "kubernetes": {"kubeconfig": "/nonexistent", "store_url": "s3://b"}}


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_a_backend_does_everything_the_protocol_names(name: str, tmp_path: Path) -> None:
    backend = load_backend(Profile(name="p", backend=name, settings=SETTINGS[name]), tmp_path)
    assert isinstance(backend, Backend) and backend.name == name
    for member, wanted in vars(Backend).items():
        if inspect.isfunction(wanted) and not member.startswith("_"):
            have = inspect.signature(getattr(backend, member)).parameters
            assert list(have) == list(inspect.signature(wanted).parameters)[1:], member
