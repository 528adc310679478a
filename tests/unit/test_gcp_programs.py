"""The GCP programs under Pulumi's mocks (the gcp plugin cannot run without a cloud), and the
GCP backend's plan, startup script and provisioning with a stand-in engine."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest

from dstack.catalogue.offers import NoOfferError, choose_offer
from dstack.config.backends import BACKENDS, ResourceChange, load_backend
from dstack.config.profiles import Profile
from dstack.run.job import Job
from dstack.run.record import RunRecord
from dstack.spec.models import Resources
from dstack.stacks import caller
from dstack.stacks.gcp import GcpBackend
from dstack.stacks.gcp_programs import (
    CPU_IMAGE,
    GPU_IMAGE,
    OBJECT_ROLE,
    STORAGE_SCOPE,
    GcpRun,
    GcpWorkspace,
    network_tag,
    run_program,
    workspace_program,
)
from dstack.stacks.wheel import WHEEL_ENV

from . import pulumi_mocks as mocks

CALLER = "203.0.113.7/32"
SECRET = "ya29.planted-secret-token-do-not-leak"
WORLD = {"0.0.0.0/0", "::/0"}
SA = "dstack-prod@my-proj.iam.gserviceaccount.com"


class Recorder(mocks.Recorder):
    """Answers with the state GCP would give."""

    def state(self, args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if args.typ == "gcp:storage/bucket:Bucket":
            state["name"] = args.inputs.get("name") or f"{args.name}-1a2b3c4"
        if args.typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{args.inputs['accountId']}@my-proj.iam.gserviceaccount.com"
        if args.typ == "gcp:compute/network:Network":
            state["selfLink"] = f"projects/my-proj/global/networks/{args.name}-9f8e7d6"
        if args.typ == "gcp:compute/instance:Instance":
            state["instanceId"] = "1234567890"
            state["networkInterfaces"] = [{**nic, "accessConfigs": [{"natIp": "198.51.100.8"}]}
                                          for nic in args.inputs.get("networkInterfaces", [])]
        return state


def run_under_mocks(program: Callable[[], None]) -> Recorder:
    """Run a program to completion under fresh mocks; return what it declared."""
    return mocks.run_under_mocks(program, Recorder())


def make_run(resources: dict[str, Any] | None = None, ports: int = 0, name: str = "wise-cat-1",
             env: dict[str, str] | None = None, secret_env: list[str] | None = None) -> RunRecord:
    job = Job(provider="python", argv=["python", "train.py"], ports=ports,
              resources=Resources.model_validate(resources or {}).model_dump(
                  mode="json", exclude_none=True),
              env=env or {}, secret_env=secret_env or [])
    return RunRecord(name=name, workflow="Train.Big", provider="python", profile="prod",
                     backend="gcp", job=job, stack=f"run-{name}")


def run_config(**changes: Any) -> GcpRun:
    base: dict[str, Any] = dict(
        run="wise-cat-1", workflow="train", profile="prod", project="my-proj",
        zone="us-central1-a", machine_type="n1-standard-4", accelerator="nvidia-tesla-t4",
        gpu_count=1, spot=False, disk_gib=150, startup_script="#!/usr/bin/env bash\n",
        service_account=SA, network="projects/my-proj/global/networks/dstack-prod-9f8e7d6",
        max_run_s=72 * 3600, app_ports=(8000, 8001), caller_cidr=CALLER)
    return GcpRun(**{**base, **changes})


@pytest.fixture
def wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "dstack-0.1.0-py3-none-any.whl"
    path.write_bytes(b"not really a wheel")
    monkeypatch.setenv(WHEEL_ENV, str(path))
    return path


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wheel: Path) -> GcpBackend:
    monkeypatch.setenv(caller.CALLER_ENV, CALLER)
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", SECRET)
    profile = Profile(name="prod", backend="gcp", settings={
        "project": "my-proj", "zone": "us-central1-a", "region": "us-central1",
        "bucket": "dstack-my-proj-prod", "credentials": "/home/me/key.json",
        "store_url": "gs://dstack-my-proj-prod?project=my-proj", "access_token": SECRET})
    return GcpBackend(profile, tmp_path / "home")


# -- the run program -------------------------------------------------------------------------


@pytest.mark.parametrize(("resources", "machine", "accelerator"), [
    ({"gpu": {"count": 1, "name": "T4"}}, "n1-standard-4", "nvidia-tesla-t4"),
    ({"gpu": {"count": 1, "name": "L4"}}, "g2-standard-4", None),
    ({"gpu": {"count": 1, "name": "A100"}}, "a2-highgpu-1g", None),
])
def test_the_machine_type_and_its_gpus(backend: GcpBackend, resources: dict[str, Any],
                                       machine: str, accelerator: str | None) -> None:
    run = make_run(resources)
    offer = choose_offer(Resources.model_validate(resources), "gcp", "us-central1-a")
    cfg = backend.run_config(run, "#!/bin/sh\n", {"service_account": SA, "network": "net"})
    assert (cfg.machine_type, cfg.accelerator) == (offer.type, offer.accelerator)
    assert (cfg.machine_type, cfg.accelerator) == (machine, accelerator)
    vm = run_under_mocks(lambda: run_program(cfg)).one("gcp:compute/instance:Instance")
    assert vm["machineType"] == machine and vm["zone"] == "us-central1-a"
    if accelerator:
        assert vm["guestAccelerators"] == [{"type": accelerator, "count": 1}]
    else:
        assert "guestAccelerators" not in vm
    assert vm["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert vm["metadata"]["install-nvidia-driver"] == "True"


def test_a_job_nothing_fits_is_refused(backend: GcpBackend) -> None:
    with pytest.raises(NoOfferError):
        backend.check_resources(make_run({"gpu": {"count": 32}}).job)


def test_spot_when_interruptible() -> None:
    sched = run_under_mocks(lambda: run_program(run_config(spot=True))).one(
        "gcp:compute/instance:Instance")["scheduling"]
    assert sched["provisioningModel"] == "SPOT" and sched["preemptible"] is True
    assert sched["automaticRestart"] is False
    assert sched["instanceTerminationAction"] == "DELETE"
    assert sched["onHostMaintenance"] == "TERMINATE"
    standard = run_under_mocks(lambda: run_program(run_config(spot=False))).one(
        "gcp:compute/instance:Instance")["scheduling"]
    assert standard["provisioningModel"] == "STANDARD" and standard["preemptible"] is False
    assert standard["maxRunDuration"] == {"seconds": 72 * 3600}  # GCE deletes it by then


def test_interruptible_resources_give_a_spot_config(backend: GcpBackend) -> None:
    cfg = backend.run_config(make_run({"gpu": 1, "interruptible": True}), "",
                             {"service_account": SA, "network": "net"})
    assert cfg.spot is True


def test_the_vm_is_shielded_and_uses_the_workspace_identity() -> None:
    vm = run_under_mocks(lambda: run_program(run_config())).one("gcp:compute/instance:Instance")
    assert vm["shieldedInstanceConfig"] == {"enableSecureBoot": True, "enableVtpm": True,
                                            "enableIntegrityMonitoring": True}
    assert vm["serviceAccount"] == {"email": SA, "scopes": [STORAGE_SCOPE]}
    disk = vm["bootDisk"]["initializeParams"]
    assert disk["image"] == GPU_IMAGE and disk["size"] == 150
    assert GPU_IMAGE.startswith("projects/deeplearning-platform-release/global/images/family/")
    assert vm["bootDisk"]["autoDelete"] is True
    assert vm["metadataStartupScript"] == "#!/usr/bin/env bash\n"
    assert vm["metadata"]["block-project-ssh-keys"] == "true"
    assert vm["labels"] == {"dstack-run": "wise-cat-1", "dstack-workflow": "train",
                            "dstack-profile": "prod"}
    assert vm["tags"] == [network_tag("wise-cat-1")]
    assert vm["name"] == "dstack-wise-cat-1"


def test_a_cpu_vm_has_no_gpus_and_the_cpu_image() -> None:
    vm = run_under_mocks(lambda: run_program(run_config(
        machine_type="e2-standard-2", accelerator=None, gpu_count=0))).one(
        "gcp:compute/instance:Instance")
    assert "guestAccelerators" not in vm and "install-nvidia-driver" not in vm["metadata"]
    assert vm["bootDisk"]["initializeParams"]["image"] == CPU_IMAGE


def test_labels_are_label_safe(backend: GcpBackend) -> None:
    cfg = backend.run_config(make_run(), "", {"service_account": SA, "network": "net"})
    vm = run_under_mocks(lambda: run_program(cfg)).one("gcp:compute/instance:Instance")
    assert vm["labels"]["dstack-workflow"] == "train-big"


def test_the_firewall_opens_the_app_ports_to_the_caller_only() -> None:
    rec = run_under_mocks(lambda: run_program(run_config(app_ports=(8000, 8001, 8002))))
    rule = rec.one("gcp:compute/firewall:Firewall")
    assert rule["direction"] == "INGRESS" and rule["sourceRanges"] == [CALLER]
    assert rule["targetTags"] == [network_tag("wise-cat-1")]
    assert rule["allows"] == [{"protocol": "tcp", "ports": ["8000", "8001", "8002"]}]
    assert rule["network"] == run_config().network
    vm = rec.one("gcp:compute/instance:Instance")
    assert rule["targetTags"] == vm["tags"]
    assert_no_world_ingress(rec)


def test_no_ports_no_firewall_and_no_address_lookup(backend: GcpBackend,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(caller.CALLER_ENV)
    monkeypatch.setattr(caller, "_checkip", _no_network)
    cfg = backend.run_config(make_run(), "", {"service_account": SA, "network": "net"})
    rec = run_under_mocks(lambda: run_program(cfg))
    assert rec.of_type("gcp:compute/firewall:Firewall") == []
    assert_no_world_ingress(rec)


def test_every_resource_goes_through_the_profiles_provider() -> None:
    rec = run_under_mocks(lambda: run_program(run_config(credentials="/home/me/key.json")))
    (prov,) = [r for r in rec.resources if r.typ == "pulumi:providers:gcp"]
    assert prov.inputs["project"] == "my-proj" and prov.inputs["zone"] == "us-central1-a"
    assert prov.inputs["region"] == "us-central1"
    assert prov.inputs["credentials"] == "/home/me/key.json"  # a path; the key is never read
    for res in rec.resources:
        if res.typ != "pulumi:providers:gcp":
            assert "pulumi:providers:gcp::gcp" in (res.provider or "")


def assert_no_world_ingress(rec: Recorder) -> None:
    for res in rec.resources:
        assert not any(world in json.dumps(res.inputs) for world in WORLD), res.typ


def _no_network() -> str:
    raise AssertionError("the network must not be asked")


# -- the workspace program -------------------------------------------------------------------


def test_the_bucket_is_private_and_versioned() -> None:
    cfg = GcpWorkspace(profile="prod", project="my-proj", region="us-central1")
    rec = run_under_mocks(lambda: workspace_program(cfg))
    bucket = rec.one("gcp:storage/bucket:Bucket")
    assert bucket["uniformBucketLevelAccess"] is True
    assert bucket["publicAccessPrevention"] == "enforced"
    assert bucket["versioning"] == {"enabled": True}
    assert bucket["forceDestroy"] is False and bucket["location"] == "US-CENTRAL1"
    assert "name" not in bucket  # auto-named dstack-prod-<suffix>
    assert "encryption" not in bucket  # Google-managed keys unless kms_key is set
    kms = "projects/my-proj/locations/us/keyRings/r/cryptoKeys/k"
    named = run_under_mocks(lambda: workspace_program(GcpWorkspace(
        profile="prod", project="my-proj", region="us-central1", bucket="b-1", kms_key=kms)))
    bucket = named.one("gcp:storage/bucket:Bucket")
    assert bucket["name"] == "b-1" and bucket["encryption"] == {"defaultKmsKeyName": kms}


def test_the_service_account_gets_the_bucket_only() -> None:
    cfg = GcpWorkspace(profile="prod", project="my-proj", region="us-central1", bucket="b-1")
    rec = run_under_mocks(lambda: workspace_program(cfg))
    account = rec.one("gcp:serviceaccount/account:Account")
    assert account["accountId"] == "dstack-prod"
    grant = rec.one("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert grant == {"bucket": "b-1", "role": OBJECT_ROLE,
                     "member": "serviceAccount:dstack-prod@my-proj.iam.gserviceaccount.com"}
    assert OBJECT_ROLE == "roles/storage.objectAdmin"
    iam = [r.typ for r in rec.resources if "iam" in r.typ.lower()]
    assert iam == ["gcp:storage/bucketIAMMember:BucketIAMMember"]  # nothing project-wide


def test_the_workspace_network_has_no_rules() -> None:
    rec = run_under_mocks(lambda: workspace_program(GcpWorkspace(
        profile="prod", project="my-proj", region="us-central1")))
    assert rec.one("gcp:compute/network:Network")["autoCreateSubnetworks"] is True
    assert rec.of_type("gcp:compute/firewall:Firewall") == []
    mine = run_under_mocks(lambda: workspace_program(GcpWorkspace(
        profile="prod", project="my-proj", region="us-central1", network="default")))
    assert mine.of_type("gcp:compute/network:Network") == []


# -- bootstrap, plan, provision --------------------------------------------------------------


def test_the_startup_script_starts_the_runner_and_powers_off(backend: GcpBackend) -> None:
    run = make_run({"gpu": 1}, ports=1, env={"WANDB_API_KEY": SECRET},
                   secret_env=["WANDB_API_KEY"])
    script = backend.bootstrap(run)
    assert "-m dstack.runner" in script and "--host 0.0.0.0" in script
    assert "--store 'gs://dstack-my-proj-prod?project=my-proj'" in script
    assert "shutdown -h now" in script and "shutdown -h +4320" in script
    assert f"gs://dstack-my-proj-prod/{backend.wheel().store_key}" in script
    assert "gcloud storage cp" in script and "sha256sum -c" in script
    # The runner's requirements (its SDK also fetches the wheel), then the wheel `--no-deps`.
    assert script.index("'pydantic>=2.9,<3' 'google-cloud-storage>=3.0'") < \
        script.index("gcloud storage cp") < script.index("--no-deps")
    assert "export DSTACK_APP_PORTS=8000" in script
    assert SECRET not in script and "key.json" not in script
    check_shell(script)


def check_shell(script: str) -> None:
    done = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(["shellcheck", "-s", "bash", "-"], input=script, text=True,
                          capture_output=True)
    assert done.returncode == 0, done.stdout


def test_the_plan_lists_every_resource_without_engine_or_network(
        backend: GcpBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(caller.CALLER_ENV)
    monkeypatch.setattr(caller, "_checkip", _no_network)
    monkeypatch.setattr(backend, "engine", None)
    plan = backend.plan_resources(make_run({"gpu": {"count": 1, "name": "T4"}}, ports=2).job)
    types = [p["type"] for p in plan]
    assert "gcp:storage/bucket:Bucket" in types and "gcp:compute/firewall:Firewall" in types
    (vm,) = [p for p in plan if p["type"] == "gcp:compute/instance:Instance"]
    assert vm["machine_type"] == "n1-standard-4" and vm["accelerator"] == "1 x nvidia-tesla-t4"
    assert vm["zone"] == "us-central1-a" and vm["price_per_hour"].startswith("$")


def fake_engine() -> mocks.FakeEngine[Recorder]:
    """An engine that runs programs under the GCP mocks, with GCP's outputs."""
    return mocks.FakeEngine(
        Recorder,
        workspace={"bucket": "dstack-my-proj-prod", "service_account": SA,
                   "network": "projects/my-proj/global/networks/dstack-prod-9f8e7d6"},
        run={"instance_id": "1234567890", "instance_name": "dstack-wise-cat-1",
             "public_ip": "198.51.100.8"},
        created=ResourceChange("create", "gcp:compute/instance:Instance", "instance"))


def test_provision_brings_up_workspace_once_then_the_run(backend: GcpBackend) -> None:
    engine = fake_engine()
    uploaded: list[str] = []
    backend.engine = engine  # type: ignore[assignment]
    backend._put = lambda key, path: uploaded.append(key)  # type: ignore[method-assign]
    run = make_run({"gpu": {"count": 1, "name": "L4"}, "interruptible": True}, ports=1)
    changes, instance = backend.provision(run, backend.bootstrap(run))
    assert engine.ups == ["workspace-prod", "run-wise-cat-1"]
    assert uploaded == [backend.wheel().store_key]
    assert instance["type"] == "g2-standard-4" and instance["zone"] == "us-central1-a"
    assert instance["spot"] is True and instance["public_ip"] == "198.51.100.8"
    assert [c.type for c in changes] == ["gcp:compute/instance:Instance"]
    declared = engine.recorders["run-wise-cat-1"]
    assert SECRET not in json.dumps([r.inputs for r in declared.resources])
    vm = declared.one("gcp:compute/instance:Instance")
    assert vm["serviceAccount"]["email"] == SA
    assert vm["networkInterfaces"][0]["network"].endswith("dstack-prod-9f8e7d6")
    assert declared.one("gcp:compute/firewall:Firewall")["sourceRanges"] == [CALLER]
    assert backend.teardown("wise-cat-1") == []


def test_the_registry_loads_the_backend(tmp_path: Path) -> None:
    assert BACKENDS["gcp"] == "dstack.stacks.gcp:GcpBackend"
    profile = Profile(name="p", backend="gcp", settings={"project": "x", "zone": "us-east1-c"})
    backend = load_backend(profile, tmp_path)
    assert isinstance(backend, GcpBackend)
    assert backend.location() == "us-east1-c"
    assert backend.region() == "us-east1"  # type: ignore[attr-defined]
    assert backend.runner_alive(make_run()) is None and backend.clear_stale_locks() == []
