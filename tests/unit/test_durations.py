"""How long a run took (`dstack.durations`), as `dstack ps` computes and shows it, and the
URL of a cloud run's app (`dstack.run.record.public_url`)."""

from __future__ import annotations

from datetime import datetime

import pytest

from dstack.durations import elapsed_s, format_elapsed
from dstack.run.listing import run_summary
from dstack.run.record import public_url

T0 = "2024-05-01T10:00:00.000+00:00"
T1 = "2024-05-01T10:03:07.500+00:00"


def test_elapsed_is_from_start_to_end_or_now() -> None:
    assert elapsed_s(T0, T1, now=0.0) == 187.5
    start = datetime.fromisoformat(T0).timestamp()
    assert elapsed_s(T0, None, now=start + 42) == 42
    assert elapsed_s(T1, T0, now=0.0) == 0.0  # a clock that went back is no negative time


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, ""), (0.0, "0.0s"), (4.24, "4.2s"), (59.9, "59.9s"), (60, "1m00s"),
     (187.5, "3m07s"), (3599, "59m59s"), (3600, "1h00m"), (7500, "2h05m")],
)
def test_format_elapsed(seconds: float | None, text: str) -> None:
    assert format_elapsed(seconds) == text


def test_a_listed_run_has_its_duration_and_its_apps_public_urls() -> None:
    doc = {"name": "r", "status": "running", "submitted_at": T0, "started_at": T0,
           "instance": {"public_ip": "198.51.100.7"},
           "apps": [{"name": "lab", "port": 8000, "url": "http://0.0.0.0:8000/lab"}]}
    start = datetime.fromisoformat(T0).timestamp()
    shown = run_summary(doc, [], now=start + 12.34)
    assert shown["duration"] == 12.3
    assert shown["apps"] == ["http://198.51.100.7:8000/lab"]
    assert run_summary({**doc, "status": "done", "finished_at": T1}, [], 0.0)["apps"] == []
    assert run_summary({"name": "r"}, [], 0.0)["duration"] is None


def test_an_apps_url_names_the_instance_only_for_a_cloud_run() -> None:
    assert public_url("http://0.0.0.0:8000/?tkn=x", "203.0.113.9") == \
        "http://203.0.113.9:8000/?tkn=x"
    assert public_url("http://127.0.0.1:8000/", None) == "http://127.0.0.1:8000/"
    assert public_url("http://0.0.0.0:8000/", None) == "http://0.0.0.0:8000/"
