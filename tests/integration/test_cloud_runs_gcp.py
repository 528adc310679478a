"""`dstack --profile gcp` end to end, through the CLI, on a stand-in GCP.

Each test is a new user with a service-account key file: `dstack config add gcp`, then
runs. The real `pulumi_gcp` programs go through the real engine and the stand-in
`pulumi-resource-gcp` (tests/standins/gcp.py): the bucket is in the GCS emulator, the
service account, network, firewall and VMs in the stand-in's compute document; each VM runs
its exact startup script as a local process tree that fetches the dstack wheel from the
bucket (with the machine's gcloud, as on Google's images) and runs the job against it.

Not here: a VM killed from outside. The GCP backend does not ask Compute Engine about its
VMs; such a run is found dead by its heartbeat, after the profile's `heartbeat_timeout` (3m).
"""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.integration.harness import write_project
from tests.integration.servers import env_patch, gcs_emulator  # noqa: F401
from tests.integration.standin_clouds import (
    CALLER,
    CloudDstack,
    GcpCloud,
    baked_image,  # noqa: F401
    dstack_wheel,  # noqa: F401
    gcp_cloud,  # noqa: F401
    run_output,
    wait_exit,
    wait_for,
)
from tests.standins import gcp, instance

pytestmark = pytest.mark.cloud  # the slowest tests: `-m "not cloud"` skips them

WORKFLOWS = """
workflows:
  - name: train
    provider: python
    file: train.py
    artifacts: ["checkpoint"]
    resources: {cpu: 2}
  - name: evaluate
    provider: python
    file: evaluate.py
    depends-on: ["train:latest"]
  - name: quick
    provider: bash
    commands: ["echo quick job done"]
  - name: sleeper
    provider: bash
    commands: ["echo sleeping", "sleep 900"]
  - name: api
    provider: fastapi
    app: main:app
"""
FILES = {
    "train.py": """
        import json, os, sys, time
        os.makedirs("checkpoint", exist_ok=True)
        with open("checkpoint/model.json", "w") as f:
            json.dump({"weights": [4, 5, 6]}, f)
        print("trained on gcp", flush=True)
        release = os.environ.get("RELEASE")
        deadline = time.time() + 600
        while release and not os.path.exists(release) and time.time() < deadline:
            time.sleep(0.2)
    """,
    "evaluate.py": """
        import json
        print("evaluated", json.load(open("checkpoint/model.json"))["weights"])
    """,
    "main.py": """
        from fastapi import FastAPI
        app = FastAPI()

        @app.get("/")
        def root() -> dict:
            return {"hello": "from the vm"}
    """,
}
SUBMITTED = re.compile(r"run ([a-z0-9-]+) submitted")


def user(home: Path, tmp_path: Path, cloud: GcpCloud, **extra: str) -> CloudDstack:
    """A user with the project and the profile `ci` (the default) on the stand-in GCP."""
    project = write_project(tmp_path / "project", WORKFLOWS, FILES)
    dstack = CloudDstack(home, project, cloud, extra)
    added = dstack("config", "add", "gcp", "ci", "--project", cloud.project, "--zone",
                   "us-central1-a", "--credentials", str(cloud.key), "--default")
    assert cloud.project in added.stderr, added.stderr
    cloud.bucket = f"dstack-{cloud.project}-ci"
    return dstack


def baked(dstack: CloudDstack, image: Path, wheel: Path) -> None:
    """Later runs boot the baked image and install the session's wheel."""
    dstack.cloud.image(image, gcp.image_slug("dstack-baked"))
    dstack("config", "set", "ci", "image", "dstack-baked")
    dstack.extra["DSTACK_WHEEL"] = str(wheel)


def nothing_left(cloud: GcpCloud) -> None:
    """No VM or firewall rule in the document, no VM process tree running."""
    assert cloud.document("instances") == []
    assert cloud.document("firewalls") == []
    assert cloud.running() == []


@pytest.mark.timeout(1500)
def test_a_new_profile_from_the_dry_run_to_a_run_that_reuses_the_first_ones_artifacts(
        home: Path, tmp_path: Path, gcp_cloud: GcpCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, gcp_cloud)

    dry = dstack("run", "train", "--dry-run")
    plan = json.loads(dry.stdout)
    assert [s["name"] for s in plan["stacks"]] == ["workspace-ci", "run-<name>"]
    assert plan["instance"]["type"] == "gcp:compute/instance:Instance"
    assert plan["instance"]["price_per_hour"].startswith("$")
    assert gcp_cloud.buckets() == []
    assert gcp_cloud.document("serviceAccounts") == []

    # The first run: the workspace, then the run, on a bare image.
    release = tmp_path / "release"
    out, err = tmp_path / "train.out", tmp_path / "train.err"
    proc = dstack.popen("run", "train", "--env", f"RELEASE={release}", "--tag", "g1",
                        out=out, err=err)
    name = wait_for("the run's name", lambda: SUBMITTED.search(run_output(out, err)), 120)[1]
    wait_for("the checkpoint in the bucket while the job runs",
             lambda: gcp_cloud.keys(f"runs/{name}/artifacts/checkpoint/"), 900)
    assert proc.poll() is None
    release.touch()
    assert wait_exit(proc, 300) == 0, run_output(out, err)
    assert "trained on gcp" in out.read_text()
    [account] = gcp_cloud.document("serviceAccounts")
    [grant] = gcp_cloud.document("bucketIamMembers")
    assert grant["bucket"] == f"b/{gcp_cloud.bucket}"  # pulumi-gcp's form of the bucket
    assert grant["role"] == "roles/storage.objectAdmin"
    assert grant["member"] == f"serviceAccount:{account['email']}"
    nothing_left(gcp_cloud)

    baked(dstack, baked_image, dstack_wheel)
    assert "evaluated [4, 5, 6]" in dstack("run", "evaluate").stdout
    assert "evaluated [4, 5, 6]" in dstack("run", "python", "evaluate.py", "--dep",
                                           ":g1").stdout
    rows = {r["run"]: r for r in dstack.ps()}
    assert rows[name]["backend"] == "gcp"
    assert sorted(r["status"] for r in rows.values()) == ["done", "done", "done"]
    listed = dstack.json("artifacts", "list", name)
    assert [f["path"] for f in listed["files"]] == ["checkpoint/model.json"]
    trail = dstack.json("audit", name)
    ops = [(c["op"], c["type"]) for t in trail for c in t["resources"]]
    assert ("create", "gcp:compute/instance:Instance") in ops
    assert ("delete", "gcp:compute/instance:Instance") in ops
    nothing_left(gcp_cloud)


@pytest.mark.timeout(600)
def test_an_app_answers_on_the_printed_url_behind_a_rule_for_the_caller_only(
        home: Path, tmp_path: Path, gcp_cloud: GcpCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, gcp_cloud)
    baked(dstack, baked_image, dstack_wheel)
    out, err = tmp_path / "api.out", tmp_path / "api.err"
    proc = dstack.popen("run", "api", out=out, err=err)
    url = wait_for("the app's URL", lambda: re.search(r"is at (http://\S+)",
                                                      run_output(out, err)), 300)[1]
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert json.loads(resp.read()) == {"hello": "from the vm"}
    [rule] = gcp_cloud.document("firewalls")
    [vm] = gcp_cloud.document("instances")
    port = url.rsplit(":", 1)[1].split("/")[0]
    assert rule["sourceRanges"] == [CALLER] and rule["direction"] == "INGRESS"
    assert rule["allows"] == [{"protocol": "tcp", "ports": [port]}]
    assert rule["targetTags"] == vm["tags"]
    name = SUBMITTED.search(run_output(out, err))[1]  # type: ignore[index]
    dstack("stop", name, "-y")
    assert wait_exit(proc, 120) == 128 + 15  # the app got SIGTERM
    nothing_left(gcp_cloud)


@pytest.mark.timeout(900)
def test_detached_and_killed_clis_leave_nothing_once_their_vms_are_off(
        home: Path, tmp_path: Path, gcp_cloud: GcpCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, gcp_cloud)
    baked(dstack, baked_image, dstack_wheel)

    name = dstack.run_detached("quick")
    wait_for("the VM to power itself off", lambda: [v["currentStatus"] for v in
                                                    gcp_cloud.document("instances")] ==
             ["TERMINATED"], 300)
    assert "quick job done" in dstack("logs", name).stdout
    dstack.assert_torn_down(name)
    nothing_left(gcp_cloud)

    release = tmp_path / "release"
    out, err = tmp_path / "b.out", tmp_path / "b.err"
    proc = dstack.popen("run", "train", "--env", f"RELEASE={release}", out=out, err=err)
    wait_for("the job's first line", lambda: "trained on gcp" in out.read_text(), 300)
    name = SUBMITTED.search(run_output(out, err))[1]  # type: ignore[index]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dstack("gc", timeout=300)
    assert dstack.ps(name)[0]["status"] == "running"  # a live job is not cut short
    release.touch()
    wait_for("the job to end", lambda: dstack.ps(name)[0]["status"] == "done", 300)
    dstack("gc", timeout=300)
    dstack.assert_torn_down(name)
    nothing_left(gcp_cloud)


@pytest.mark.timeout(600)
def test_max_duration_ends_the_vm_and_interruptible_asks_for_spot(
        home: Path, tmp_path: Path, gcp_cloud: GcpCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, gcp_cloud, **{instance.MINUTE_ENV: "120"})
    baked(dstack, baked_image, dstack_wheel)
    # One minute lasts 2 on the stand-in clock: a loaded machine boots in up to one.
    dstack("config", "set", "ci", "max_duration", "1m")
    out, err = tmp_path / "s.out", tmp_path / "s.err"
    proc = dstack.popen("run", "sleeper", "--interruptible", out=out, err=err)
    vm = wait_for("the VM", lambda: gcp_cloud.document("instances"), 120)[0]
    assert vm["scheduling"]["provisioningModel"] == "SPOT"
    assert vm["scheduling"]["maxRunDuration"]["seconds"] in (60, "60")
    # The VM is in the document before its boot has started: wait for it to run first.
    wait_for("the VM to boot", gcp_cloud.running, 120)
    wait_for("the VM to be gone or off", lambda: not gcp_cloud.running(), 300)
    # Nothing tells the GCP backend the VM is gone but the runner's heartbeat: stop it.
    name = SUBMITTED.search(run_output(out, err))[1]  # type: ignore[index]
    assert "sleeping" in out.read_text()
    dstack("stop", name, "-y", timeout=300)
    wait_exit(proc, 120)
    nothing_left(gcp_cloud)
