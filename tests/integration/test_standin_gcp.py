"""The stand-in gcp plugin under dstack's real GCP programs and the real engine.

`workspace_program` / `run_program` of `dstack.stacks.gcp_programs` run through
`Engine.up` / `destroy` with `tests/standins/bin` first on PATH, so the engine's gcp plugin is
`tests.standins.gcp`: buckets in the GCS emulator, compute in the project's document under a
world folder of the test's own, instances as local process trees. No dstack is installed on
the instances here: their startup scripts are tiny.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import socket
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dstack.errors import BackendError
from dstack.stacks.engine import Engine
from dstack.stacks.gcp_programs import (
    CPU_IMAGE,
    OBJECT_ROLE,
    STORAGE_SCOPE,
    GcpRun,
    GcpWorkspace,
    network_tag,
    run_program,
    workspace_program,
)
from tests.integration import stack_state
from tests.integration.harness import poll
from tests.integration.servers import ROOT, Server, env_patch, gcs_emulator  # noqa: F401
from tests.standins import gcp, instance
from tests.standins.plugin import Config, Gone

pytestmark = pytest.mark.cloud  # the slowest tests: `-m "not cloud"` skips them

PROJECT = "standin-project"
REGION = "us-central1"
ZONE = "us-central1-b"
CALLER = "127.0.0.1/32"
STANDIN_BIN = ROOT / "tests" / "standins" / "bin"
WORKSPACE = GcpWorkspace(profile="p1", project=PROJECT, region=REGION)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          gcs_emulator: Server) -> Iterator[Path]:  # noqa: F811
    """The stand-in clouds' folder of this test, the stand-in plugins first on PATH; no
    instance of it may still run afterwards."""
    folder = tmp_path / "world"
    folder.mkdir()
    monkeypatch.setenv(instance.WORLD_ENV, str(folder))
    monkeypatch.setenv(instance.MINUTE_ENV, "60")
    monkeypatch.setenv("PATH", f"{STANDIN_BIN}{os.pathsep}{os.environ['PATH']}")
    yield folder
    running = [p.name for p in (folder / "instances").glob("gcp-*")
               if instance.state("gcp", p.name[4:]) == "running"] \
        if (folder / "instances").is_dir() else []
    for name in running:
        instance.terminate("gcp", name[4:])
    assert not running, f"instances left running: {running}"


@pytest.fixture
def engine(home: Path, world: Path) -> Engine:
    """The real engine in the test's dstack home."""
    return Engine(home)


@pytest.fixture
def workspace(engine: Engine, gcs_emulator: Server) -> Iterator[dict[str, Any]]:  # noqa: F811
    """The workspace stack `workspace-p1` brought up; destroyed (bucket emptied) afterwards."""
    outputs, _changes = engine.up("workspace-p1", lambda: workspace_program(WORKSPACE))
    yield outputs
    _empty_bucket(outputs["bucket"])
    engine.destroy("workspace-p1", lambda: workspace_program(WORKSPACE))


@contextlib.contextmanager
def _engine_fails(match: str) -> Iterator[None]:
    """The engine call in the block fails with `match`. The failed call leaves its inline
    program's coroutine suspended; it is collected here, at a known point. Left to a later
    collection, it was finalized while pytest's hypothesis plugin imported hypothesis at the
    end of the session (an `ast.parse` of assertion rewriting), and CPython 3.11.7 failed
    that parse with "AST constructor recursion depth mismatch" (pytest exited 1)."""
    with pytest.raises(BackendError, match=match):
        yield
    gc.collect()


def _storage() -> Any:
    from google.cloud import storage

    return storage.Client(project=PROJECT)


def _empty_bucket(name: str) -> None:
    client = _storage()
    if client.lookup_bucket(name) is not None:
        for blob in client.list_blobs(name, versions=True):
            blob.delete()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(workspace: dict[str, Any], script: str, **changes: Any) -> GcpRun:
    cfg = GcpRun(run="brave-fox-1", workflow="train", profile="p1", project=PROJECT, zone=ZONE,
                 machine_type="e2-standard-2", accelerator=None, gpu_count=0, spot=False,
                 disk_gib=50, startup_script=script,
                 service_account=workspace["service_account"], network=workspace["network"],
                 max_run_s=3600, app_ports=(_free_port(),), caller_cidr=CALLER)
    return replace(cfg, **changes)


def _up(engine: Engine, cfg: GcpRun) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    outputs, changes = engine.up(f"run-{cfg.run}", lambda: run_program(cfg))
    return outputs, [(c.op, c.name) for c in changes]


def _destroy(engine: Engine, cfg: GcpRun) -> list[tuple[str, str]]:
    return [(c.op, c.name) for c in engine.destroy(f"run-{cfg.run}", lambda: run_program(cfg))]


def _vm(name: str = "dstack-brave-fox-1") -> dict[str, Any] | None:
    found: dict[str, Any] | None = gcp.load(PROJECT)["instances"].get(
        f"projects/{PROJECT}/zones/{ZONE}/instances/{name}")
    return found


def _console(instance_id: str, text: str) -> str:
    return str(poll(f"{text!r} on the console of {instance_id}",
                    lambda: text in instance.console("gcp", instance_id)
                    and instance.console("gcp", instance_id), timeout=30))


# -- the workspace ---------------------------------------------------------------------------


def test_workspace_is_a_bucket_an_account_its_grant_and_a_network(
        engine: Engine, gcs_emulator: Server) -> None:  # noqa: F811
    cfg = WORKSPACE
    outputs, changes = engine.up("workspace-p1", lambda: workspace_program(cfg))
    assert sorted(c.op for c in changes) == ["create"] * 4
    bucket = outputs["bucket"]
    assert re.fullmatch(r"dstack-p1-[0-9a-f]{7}", bucket)  # auto-named like pulumi-gcp

    assert _storage().lookup_bucket(bucket) is not None
    doc = gcp.load(PROJECT)
    kept = doc["buckets"][bucket]  # what the emulator does not keep
    assert kept["location"] == "US-CENTRAL1"
    assert kept["versioning"] == {"enabled": True}
    assert kept["uniformBucketLevelAccess"] is True
    assert kept["publicAccessPrevention"] == "enforced"
    assert kept["lifecycleRules"][0]["action"] == {"type": "Delete"}
    [state] = [r["outputs"] for r in stack_state.resources(engine, "workspace-p1")
               if r["type"] == "gcp:storage/bucket:Bucket"]
    assert state["versioning"] == {"enabled": True}
    assert state["url"] == f"gs://{bucket}"

    email = f"dstack-p1@{PROJECT}.iam.gserviceaccount.com"
    assert outputs["service_account"] == email
    [account] = doc["serviceAccounts"].values()
    assert account["email"] == email and account["accountId"] == "dstack-p1"
    assert account["id"] == f"projects/{PROJECT}/serviceAccounts/{email}"
    [grant] = doc["bucketIamMembers"].values()  # the only grant: on that bucket, nothing else
    assert (grant["bucket"], grant["role"], grant["member"]) == (
        f"b/{bucket}", OBJECT_ROLE, f"serviceAccount:{email}")

    [network] = doc["networks"].values()
    assert re.fullmatch(r"dstack-p1-[0-9a-f]{7}", network["name"])
    assert network["autoCreateSubnetworks"] is True
    assert outputs["network"] == network["selfLink"] == (
        f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/global/networks/"
        f"{network['name']}")
    assert doc["firewalls"] == {} and doc["instances"] == {}  # no ingress rule at all

    # Brought up again unchanged: nothing to do, and the auto-names are kept.
    again, changes = engine.up("workspace-p1", lambda: workspace_program(cfg))
    assert changes == [] and again == outputs
    # A changed lifecycle rule is an update in place.
    cfg1 = replace(cfg, noncurrent_days=7)
    _outputs, changes = engine.up("workspace-p1", lambda: workspace_program(cfg1))
    assert [(c.op, c.name) for c in changes] == [("update", "dstack-p1")]
    assert gcp.load(PROJECT)["buckets"][bucket]["lifecycleRules"][0]["condition"] == {
        "daysSinceNoncurrentTime": 7}
    # A new location replaces the bucket (a new auto-name), a new account id the account; the
    # grant follows both.
    cfg2 = replace(cfg1, location="eu", account_id="dstack-other")
    outputs, changes = engine.up("workspace-p1", lambda: workspace_program(cfg2))
    replaced = sorted(c.name for c in changes if c.op == "replace")
    assert replaced == ["dstack-p1", "runner", "runner-objects"]
    assert outputs["bucket"] != bucket and _storage().lookup_bucket(bucket) is None
    bucket = outputs["bucket"]
    assert _storage().lookup_bucket(bucket) is not None
    doc = gcp.load(PROJECT)
    assert doc["buckets"][bucket]["location"] == "EU"
    [account] = doc["serviceAccounts"].values()
    assert account["email"] == f"dstack-other@{PROJECT}.iam.gserviceaccount.com"
    [grant] = doc["bucketIamMembers"].values()
    assert (grant["bucket"], grant["member"]) == (f"b/{bucket}",
                                                  f"serviceAccount:{account['email']}")
    assert len(doc["networks"]) == 1

    # A bucket that holds objects is not deleted (force_destroy is false), as with GCS.
    _storage().bucket(bucket).blob("runs/x.json").upload_from_string(b"{}")
    with _engine_fails("containing objects"):
        engine.destroy("workspace-p1", lambda: workspace_program(cfg2))
    assert _storage().lookup_bucket(bucket) is not None
    _empty_bucket(bucket)
    engine.destroy("workspace-p1", lambda: workspace_program(cfg2))
    assert _storage().lookup_bucket(bucket) is None
    doc = gcp.load(PROJECT)
    assert all(doc[s] == {} for s in gcp.SECTIONS)


def test_the_provider_needs_a_project(engine: Engine) -> None:
    cfg = GcpWorkspace(profile="p1", project="", region=REGION)
    with _engine_fails("needs `project`"):
        engine.up("workspace-p1", lambda: workspace_program(cfg))
    engine.destroy("workspace-p1", lambda: workspace_program(cfg))


# -- runs ------------------------------------------------------------------------------------


def _app_script(port: int, bucket: str) -> str:
    """Write under /opt, check the metadata server and the bucket with the VM's identity,
    serve /opt/app on `port`."""
    check = textwrap.dedent(f"""
        import json, os, urllib.request
        import google.auth, google.auth.transport.requests
        from google.cloud import storage
        host = os.environ["GCE_METADATA_HOST"]
        def md(path):
            req = urllib.request.Request(f"http://{{host}}/computeMetadata/v1/{{path}}",
                                         headers={{"Metadata-Flavor": "Google"}})
            return urllib.request.urlopen(req).read().decode()
        print("zone", md("instance/zone"))
        print("preempted", md("instance/preempted"))
        print("ssh-keys", md("instance/attributes/block-project-ssh-keys"))
        creds, project = google.auth.default()
        creds.refresh(google.auth.transport.requests.Request())
        print("identity", type(creds).__name__, project, creds.service_account_email,
              creds.token.startswith("ya29."))
        client = storage.Client(project=project)
        client.bucket({bucket!r}).blob("from-vm/hello.txt").upload_from_string(b"from the vm")
        print("bucket", client.bucket({bucket!r}).blob("from-vm/hello.txt")
              .download_as_bytes().decode())
        from dstack.store.gcs import GCSStore  # what the runner writes the run's store with
        store = GCSStore.from_url(f"gs://{bucket}/runs?project={{project}}")
        store.put_bytes("brave-fox-1/run.json", b"{{}}")
        print("store", store.list(""))
    """)
    return textwrap.dedent(f"""\
        #!/bin/bash
        set -e
        echo "booting with $(cat /opt/image-marker)"
        mkdir -p /opt/app
        echo "served from the vm" > /opt/app/hello
        {sys.executable} - <<'EOF'
        {textwrap.indent(check, "        ").strip()}
        EOF
        echo "serving"
        cd /opt/app && exec {sys.executable} -m http.server {port} --bind 0.0.0.0
        """)


def test_a_run_is_a_firewall_rule_and_a_vm_running_its_script(
        engine: Engine, world: Path, workspace: dict[str, Any]) -> None:
    image = world / "images" / gcp.image_slug(CPU_IMAGE)
    image.mkdir(parents=True)
    (image / "image-marker").write_text("the cpu image\n")
    port = _free_port()
    cfg = _run(workspace, _app_script(port, workspace["bucket"]), app_ports=(port,))
    outputs, changes = _up(engine, cfg)
    assert changes == [("create", "apps"), ("create", "instance")]

    doc = gcp.load(PROJECT)
    [rule] = doc["firewalls"].values()
    assert rule["name"] == "dstack-brave-fox-1-apps"
    assert rule["direction"] == "INGRESS" and rule["sourceRanges"] == [CALLER]
    assert rule["allows"] == [{"protocol": "tcp", "ports": [str(port)]}]
    assert rule["targetTags"] == [network_tag(cfg.run)]
    assert rule["network"] == workspace["network"]

    vm = _vm()
    assert vm is not None and vm["currentStatus"] == "RUNNING"
    assert outputs["instance_id"] == vm["instanceId"] and vm["instanceId"].isdigit()
    assert outputs["instance_name"] == vm["name"] == "dstack-brave-fox-1"
    assert vm["machineType"] == "e2-standard-2" and vm["zone"] == ZONE
    assert vm["tags"] == [network_tag(cfg.run)]
    assert vm["scheduling"] == {
        "onHostMaintenance": "TERMINATE", "automaticRestart": False,
        "provisioningModel": "STANDARD", "preemptible": False,
        "instanceTerminationAction": "DELETE", "maxRunDuration": {"seconds": 3600}}
    assert vm["shieldedInstanceConfig"] == {"enableSecureBoot": True, "enableVtpm": True,
                                            "enableIntegrityMonitoring": True}
    assert vm["serviceAccount"] == {"email": workspace["service_account"],
                                    "scopes": [STORAGE_SCOPE]}
    assert vm["metadataStartupScript"] == cfg.startup_script
    assert vm["bootDisk"]["initializeParams"]["image"] == CPU_IMAGE
    [nic] = vm["networkInterfaces"]
    nat = nic["accessConfigs"][0]["natIp"]
    assert outputs["public_ip"] == nat and re.fullmatch(r"127\.0\.0\.\d+", nat)

    iid = vm["instanceId"]
    text = _console(iid, "serving")
    assert "booting with the cpu image" in text
    assert f"zone projects/{gcp.project_number(PROJECT)}/zones/{ZONE}" in text
    assert "preempted FALSE" in text and "ssh-keys true" in text
    assert f"identity Credentials {PROJECT} {workspace['service_account']} True" in text
    assert "bucket from the vm" in text
    assert "store ['brave-fox-1/run.json']" in text
    blob = _storage().bucket(workspace["bucket"]).blob("from-vm/hello.txt")
    assert blob.download_as_bytes() == b"from the vm"
    # The app binds 0.0.0.0: it answers on the VM's public (loopback) address.
    body = poll("the app", lambda: _get(f"http://{nat}:{port}/hello"), timeout=15)
    assert body == "served from the vm\n"
    assert instance.state("gcp", iid) == "running"

    assert sorted(_destroy(engine, cfg)) == [("delete", "apps"), ("delete", "instance")]
    doc = gcp.load(PROJECT)
    assert doc["instances"] == {} and doc["firewalls"] == {}
    assert instance.state("gcp", iid) == "terminated"
    assert _get(f"http://{nat}:{port}/hello") is None


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def _refresh(engine: Engine, stack: str) -> None:
    """`pulumi refresh` of the stack: the provider's Read of each resource."""
    stack_state.refresh(engine, stack)


def _state_vm(engine: Engine, stack: str) -> dict[str, Any] | None:
    found = [r["outputs"] for r in stack_state.resources(engine, stack)
             if r["type"] == "gcp:compute/instance:Instance"]
    return found[0] if found else None


def test_a_vm_that_powers_itself_off_stays_terminated(
        engine: Engine, workspace: dict[str, Any]) -> None:
    cfg = _run(workspace, "#!/bin/bash\necho 'job done'\nshutdown -h now\nsleep 60\n",
               app_ports=())
    outputs, changes = _up(engine, cfg)
    assert changes == [("create", "instance")]  # no app port: no firewall rule
    iid = outputs["instance_id"]
    poll("the VM to be TERMINATED", lambda: (_vm() or {}).get("currentStatus") == "TERMINATED",
         timeout=30)
    assert "job done" in instance.console("gcp", iid)
    assert instance.state("gcp", iid) == "terminated"
    # GCE keeps a stopped VM: a refresh reads it TERMINATED, still in the stack.
    _refresh(engine, f"run-{cfg.run}")
    state = _state_vm(engine, f"run-{cfg.run}")
    assert state is not None and state["currentStatus"] == "TERMINATED"
    # A stopped VM still uses the network: GCE refuses to delete it (the workspace is
    # destroyed after its runs).
    with _engine_fails("is already being used by"):
        engine.destroy("workspace-p1", lambda: workspace_program(WORKSPACE))
    assert len(gcp.load(PROJECT)["networks"]) == 1
    assert _destroy(engine, cfg) == [("delete", "instance")]
    assert _vm() is None


def test_changes_update_in_place_or_replace(engine: Engine,
                                            workspace: dict[str, Any]) -> None:
    cfg = _run(workspace, "#!/bin/bash\necho first boot\nexec sleep 300\n")
    outputs, _changes = _up(engine, cfg)
    first = outputs["instance_id"]
    [rule] = gcp.load(PROJECT)["firewalls"].values()

    # New app ports: the rule is updated in place; the VM has nothing to change.
    cfg2 = replace(cfg, app_ports=(cfg.app_ports[0], _free_port()))
    outputs, changes = _up(engine, cfg2)
    assert changes == [("update", "apps")]
    assert outputs["instance_id"] == first and instance.state("gcp", first) == "running"
    [rule2] = gcp.load(PROJECT)["firewalls"].values()
    assert rule2["id"] == rule["id"] and rule2["creationTimestamp"] == rule["creationTimestamp"]
    assert rule2["allows"][0]["ports"] == [str(p) for p in cfg2.app_ports]

    # The machine type needs the VM stopped: without allow_stopping_for_update the update
    # fails, as with pulumi-gcp, and the VM is left as it was.
    with _engine_fails("allow_stopping_for_update"):
        _up(engine, replace(cfg2, machine_type="e2-standard-4"))
    vm = _vm()
    assert vm is not None and vm["machineType"] == "e2-standard-2"
    assert instance.state("gcp", first) == "running"

    # A new startup script replaces the VM (ForceNew): the old one is deleted first.
    cfg3 = replace(cfg2, startup_script="#!/bin/bash\necho second boot\nexec sleep 300\n")
    outputs, changes = _up(engine, cfg3)
    assert ("replace", "instance") in changes and ("update", "apps") not in changes
    second = outputs["instance_id"]
    assert second != first and instance.state("gcp", first) == "terminated"
    _console(second, "second boot")
    vm = _vm()
    assert vm is not None and vm["instanceId"] == second

    # New labels (another workflow) are in place for the VM, but the boot disk's labels are
    # an initialize_params field (ForceNew): the VM is replaced.
    cfg4 = replace(cfg3, workflow="eval")
    outputs, changes = _up(engine, cfg4)
    assert ("replace", "instance") in changes
    third = outputs["instance_id"]
    assert third != second and instance.state("gcp", second) == "terminated"
    vm = _vm()
    assert vm is not None and vm["labels"]["dstack-workflow"] == "eval"

    assert sorted(_destroy(engine, cfg4)) == [("delete", "apps"), ("delete", "instance")]
    assert instance.state("gcp", third) == "terminated"
    assert gcp.load(PROJECT)["instances"] == {} and gcp.load(PROJECT)["firewalls"] == {}


def test_a_vm_deleted_behind_the_engines_back_destroys_cleanly(
        engine: Engine, workspace: dict[str, Any]) -> None:
    cfg = _run(workspace, "#!/bin/bash\nexec sleep 300\n")
    outputs, _changes = _up(engine, cfg)
    iid = outputs["instance_id"]
    with gcp.document(PROJECT) as doc:
        [key] = doc["instances"]
        del doc["instances"][key]
    # Its process is still there: the delete of a VM the cloud no longer lists ends it too.
    assert instance.state("gcp", iid) == "running"
    assert sorted(_destroy(engine, cfg)) == [("delete", "apps"), ("delete", "instance")]
    assert instance.state("gcp", iid) == "terminated"
    assert gcp.load(PROJECT)["firewalls"] == {}

    # And a refresh drops a VM that is gone from the stack's state.
    outputs, _changes = _up(engine, cfg)
    with gcp.document(PROJECT) as doc:
        doc["instances"].clear()
    instance.terminate("gcp", outputs["instance_id"])
    _refresh(engine, f"run-{cfg.run}")
    assert _state_vm(engine, f"run-{cfg.run}") is None
    assert _destroy(engine, cfg) == [("delete", "apps")]


def test_max_run_duration_deletes_the_vm(engine: Engine, workspace: dict[str, Any],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(instance.MINUTE_ENV, "0.5")  # 60 s of run time last half a second
    cfg = _run(workspace, "#!/bin/bash\nexec sleep 300\n", max_run_s=60, app_ports=())
    outputs, _changes = _up(engine, cfg)
    iid = outputs["instance_id"]
    poll("GCE to delete the VM", lambda: _vm() is None, timeout=15)
    poll("the VM's processes to end", lambda: instance.state("gcp", iid) == "terminated",
         timeout=15)
    assert _destroy(engine, cfg) == [("delete", "instance")]



def test_an_update_that_needs_the_vm_stopped_reboots_it_when_allowed(world: Path) -> None:
    # No program of dstack sets allow_stopping_for_update: the provider's handlers directly.
    cfg = Config({"project": PROJECT, "zone": ZONE})
    vm = gcp.Instance()
    inputs = vm.check("vm", {}, {
        "machineType": "e2-small", "bootDisk": {"initializeParams": {"image": "debian-12"}},
        "networkInterfaces": [{"network": "default", "accessConfigs": [{}]}],
        "metadataStartupScript": "#!/bin/bash\necho boot >> /opt/boots\ncat /opt/boots\n"
                                 "exec sleep 300\n"}, b"seed")
    assert re.fullmatch(r"vm-[0-9a-f]{7}", inputs["name"])
    id_, outputs = vm.create(cfg, "vm", inputs)
    iid = outputs["instanceId"]
    try:
        _console(iid, "boot")
        bigger = {**inputs, "machineType": "e2-standard-4"}
        assert vm.replaces(inputs, bigger, ["machineType"]) == []
        with pytest.raises(gcp.ApiError, match=r"allow_stopping_for_update.*\(changed: "
                                                r"machineType\)"):
            vm.update(cfg, id_, outputs, bigger)
        labelled = vm.update(cfg, id_, outputs, {**inputs, "labels": {"team": "ml"}})
        assert labelled["labelFingerprint"] != outputs["labelFingerprint"]  # in place
        updated = vm.update(cfg, id_, outputs, {**bigger, "allowStoppingForUpdate": True})
        assert updated["instanceId"] == iid and updated["machineType"] == "e2-standard-4"
        assert updated["networkInterfaces"][0]["accessConfigs"][0]["natIp"] == \
            outputs["networkInterfaces"][0]["accessConfigs"][0]["natIp"]
        _console(iid, "boot\nboot\nboot\n")  # booted again, its disk (/opt) kept
        assert instance.state("gcp", iid) == "running"
        assert vm.read(cfg, id_, updated)["machineType"] == "e2-standard-4"
    finally:
        vm.delete(cfg, id_, outputs)
    assert instance.state("gcp", iid) == "terminated"
    with pytest.raises(Gone):
        vm.read(cfg, id_, outputs)
    with pytest.raises(Gone):
        vm.delete(cfg, id_, outputs)
