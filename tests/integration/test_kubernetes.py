"""`dstack --profile k8s` end to end, through the CLI, on a real Kubernetes control plane.

The real `pulumi_kubernetes` programs go through the real engine and the real
`pulumi-resource-kubernetes` plugin (built from Go modules) to a real kube-apiserver; the
real scheduler places the pods on kwok's fake GPU nodes (8 H100s, 1 A10G, both tainted, and a
CPU node), and the stand-in kubelet runs each pod's command (the dstack bootstrap) as a local
instance that installs the wheel from the store with the Secret's credentials. See
tests/integration/kube_world.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.integration.harness import write_project
from tests.integration.kube_world import (
    USER_SECRET,
    KubeDstack,
    KubeWorld,
    kube_cluster,  # noqa: F401
    kube_world,  # noqa: F401
    wait_pod,
)
from tests.integration.standin_clouds import (
    baked_image,  # noqa: F401
    dstack_wheel,  # noqa: F401
    run_output,
    wait_exit,
    wait_for,
)
from tests.integration.test_cloud_runs_aws import SUBMITTED, resources_of
from tests.kube import cluster as kube
from tests.standins import instance
from tests.standins.kube import CLOUD

pytestmark = pytest.mark.cloud  # among the slowest tests: `-m "not cloud"` skips them

WORKFLOWS = """
workflows:
  - name: train
    provider: bash
    commands:
      - echo training on $(nproc 2>/dev/null || echo some) cpus
      - mkdir -p checkpoint && echo weights > checkpoint/model.txt
    artifacts: ["checkpoint"]
  - name: h100
    provider: bash
    commands: ["echo on an H100", "sleep 900"]
    resources: {gpu: {count: 2, name: H100}, shm_size: 8GB, cpu: 4, memory: 16GB}
  - name: a10g
    provider: bash
    commands: ["echo on an A10G", "sleep 900"]
    resources: {gpu: {count: 1, name: A10G}}
  - name: a100
    provider: bash
    commands: ["echo never"]
    resources: {gpu: {count: 4, name: A100}}
  - name: sleeper
    provider: bash
    commands: ["echo sleeping", "sleep 900"]
  - name: fail
    provider: bash
    commands: ["echo about to fail", "exit 3"]
  - name: env
    provider: bash
    commands: ["env"]
  - name: api
    provider: fastapi
    app: main:app
"""
FILES = {
    "main.py": """
        from fastapi import FastAPI
        app = FastAPI()

        @app.get("/")
        def root() -> dict:
            return {"hello": "from the pod"}
    """,
}
APP_URL = re.compile(r"is at (http://\S+)")


def user(home: Path, tmp_path: Path, world: KubeWorld, wheel: Path) -> KubeDstack:
    """A user with the project and the profile `k8s` (the default) on the test's namespace."""
    project = write_project(tmp_path / "project", WORKFLOWS, FILES)
    dstack = KubeDstack(home, project, world, {"DSTACK_WHEEL": str(wheel)})
    added = dstack("config", "add", "kubernetes", "k8s", "--kubeconfig", str(world.kubeconfig),
                   "--store", world.store_url, "--default")
    assert f"namespace {world.namespace}" in added.stderr, added.stderr
    assert "version v1.36.3" in added.stderr, added.stderr
    return dstack


def sleeping(dstack: KubeDstack, tmp_path: Path
             ) -> tuple[subprocess.Popen[bytes], str, tuple[Path, Path]]:
    """`dstack run sleeper` in the background, once its job runs: the process, the run's
    name, and the files of its stdout and stderr."""
    out, err = tmp_path / "sleeper.out", tmp_path / "sleeper.err"
    proc = dstack.popen("run", "sleeper", out=out, err=err)
    wait_for("the job's first line", lambda: "sleeping" in out.read_text(), 300)
    return proc, SUBMITTED.search(run_output(out, err))[1], (out, err)  # type: ignore[index]


def state_text(home: Path) -> str:
    """Every Pulumi state file of the home, as text."""
    folder = home / "state" / ".pulumi"
    return "".join(p.read_text() for p in folder.rglob("*.json")) if folder.is_dir() else ""


@pytest.mark.timeout(900)
def test_a_new_profile_from_the_dry_run_to_a_run_whose_artifacts_reach_the_store(
        home: Path, tmp_path: Path, kube_world: KubeWorld,  # noqa: F811
        dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, kube_world, dstack_wheel)

    # The dry run names the node pool and every object, and creates nothing.
    plan = json.loads(dstack("run", "h100", "--dry-run").stdout)
    [stack] = plan["stacks"]
    kinds = [r["type"] for r in stack["resources"]]
    assert kinds == ["kubernetes:core/v1:Secret", "kubernetes:core/v1:Pod",
                     "kubernetes:networking.k8s.io/v1:NetworkPolicy"]
    pod = stack["resources"][1]
    assert "NVIDIA-H100-80GB-HBM3" in pod["node_pool"] and "gpu-h100-0" in pod["node_pool"]
    assert not (home / "state" / ".pulumi" / "stacks").exists()
    assert kube_world.objects() == []

    # A run: its output, exit code, artifacts in the store, its stack destroyed.
    ran = dstack("run", "train", timeout=300)
    assert "training on" in ran.stdout
    name = SUBMITTED.search(ran.stderr)[1]  # type: ignore[index]
    assert kube_world.keys(f"runs/{name}/artifacts/checkpoint/model.txt")
    record = dstack.record(name)
    assert record["status"] == "done" and record["torn_down"] is True
    assert record["instance"]["node"] == "cpu-0"  # no GPU asked: not on a tainted GPU node
    assert kube_world.objects() == []
    listed = dstack.json("artifacts", "list", name)
    assert [f["path"] for f in listed["files"]] == ["checkpoint/model.txt"]

    # The job's environment holds no credential of the store (the bootstrap moved them).
    dumped = dstack("run", "env", timeout=300)
    assert "DSTACK_RUN=" in dumped.stdout
    assert USER_SECRET not in dumped.stdout and "AWS_SECRET_ACCESS_KEY" not in dumped.stdout

    # A failing job: its exit code, and nothing left.
    failed = dstack("run", "fail", expect=3, timeout=300)
    assert "about to fail" in failed.stdout
    assert kube_world.objects() == []

    # audit lists the pod created and deleted; the state never holds the store's secret.
    trail = dstack.json("audit", name)
    assert ("create", "kubernetes:core/v1:Pod") in resources_of(trail, "up")
    assert ("delete", "kubernetes:core/v1:Pod") in resources_of(trail, "destroy")
    assert ("create", "kubernetes:core/v1:Secret") in resources_of(trail, "up")
    text = state_text(home)
    assert "kubernetes:core/v1:Secret" in text and USER_SECRET not in text


@pytest.mark.timeout(900)
def test_pods_are_placed_by_gpu_count_and_model_with_their_policy_and_secret(
        home: Path, tmp_path: Path, kube_world: KubeWorld,  # noqa: F811
        dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, kube_world, dstack_wheel)
    dstack("config", "set", "k8s", "caller_cidr", "203.0.113.7")
    h100 = dstack.run_detached("h100")
    a10g = dstack.run_detached("a10g")
    pod = wait_pod(kube_world, f"dstack-{h100}")
    assert pod["spec"]["nodeName"] == "gpu-h100-0"
    assert wait_pod(kube_world, f"dstack-{a10g}")["spec"]["nodeName"] == "gpu-a10g-0"

    spec = pod["spec"]
    [container] = spec["containers"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16G",
                                                  "nvidia.com/gpu": "2"}
    terms = spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "nvidia.com/gpu.product",
                                            "operator": "In",
                                            "values": ["NVIDIA-H100-80GB-HBM3"]}]}]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
        in spec["tolerations"]
    [shm] = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8G"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]

    # The Secret holds the store's credentials; the pod takes it as its environment, and
    # the bootstrap (the pod's command) holds no secret.
    secret_name = container["envFrom"][0]["secretRef"]["name"]
    secret = kube_world.cluster.get(
        f"/api/v1/namespaces/{kube_world.namespace}/secrets/{secret_name}")
    assert secret is not None and set(secret["data"]) >= {"AWS_ACCESS_KEY_ID",
                                                          "AWS_SECRET_ACCESS_KEY"}
    assert USER_SECRET not in json.dumps(container)
    assert USER_SECRET not in state_text(home)

    # The policy admits nothing (the jobs serve no app): the analogue of the firewall.
    policy = kube_world.cluster.get(f"/apis/networking.k8s.io/v1/namespaces/"
                                    f"{kube_world.namespace}/networkpolicies/dstack-{h100}")
    assert policy is not None
    assert policy["spec"]["podSelector"] == {"matchLabels": {"dstack.ai/run": h100}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"].get("ingress") in (None, [])

    wait_for("the H100 job's line", lambda: "on an H100" in dstack("logs", h100).stdout, 120)
    dstack("stop", h100, "--abort", "-y", timeout=300)
    dstack("stop", a10g, "--abort", "-y", timeout=300)
    for run in (h100, a10g):
        wait_for(f"{run} torn down", lambda run=run: dstack.record(run)["torn_down"], 120)
    assert kube_world.objects() == []


@pytest.mark.timeout(900)
def test_what_the_cluster_cannot_place_is_refused_with_the_schedulers_reason(
        home: Path, tmp_path: Path, kube_world: KubeWorld,  # noqa: F811
        dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, kube_world, dstack_wheel)

    # No node has the model: refused before anything is created, with what the cluster has.
    refused = dstack("run", "a100", expect=2)
    assert "no node of cluster test fits 4\N{MULTIPLICATION SIGN} A100" in refused.stderr
    assert "NVIDIA-A10G" in refused.stderr and "NVIDIA-H100-80GB-HBM3" in refused.stderr
    assert not (home / "state" / ".pulumi" / "stacks").exists()

    # The one A10G is taken: the scheduler's reason, within the profile's wait, and the
    # second run's stack is destroyed while the first runs on.
    first = dstack.run_detached("a10g")
    wait_pod(kube_world, f"dstack-{first}")
    dstack("config", "set", "k8s", "schedule_timeout", "60s")
    second = dstack("run", "a10g", expect=1, timeout=300)
    assert "did not start pod" in second.stderr
    assert "Insufficient nvidia.com/gpu" in second.stderr, second.stderr
    name = SUBMITTED.search(second.stderr)[1]  # type: ignore[index]
    record = dstack.record(name)
    assert record["status"] == "failed" and record["torn_down"] is True
    assert "Insufficient nvidia.com/gpu" in record["message"]
    assert [o for o in kube_world.objects() if name in o] == []
    assert dstack.record(first)["status"] == "running"
    dstack("stop", first, "--abort", "-y", timeout=300)
    wait_for("the first run torn down", lambda: dstack.record(first)["torn_down"], 120)


@pytest.mark.timeout(900)
def test_a_cli_killed_while_the_job_runs_leaves_nothing_after_the_job_ends_and_gc(
        home: Path, tmp_path: Path, kube_world: KubeWorld,  # noqa: F811
        dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, kube_world, dstack_wheel)
    proc, name, _ = sleeping(dstack, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dstack("gc", timeout=300)
    assert dstack.ps(name)[0]["status"] == "running"  # a live job is not cut short
    assert f"Pod/dstack-{name}" in kube_world.objects()
    dstack("stop", name, "--abort", "-y", timeout=300)
    dstack("gc", timeout=300)
    record = dstack.record(name)
    assert record["torn_down"] is True and record["status"] in ("stopped", "aborted")
    assert kube_world.objects() == []
    assert wait_exit(proc, 5) == -signal.SIGKILL


def get_json(url: str, out: Path, err: Path) -> object:
    """The JSON an HTTP GET of `url` answers; on a failure, what the `dstack` that holds the
    port-forward (writing `out` and `err`) printed is in the error."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except OSError as exc:
        raise AssertionError(f"GET {url}: {exc!r}\n{run_output(out, err)}") from exc


@pytest.mark.timeout(900)
def test_an_app_answers_through_a_port_forward_and_connect_opens_it_again(
        home: Path, tmp_path: Path, kube_world: KubeWorld,  # noqa: F811
        dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, kube_world, dstack_wheel)

    # `dstack run` holds a port-forward through the API server and prints a local URL.
    out, err = tmp_path / "api.out", tmp_path / "api.err"
    proc = dstack.popen("run", "api", out=out, err=err)
    url = wait_for("the app's URL", lambda: APP_URL.search(run_output(out, err)), 300)[1]
    assert url.startswith("http://127.0.0.1:"), url
    assert get_json(url, out, err) == {"hello": "from the pod"}
    name = SUBMITTED.search(run_output(out, err))[1]  # type: ignore[index]
    service = kube_world.cluster.get(
        f"/api/v1/namespaces/{kube_world.namespace}/services/dstack-{name}")
    assert service is not None and service["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in service["spec"]["ports"]] == [8000]
    policy = kube_world.cluster.get(f"/apis/networking.k8s.io/v1/namespaces/"
                                    f"{kube_world.namespace}/networkpolicies/dstack-{name}")
    assert policy is not None and policy["spec"].get("ingress") in (None, [])
    dstack("stop", name, "-y")
    assert wait_exit(proc, 120) == 128 + 15, run_output(out, err)  # the app got SIGTERM
    assert kube_world.objects() == []

    # A detached run: `dstack connect` opens it again, until Ctrl-C.
    detached = dstack.run_detached("api")
    out, err = tmp_path / "connect.out", tmp_path / "connect.err"
    connect = dstack.popen("connect", detached, out=out, err=err)
    url = wait_for("the app's URL", lambda: APP_URL.search(run_output(out, err)), 300)[1]
    assert get_json(url, out, err) == {"hello": "from the pod"}
    connect.send_signal(signal.SIGINT)
    assert wait_exit(connect, 30) == 130, run_output(out, err)
    assert dstack.record(detached)["status"] == "running"  # closing the tunnel keeps the run
    dstack("stop", detached, "-y", timeout=300)
    assert kube_world.objects() == []
    refused = dstack("connect", detached, expect=2)
    assert f"run {detached} is stopped" in refused.stderr


@pytest.mark.timeout(300)
def test_adding_a_profile_checks_the_kubeconfig_cluster_namespace_permissions_and_store(
        home: Path, tmp_path: Path, kube_world: KubeWorld) -> None:  # noqa: F811
    project = write_project(tmp_path / "project", WORKFLOWS, FILES)
    dstack = KubeDstack(home, project, kube_world)
    store = ("--store", kube_world.store_url)

    def add(kubeconfig: Path, *extra: str, expect: int) -> str:
        return dstack("config", "add", "kubernetes", "k8s", "--kubeconfig", str(kubeconfig),
                      *extra, expect=expect).stderr

    assert "--kubeconfig" in add(tmp_path / "missing", *store, expect=2)
    down = tmp_path / "down.kubeconfig"
    port = kube.free_port()
    kube.write_kubeconfig(down, f"https://127.0.0.1:{port}", "x")
    said = add(down, *store, expect=1)
    assert f"does not answer at https://127.0.0.1:{port}" in said, said
    said = add(kube_world.kubeconfig, *store, "--namespace", "nope", expect=2)
    assert "namespace 'nope' does not exist in cluster test" in said, said
    viewer = tmp_path / "viewer.kubeconfig"
    kube.write_kubeconfig(viewer, kube_world.cluster.server,
                          kube_world.cluster.viewer_token, kube_world.namespace)
    said = add(viewer, *store, expect=2)
    assert "may not: get pods, create pods" in said and "list nodes" in said, said
    ns = kube_world.namespace
    kube_world.cluster.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
                               {"metadata": {"name": "pods-only"}, "rules": [
                                   {"apiGroups": [""], "resources": ["pods", "pods/portforward"],
                                    "verbs": ["get", "create", "patch", "delete"]}]})
    kube_world.cluster.request(
        "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
        {"metadata": {"name": "viewer-pods"}, "subjects": [{"kind": "User", "name": "viewer"}],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "pods-only"}})
    said = add(viewer, *store, expect=2)
    assert "may not: get secrets, create secrets" in said and "pods" not in said, said
    said = add(kube_world.kubeconfig, "--store", "file:///tmp/store", expect=2)
    assert "not an s3:// or gs:// URL" in said, said
    assert [p["name"] for p in dstack.json("config", "list")] == ["local"]


@pytest.mark.timeout(600)
def test_a_pod_killed_on_its_node_fails_the_run_with_the_clusters_words(
        home: Path, tmp_path: Path, kube_world: KubeWorld,  # noqa: F811
        dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, kube_world, dstack_wheel)
    proc, name, (out, err) = sleeping(dstack, tmp_path)
    [killed] = [i for i, (_, pod) in kube_world.kubelet.launched.items()
                if pod == f"dstack-{name}"]
    instance.terminate(CLOUD, killed)  # the node ends the container, as an OOM kill would
    assert wait_exit(proc, 120) == 1, run_output(out, err)
    assert (f"the runner stopped before the job finished: its pod dstack-{name} failed: "
            "container job ended: Error, exit code 137") in err.read_text(), err.read_text()
    record = dstack.record(name)
    assert record["status"] == "failed" and record["torn_down"] is True
    assert kube_world.objects() == []
