"""What runs cost (`dstack.run.billing`, `dstack.run.cost`): a cloud run's list price times the
time from the `up` that created its instance to the `destroy` that deleted it (to now while it
is up), as `dstack ps` shows it and `dstack cost` sums it by user, workflow or day."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dstack.catalogue.offers import load_catalogue
from dstack.config.backends import ResourceChange
from dstack.durations import duration_s
from dstack.errors import UsageError
from dstack.run import listing
from dstack.run.audit import record_update, recorded_updates
from dstack.run.billing import (
    Billing,
    billed_interval,
    format_cost,
    open_billing,
    priced_fields,
    run_cost,
)
from dstack.run.cost import (
    check_grouping,
    closed_billing,
    cost_report,
    since_time,
    summarize,
)
from dstack.run.job import Job
from dstack.run.listing import run_summary
from dstack.run.record import RunRecord, load_run, update_run
from dstack.store.keys import run_key
from dstack.store.local import LocalStore

T0 = "2024-05-01T10:00:00.000+00:00"
T1 = "2024-05-01T10:30:00.000+00:00"  # 30 minutes later
DAY = 86400.0
AWS_INSTANCE = {"cloud": "aws", "id": "i-1", "type": "g5.xlarge", "region": "us-east-1",
                "price_per_hour": 1.006, "spot": False}


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def billing(price: float = 2.0, created: str = T0, deleted: str | None = T1,
            spot: bool = False) -> dict[str, Any]:
    return Billing(instance_type="g5.xlarge", spot=spot, price_per_hour=price,
                   price_date="2025-05-01", created_at=created,
                   deleted_at=deleted).model_dump()


def doc(name: str, *, owner: str | None = "alice", workflow: str | None = "train",
        submitted: str = T0, bill: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "owner": owner, "workflow": workflow, "provider": "python",
            "status": "done", "submitted_at": submitted, "billing": bill}


def up(at: str, *ops: str) -> dict[str, Any]:
    return {"kind": "up", "at": at, "changes": [{"op": o, "type": "t", "name": "n"} for o in ops]}


def destroy(at: str, *ops: str) -> dict[str, Any]:
    return {**up(at, *ops), "kind": "destroy"}


# -- the billed time and its price ----------------------------------------------------------


def test_billed_from_the_up_that_created_to_the_destroy_that_deleted() -> None:
    assert billed_interval([up(T0, "create", "create"), destroy(T1, "delete")]) == (T0, T1)
    later = "2024-05-01T11:00:00.000+00:00"
    # a second destroy (a repair that found nothing) does not move the end
    assert billed_interval([up(T0, "create"), destroy(T1, "delete"), destroy(later)]) == \
        (T0, T1)
    # a destroy that deleted nothing counts only when none deleted anything
    assert billed_interval([up(T0, "create"), destroy(T1), destroy(later, "delete")]) == \
        (T0, later)
    assert billed_interval([up(T0, "create"), destroy(T1)]) == (T0, T1)
    assert billed_interval([up(T0, "create")]) == (T0, None)  # still up
    assert billed_interval([destroy(T1, "delete")]) == (None, None)  # never up
    assert billed_interval([]) == (None, None)


def test_cost_is_the_price_times_the_hours_billed() -> None:
    done = Billing.model_validate(billing(price=2.0))
    assert done.billed_s(now=0.0) == 1800
    assert done.cost(now=ts(T1) + 9999) == pytest.approx(1.0)  # the end is fixed
    running = Billing.model_validate(billing(price=3.6, deleted=None))
    assert running.billed_s(now=ts(T0) + 100) == 100
    assert running.cost(now=ts(T0) + 100) == pytest.approx(0.1)  # up to now


def test_a_cloud_instance_opens_its_billing_with_the_catalogues_price_and_date() -> None:
    opened = open_billing(AWS_INSTANCE, T0)
    assert opened is not None
    assert (opened.instance_type, opened.spot, opened.price_per_hour) == \
        ("g5.xlarge", False, 1.006)
    assert opened.price_date == load_catalogue().prices_as_of.isoformat()
    assert (opened.created_at, opened.deleted_at) == (T0, None)
    gcp = {"type": "n1-standard-4", "accelerator": "nvidia-tesla-t4", "gpus": 2,
           "price_per_hour": 1.1, "spot": True}
    opened = open_billing(gcp, T0)
    assert opened is not None and opened.spot
    assert opened.instance_type == "n1-standard-4 + 2xnvidia-tesla-t4"
    fields = priced_fields(AWS_INSTANCE, T0)
    assert fields["price_per_hour"] == 1.006
    assert Billing.model_validate(fields["billing"]).created_at == T0


@pytest.mark.parametrize("instance", [
    {},  # local: a runner process
    {"pod": "run-x", "namespace": "dstack", "host": "127.0.0.1"},  # Kubernetes
    {"type": "g5.xlarge", "price_per_hour": "$1.006"},  # a price as people read it
])
def test_an_instance_without_a_price_has_no_billing(instance: dict[str, Any]) -> None:
    assert open_billing(instance, T0) is None
    assert priced_fields(instance, T0) == {}


def test_ps_shows_the_cost_or_a_dash() -> None:
    assert run_summary(doc("a", bill=billing(price=2.0)), [], now=0.0)["cost"] == \
        pytest.approx(1.0)
    assert run_summary(doc("b"), [], now=0.0)["cost"] is None
    assert run_cost({"name": "old"}, 0.0) is None  # a record from before billing
    assert [format_cost(c) for c in (None, 0.0, 0.004, 0.42, 0.425, 1234.5)] == \
        ["\N{EM DASH}", "$0.00", "<$0.01", "$0.42", "$0.42", "$1,234.50"]


# -- the report -----------------------------------------------------------------------------


def test_grouped_by_user_workflow_or_day_with_totals() -> None:
    day2 = "2024-05-02T23:30:00.000+00:00"
    docs = [
        doc("a", owner="alice", workflow="train", bill=billing(price=2.0)),  # $1.00
        doc("b", owner="bob", workflow="train", submitted=day2,
            bill=billing(price=4.0, created=day2, deleted="2024-05-03T00:15:00.000+00:00")),
        doc("c", owner="alice", workflow=None),  # a local run: no price
        doc("d", owner=None, workflow="prepare", bill=billing(price=0.5)),  # $0.25
    ]
    now = ts(day2) + DAY
    by_user = summarize(docs, "user", since=0.0, now=now)
    assert [(g["key"], g["runs"], g["priced"], round(g["cost"], 6))
            for g in by_user["groups"]] == \
        [("bob", 1, 1, 3.0), ("alice", 2, 1, 1.0), ("(unknown)", 1, 1, 0.25)]
    total = by_user["total"]
    assert (total["runs"], total["priced"], total["running"]) == (4, 3, 0)
    assert total["cost"] == pytest.approx(4.25)
    assert total["billed_s"] == 1800 + 2700 + 1800
    by_workflow = summarize(docs, "workflow", since=0.0, now=now)
    assert [(g["key"], round(g["cost"], 6)) for g in by_workflow["groups"]] == \
        [("train", 4.0), ("prepare", 0.25), ("(python)", 0.0)]
    by_day = summarize(docs, "day", since=0.0, now=now)
    assert [(g["key"], g["runs"], round(g["cost"], 6)) for g in by_day["groups"]] == \
        [("2024-05-01", 3, 1.25), ("2024-05-02", 1, 3.0)]  # by the UTC day it was submitted
    assert by_day["price_dates"] == ["2025-05-01"]
    assert "estimate" in by_day["estimate"].lower() and "2025-05-01" in by_day["estimate"]


def test_since_leaves_out_older_runs_and_a_running_one_costs_until_now() -> None:
    late = "2024-05-08T10:00:00.000+00:00"
    docs = [doc("old", bill=billing(price=2.0)),
            doc("new", submitted=late, bill=billing(price=3.6, created=late, deleted=None))]
    now = ts(late) + 100
    report = summarize(docs, "workflow", since=since_time("1d", now), now=now)
    [group] = report["groups"]
    assert (group["runs"], group["running"]) == (1, 1)
    assert group["cost"] == pytest.approx(0.1)
    assert report["since"] == "2024-05-07T10:01:40+00:00"
    assert summarize(docs, "workflow", since=since_time("30d", now), now=now)["total"]["runs"] == 2
    empty = summarize([], "day", since=0.0, now=now)
    assert empty["groups"] == [] and empty["total"]["cost"] == 0
    assert load_catalogue().prices_as_of.isoformat() in empty["estimate"]


def test_bad_since_or_by_names_the_flag() -> None:
    assert since_time("7d", 10 * DAY) == 3 * DAY
    assert duration_s("12h") == 12 * 3600 and duration_s("1.5m") == 90
    assert duration_s("soon") is None
    for bad in ("soon", "7 days", "0", "-1d", ""):
        with pytest.raises(UsageError, match=r"^--since") as err:
            since_time(bad, 0.0)
        assert err.value.exit_code == 2 and "7d" in str(err.value.hint)
    with pytest.raises(UsageError, match=r"^--by 'usr'") as err:
        check_grouping("usr")
    assert err.value.hint == 'Did you mean "user"?'
    with pytest.raises(UsageError, match=r"^--by"):
        summarize([], "owner", 0.0, 0.0)
    assert all(check_grouping(g) == g for g in ("user", "workflow", "day"))


# -- on a store: the billing a run records, closed from the recorded updates ----------------


def make_run(store: LocalStore, name: str, **fields: Any) -> RunRecord:
    record = RunRecord(name=name, provider="bash", profile="aws", backend="aws",
                       job=Job(provider="bash"), stack=f"run-{name}", **fields)
    assert store.create_json(run_key(name), record.model_dump(mode="json"))
    return record


def test_a_runs_billing_closes_at_the_recorded_destroy(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    make_run(store, "brave-otter-1", workflow="train", owner="alice")
    created = record_update(store, "brave-otter-1", "up",
                            [ResourceChange("create", "aws:ec2/instance:Instance", "vm")])
    update_run(store, "brave-otter-1", instance=AWS_INSTANCE,
               **priced_fields(AWS_INSTANCE, created))
    assert closed_billing(store, "brave-otter-1") == {}  # not destroyed yet
    update_run(store, "brave-otter-1", status="done")  # billing still changes once finished
    deleted = record_update(store, "brave-otter-1", "destroy",
                            [ResourceChange("delete", "aws:ec2/instance:Instance", "vm")])
    update_run(store, "brave-otter-1", torn_down=True,
               **closed_billing(store, "brave-otter-1"))
    run = load_run(store, "brave-otter-1")
    assert run.billing is not None and run.price_per_hour == 1.006
    assert (run.billing.created_at, run.billing.deleted_at) == (created, deleted)
    assert [u["at"] for u in recorded_updates(store, "brave-otter-1")] == [created, deleted]
    record_update(store, "brave-otter-1", "destroy", [])  # a later repair changes nothing
    assert closed_billing(store, "brave-otter-1") == {}
    assert closed_billing(store, "no-such-run") == {}

    # `dstack cost` on the store, also from the listing cache (settled runs keep their
    # owner and billing there)
    make_run(store, "calm-fox-2", workflow="prepare", owner="bob")  # no price
    cache = tmp_path / "listing.json"
    listing._loaded.clear()
    for _ in range(2):
        report = cost_report(store, since=0.0, by="user", now=ts(deleted) + DAY, cache=cache)
        assert [(g["key"], g["runs"], g["priced"]) for g in report["groups"]] == \
            [("alice", 1, 1), ("bob", 1, 0)]
        expected = 1.006 * (ts(deleted) - ts(created)) / 3600
        assert report["total"]["cost"] == pytest.approx(expected)
        listing._loaded.clear()
    cached = json.loads(cache.read_text())["runs"]["brave-otter-1"]
    assert cached["owner"] == "alice" and cached["billing"]["deleted_at"] == deleted


def test_an_older_record_without_billing_is_still_valid(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    make_run(store, "old-run-1")
    doc_ = store.get_json(run_key("old-run-1"))
    for key in ("billing", "owner"):
        doc_.pop(key, None)
    store.put_json(run_key("old-run-1"), doc_)
    run = load_run(store, "old-run-1")
    assert run.billing is None and run.price_per_hour is None
