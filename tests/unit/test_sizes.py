"""parse_size and format_size: units, decimals, bad values and their messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstack.errors import UsageError
from dstack.sizes import SizeError, format_decimal, format_size, format_written, parse_size

KIB, MIB, GIB, TIB = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16GB", 16 * 1000**3),
        ("16gb", 16 * 1000**3),
        ("16 GB", 16 * 1000**3),
        (" 16GB ", 16 * 1000**3),
        ("512MB", 512 * 1000**2),
        ("1KB", 1000),
        ("2TB", 2 * 1000**4),
        ("1.5GB", 1_500_000_000),
        ("16GiB", 16 * GIB),
        ("16gib", 16 * GIB),
        ("1.5TiB", 3 * TIB // 2),
        ("512MiB", 512 * MIB),
        ("4KiB", 4 * KIB),
        ("8G", 8 * GIB),
        ("8g", 8 * GIB),
        ("512m", 512 * MIB),
        ("1k", KIB),
        ("1T", TIB),
        ("0.5G", GIB // 2),
        (".5G", GIB // 2),
        ("100B", 100),
        ("100b", 100),
        ("0B", 0),
        (1024, 1024),
        (0, 0),
    ],
)
def test_parse_size_reads_units(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("12XB", 'unknown unit "XB"'),
        ("lots", '"lots"'),
        ("", '""'),
        ("GB", '"GB"'),
        ("-1GB", '"-1GB"'),
        ("1.5B", "not a whole number of bytes"),
        ("0.3B", "not a whole number of bytes"),
        ("1,5GB", '"1,5GB"'),
        ("1e9", '"1e9"'),
        ("16 G B", '"16 G B"'),
    ],
)
def test_parse_size_rejects_bad_text_naming_it(value: str, fragment: str) -> None:
    with pytest.raises(SizeError) as caught:
        parse_size(value)
    message = str(caught.value)
    assert fragment in message
    assert "16GB" in message  # an example of a good value


@pytest.mark.parametrize("value", ["16", "1024", "0", "1.5", " 16 ", ".5"])
def test_a_size_without_a_unit_is_refused_listing_the_forms(value: str) -> None:
    # `--memory 16` meant 16 bytes until a unit became required; bytes are written `16B`.
    with pytest.raises(SizeError) as caught:
        parse_size(value)
    message = str(caught.value)
    assert f'invalid size "{value}"' in message and "needs a unit" in message
    for form in ("16GB", "512MB", "1.5TB", "16GiB"):
        assert form in message


@pytest.mark.parametrize("value", [True, False, 1.5, None, [16], -1])
def test_parse_size_rejects_other_types_and_negatives(value: object) -> None:
    with pytest.raises(SizeError, match="16GB"):
        parse_size(value)  # type: ignore[arg-type]


def test_size_error_is_a_usage_error_and_a_value_error() -> None:
    with pytest.raises(SizeError) as caught:
        parse_size("12XB")
    assert isinstance(caught.value, UsageError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (512, "512B"),
        (KIB, "1KiB"),
        (1536, "1.5KiB"),
        (16 * GIB, "16GiB"),
        (3 * TIB // 2, "1.5TiB"),
        (100 * MIB, "100MiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(min_value=1, max_value=1023), st.sampled_from(["KiB", "MiB", "GiB", "TiB"]))
def test_whole_binary_sizes_round_trip(count: int, unit: str) -> None:
    assert format_size(parse_size(f"{count}{unit}")) == f"{count}{unit}"
    assert parse_size(f"{count}{unit[0]}") == parse_size(f"{count}{unit}")


@pytest.mark.parametrize(
    ("size", "text"),
    [(512, "512 B"), (116_100, "116.1 kB"), (999_960, "1.0 MB"), (500 * 1000**2, "500.0 MB"),
     (2 * 1000**4, "2.0 TB")],
)
def test_format_decimal(size: int, text: str) -> None:
    assert format_decimal(size) == text


def test_format_decimal_in_one_unit_separates_thousands() -> None:
    assert format_decimal(100 * 1000**4, "GB") == "100,000.0 GB"
    assert format_decimal(16 * GIB, "GB") == "17.2 GB"
    assert format_decimal(512 * 1000**2, "GB") == "0.5 GB"


@pytest.mark.parametrize(
    ("size", "text"), [(16 * 1000**3, "16GB"), (80 * 1000**3, "80GB"), (16 * GIB, "16GiB"),
                       (512 * MIB, "512MiB")],
)
def test_format_written_keeps_whole_decimal_gigabytes_as_written(size: int, text: str) -> None:
    assert format_written(size) == text
