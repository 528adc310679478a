"""What a run cost, end to end on the stand-in AWS through the CLI: the run records its
instance type and the catalogue's list price for it, it is billed from the `up` that created
the instance to the `destroy` that deleted it (as recorded in the store), and `dstack ps` and
`dstack cost` show price x that time. See test_cloud_runs_aws.py for the stand-in cloud."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.servers import ROOT
from tests.integration.standin_clouds import (
    AwsCloud,
    aws_cloud,  # noqa: F401
    baked_image,  # noqa: F401
    dstack_wheel,  # noqa: F401
    tls_cert,  # noqa: F401
)
from tests.integration.test_cloud_runs_aws import baked, nothing_left, submitted, user

pytestmark = pytest.mark.cloud  # the slowest tests: `-m "not cloud"` skips them

CATALOGUE = ROOT / "dstack" / "catalogue" / "data" / "instances.json"
INSTANCE = "aws:ec2/instance:Instance"


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def catalogue_entry(instance_type: str) -> tuple[dict[str, Any], str]:
    """The catalogue file's AWS entry for the type, and its prices' date: read here, not
    through dstack."""
    doc = json.loads(CATALOGUE.read_text())
    [entry] = [e for e in doc["instances"] if e["cloud"] == "aws" and e["type"] == instance_type]
    return entry, doc["prices_as_of"]


def the_update(updates: list[dict[str, Any]], kind: str, op: str) -> dict[str, Any]:
    """The one recorded update of `kind` that did `op` to the run's instance."""
    [found] = [u for u in updates if u["kind"] == kind and
               any(c["op"] == op and c["type"] == INSTANCE for c in u["changes"])]
    return found


@pytest.mark.timeout(900)
def test_a_cloud_run_costs_its_list_price_from_instance_creation_to_deletion(
        home: Path, tmp_path: Path, aws_cloud: AwsCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, aws_cloud)
    baked(dstack, baked_image, dstack_wheel)
    name = submitted(dstack("run", "quick", timeout=600).stderr)

    # The record: the instance's type and the catalogue's on-demand price for it.
    record = dstack.record(name)
    billing = record["billing"]
    entry, prices_as_of = catalogue_entry(record["instance"]["type"])
    assert billing["instance_type"] == record["instance"]["type"]
    assert billing["spot"] is False
    assert billing["price_per_hour"] == record["price_per_hour"] == entry["price"]
    assert billing["price_date"] == prices_as_of

    # Billed from the `up` that created the instance to the `destroy` that deleted it.
    updates = json.loads(aws_cloud.read(f"runs/{name}/stack.json"))["updates"]
    created = the_update(updates, "up", "create")["at"]
    deleted = the_update(updates, "destroy", "delete")["at"]
    assert (billing["created_at"], billing["deleted_at"]) == (created, deleted)
    billed_s = ts(deleted) - ts(created)
    assert billed_s > 0
    expected = entry["price"] * billed_s / 3600

    # `ps` shows price x that time, and it no longer grows: the instance is gone.
    [row] = dstack.ps(name)
    assert row["cost"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    header, line = dstack("ps", name).stdout.splitlines()
    shown = "<$0.01" if expected < 0.005 else f"${expected:,.2f}"
    assert line[header.index(" COST ") + 1:].split()[0] == shown  # its column

    # `dstack cost` sums it, says it is an estimate and of which catalogue.
    report = dstack.json("cost", "--by", "workflow")
    [group] = report["groups"]
    assert (group["key"], group["runs"], group["priced"], group["running"]) == \
        ("quick", 1, 1, 0)
    assert group["cost"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert group["billed_s"] == pytest.approx(billed_s, abs=1e-6)
    assert report["total"]["cost"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert report["price_dates"] == [prices_as_of]
    assert "estimate" in report["estimate"] and prices_as_of in report["estimate"]
    table = dstack("cost", "--by", "user", "--since", "1h").stdout
    assert "estimate" in table and prices_as_of in table
    nothing_left(aws_cloud)
