"""Slugs (`dstack.names.slug`): cloud-safe name parts, and bucket names that stay distinct."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstack.config.cloud_profiles import _bucket_name
from dstack.names import slug


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("wise-cat-1", 63, "wise-cat-1"),
        ("Train.Big", 63, "train-big"),
        ("--a__b--", 63, "a-b"),
        ("a  -  b", 63, "a-b"),
        ("abcdef-ghi", 7, "abcdef"),  # cut, then no trailing "-"
        ("!!!", 63, "x"),
        ("", 63, "x"),
    ],
)
def test_a_slug_is_lowercase_letters_digits_and_single_dashes(text: str, limit: int,
                                                              expected: str) -> None:
    assert slug(text, limit) == expected


@given(st.text(max_size=80), st.integers(min_value=1, max_value=63))
def test_every_slug_is_cloud_safe(text: str, limit: int) -> None:
    out = slug(text, limit)
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", out) and len(out) <= limit
    assert "--" not in out


def test_without_squeezing_a_name_stays_distinct() -> None:
    assert slug("a--b", squeeze=False) == "a--b" and slug("a--b") == "a-b"
    assert _bucket_name(["dstack", "my--proj", "prod"]) != \
        _bucket_name(["dstack", "my-proj", "prod"])
    assert _bucket_name(["dstack", "123456789012", "us-east-1", "gpu"]) == \
        "dstack-123456789012-us-east-1-gpu"
    assert len(_bucket_name(["dstack", "x" * 80])) == 63
