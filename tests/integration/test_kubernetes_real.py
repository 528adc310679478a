"""Tier B: `dstack --profile k8s` with real containers (`make test-real-nodes`, as root; not
part of `make test`).

A control plane of its own (no kwok nodes) and one real node: Debian's containerd and runc
and kubelite's kubelet (tests/kube/realnode.py). The job runs in a container of the locally
built Python image, installs the dstack wheel from the store, and writes its artifacts to the
S3 server on the host, which it reaches over the node's bridge.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.integration.harness import Dstack, poll, write_project
from tests.integration.servers import _stop, start_moto
from tests.integration.standin_clouds import dstack_wheel  # noqa: F401
from tests.integration.test_cloud_runs_aws import SUBMITTED
from tests.kube import cluster as kube
from tests.kube import realnode

pytestmark = pytest.mark.realnodes

BUCKET = "dstack-real"
WORKFLOWS = """
workflows:
  - name: train
    provider: python
    file: train.py
    artifacts: ["checkpoint"]
"""
TRAIN = """
import json, os, platform
os.makedirs("checkpoint", exist_ok=True)
with open("checkpoint/model.json", "w") as f:
    json.dump({"python": platform.python_version(), "host": platform.node()}, f)
print("trained in a container on", platform.node(), flush=True)
"""


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory, dstack_wheel: Path,  # noqa: F811
                 ) -> Iterator[tuple[kube.Cluster, realnode.RealNode]]:
    """A control plane with one real node and no fake ones."""
    if os.geteuid() != 0:
        pytest.fail("the real-node tests need root (namespaces, a bridge, cgroups)")
    image = realnode.python_archive(dstack_wheel)
    folder = tmp_path_factory.mktemp("real")
    cluster = kube.start(folder / "cluster", nodes=())
    try:
        node = realnode.start_node(cluster, folder / "node", image)
        try:
            yield cluster, node
        finally:
            node.stop()
    finally:
        cluster.stop()


@pytest.mark.timeout(1800)
def test_a_job_runs_in_a_real_container_and_its_artifacts_reach_the_store(
        home: Path, tmp_path: Path, dstack_wheel: Path,  # noqa: F811
        real_cluster: tuple[kube.Cluster, realnode.RealNode],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, _ = real_cluster
    url, moto = start_moto(tmp_path / "moto.log", host=realnode.NODE_IP)
    try:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)
        creds = tmp_path / "credentials"
        creds.write_text("[store]\naws_access_key_id = testing\n"
                         "aws_secret_access_key = testing\n")
        project = write_project(tmp_path / "project", WORKFLOWS, {"train.py": TRAIN})
        dstack = Dstack(home, project)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
        monkeypatch.setenv("DSTACK_WHEEL", str(dstack_wheel))
        monkeypatch.setenv("PATH", f"{kube.tools()}{os.pathsep}{os.environ['PATH']}")
        dstack("config", "add", "kubernetes", "real", "--kubeconfig", str(cluster.kubeconfig),
               "--store", f"s3://{BUCKET}?endpoint_url={url}&region=us-east-1&profile=store",
               "--image", realnode.PYTHON_IMAGE, "--default")
        ran = dstack("run", "train", timeout=900)
        assert "trained in a container on dstack-" in ran.stdout, ran.stdout + ran.stderr
        name = SUBMITTED.search(ran.stderr)[1]  # type: ignore[index]
        body = s3.get_object(Bucket=BUCKET, Key=f"runs/{name}/artifacts/checkpoint/model.json")
        model = json.loads(body["Body"].read())
        assert model["host"] == f"dstack-{name}"  # the pod's own hostname: it ran in the pod
        assert model["python"].startswith("3.11")
        # The pod's deletion was asked for with the stack's destroy; the kubelet ends it.
        poll("the run's objects to be gone",
             lambda: not [o for o in cluster.objects("default") if "dstack-" in o], 90)
    finally:
        _stop(moto)
