"""`print_json` writes exactly what `json.dumps(doc, indent=2, default=str)` writes, also
where it takes its fast way (a listing: dicts of the same keys whose values are scalars or
lists of scalars)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dstack.cli import output
from dstack.cli.output import _rows_json

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
                    st.sampled_from(["]\x00[", "[", "]", '"', "\\", "%s", "é", "\U0001f600"]))
values = st.one_of(scalars, st.lists(scalars, max_size=4))
keys = st.lists(st.text(max_size=6), min_size=1, max_size=6, unique=True)


@st.composite
def listings(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(keys)
    return draw(st.lists(st.fixed_dictionaries({k: values for k in names}), max_size=8))


@settings(max_examples=300, deadline=None)
@given(listings())
def test_a_listing_is_written_as_json_dumps_writes_it(rows: list[dict[str, Any]]) -> None:
    fast = _rows_json(rows)  # type: ignore[arg-type]
    assert fast is None or fast == json.dumps(rows, indent=2, default=str)
    same_keys = rows and all(tuple(r) == tuple(rows[0]) for r in rows)
    if same_keys and all(len({isinstance(r[k], list) for r in rows}) == 1 for k in rows[0]):
        assert fast is not None  # the fast way was taken: no column mixes lists and scalars


def test_a_run_listing_takes_the_fast_way() -> None:
    rows = [{"run": f"r-{i}", "tags": ["v1", "v2"][:i % 3], "cost": i / 3 or None,
             "exit_code": i, "ok": i % 2 == 0, "message": "a \"quoted\" line\n"}
            for i in range(50)]
    assert _rows_json(rows) == json.dumps(rows, indent=2, default=str)  # type: ignore[arg-type]


@pytest.mark.parametrize("doc", [
    [],
    [{}],
    [{"a": 1}, {"b": 1}],  # other keys
    [{"a": 1}, {"a": 1, "b": 2}],
    [{"a": {"b": 1}}],  # a nested dict
    [{"a": [[1]]}],  # a list of lists
    [{"a": (1, 2)}],  # a tuple, which JSON writes as a list
    [{1: "a"}],  # a key that is not a string
    [{"when": datetime(2024, 1, 1, tzinfo=timezone.utc), "tags": []}],  # default=str
    [1, 2],
    {"a": [1]},
])
def test_anything_else_is_written_the_usual_way(doc: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    output.print_json(doc)
    assert capsys.readouterr().out == json.dumps(doc, indent=2, default=str) + "\n"


@settings(max_examples=200, deadline=None)
@given(listings(), st.integers(min_value=1, max_value=3))
def test_a_listing_written_in_batches_is_what_print_json_writes(
        rows: list[dict[str, Any]], at_once: int) -> None:
    written: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(output, "ROWS_AT_ONCE", at_once)
        mp.setattr(output.sys, "stdout", _Collect(written))
        output.print_json_rows(iter(rows))
    assert "".join(written) == json.dumps(rows, indent=2, default=str) + "\n"


class _Collect:
    """A stdout that keeps what is written."""

    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, text: str) -> int:
        self.into.append(text)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("rows", [[], [{}], [{"a": 1}, {"b": [1]}, {"a": {"b": 1}}, [1], 2]])
def test_batches_of_other_rows_are_written_the_usual_way(
        rows: list[Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(output, "ROWS_AT_ONCE", 2)
    output.print_json_rows(rows)
    assert capsys.readouterr().out == json.dumps(rows, indent=2, default=str) + "\n"
