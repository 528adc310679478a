"""The one lazy loader behind the registries (`dstack.lazy`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dstack.lazy import load_class, load_target


def test_a_target_is_imported_only_when_loaded() -> None:
    code = (
        "import sys\n"
        "from dstack.lazy import load_class\n"
        "from dstack.store.base import STORES, Store\n"
        "target = STORES['s3']\n"
        "assert 'dstack.store.s3' not in sys.modules and 'boto3' not in sys.modules\n"
        "assert load_class(target, Store).__name__ == 'S3Store'\n"
        "assert 'dstack.store.s3' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_class_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(TypeError, match="LocalStore is not a subclass of int"):
        load_class("dstack.store.local:LocalStore", int)


@pytest.mark.parametrize("target", ["dstack.store.local", ":LocalStore", "dstack.store.local:"])
def test_a_malformed_target_is_a_programming_error(target: str) -> None:
    with pytest.raises(ValueError, match="module:attribute"):
        load_target(target)
