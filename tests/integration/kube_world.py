"""A Kubernetes cluster for end-to-end tests of `dstack ... --profile k8s` through the CLI.

The session starts one real control plane (`tests/kube/cluster.py`: etcd, kube-apiserver,
controller manager, scheduler, kwok with fake GPU nodes) and stops it at the end. Each test
gets a namespace of its own, a fresh S3 server (moto) as the store, a world folder where the
stand-in kubelet (`tests/standins/kube.py`) runs the pods' commands as local instances on
the baked image, and a `dstack` whose PATH finds the built `pulumi-resource-kubernetes`
first. The user's side is a new user's: a kubeconfig file, and a named AWS profile in their
own AWS files for the store.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Dstack, poll
from tests.integration.servers import _stop, start_moto
from tests.kube import cluster as kube
from tests.standins import instance
from tests.standins.kube import CLOUD, Kubelet

STORE_BUCKET = "dstack-k8s"
USER_SECRET = "user-secret-key-value-k8s-0123456789"
"""The user's AWS secret key for the store: it must never appear in plain text."""
_NAMESPACES = itertools.count(1)


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kube.Cluster]:
    """The session's control plane, stopped at the end (nothing is left running)."""
    cluster = kube.start(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class KubeWorld:
    """One test's part of the cluster: its namespace, store and stand-in kubelet."""

    cluster: kube.Cluster
    namespace: str
    kubeconfig: Path
    store_url: str
    endpoint: str
    world: Path
    kubelet: Kubelet
    env: dict[str, str]

    def objects(self) -> list[str]:
        """`Kind/name` of the pods, secrets, services and policies of the namespace."""
        return self.cluster.objects(self.namespace)

    def pod(self, name: str) -> dict[str, Any] | None:
        """The pod's object; None when there is none."""
        return self.cluster.get(f"/api/v1/namespaces/{self.namespace}/pods/{name}")

    def s3(self) -> Any:
        """A boto3 client of the store's server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys(self, prefix: str) -> list[str]:
        """Keys of the store's bucket under `prefix`."""
        found = self.s3().list_objects_v2(Bucket=STORE_BUCKET, Prefix=prefix)
        return [o["Key"] for o in found.get("Contents", [])]

    def read(self, key: str) -> bytes:
        """An object of the store's bucket."""
        return bytes(self.s3().get_object(Bucket=STORE_BUCKET, Key=key)["Body"].read())

    def running(self) -> list[str]:
        """Instances (pods' processes) still running."""
        folder = self.world / "instances"
        if not folder.is_dir():
            return []
        return [p.name for p in folder.iterdir()
                if instance.state(CLOUD, p.name.split("-", 1)[1]) == "running"]


def _user_files(tmp: Path) -> dict[str, str]:
    """The user's AWS files with the profile `store` for the S3 server."""
    (tmp / "aws").mkdir(parents=True, exist_ok=True)
    creds, config = tmp / "aws" / "credentials", tmp / "aws" / "config"
    creds.write_text("[store]\naws_access_key_id = AKIASTOREKEY0000000\n"
                     f"aws_secret_access_key = {USER_SECRET}\n")
    config.write_text("[profile store]\nregion = us-east-1\n")
    return {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": str(config)}


@pytest.fixture
def kube_world(tmp_path: Path, kube_cluster: kube.Cluster, baked_image: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeWorld]:
    """A namespace, a store and a stand-in kubelet for one test; afterwards no pod's
    process may still run, and the namespace must hold no object dstack made."""
    import boto3

    namespace = f"t{next(_NAMESPACES)}-{os.getpid()}"
    kube_cluster.create_namespace(namespace)
    url, proc = start_moto(tmp_path / "moto.log")
    boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing"
                 ).create_bucket(Bucket=STORE_BUCKET)
    world = tmp_path / "world"
    world.mkdir()
    monkeypatch.setenv(instance.WORLD_ENV, str(world))
    kubeconfig = tmp_path / "kubeconfig"
    kube.write_kubeconfig(kubeconfig, kube_cluster.server, kube_cluster.token, namespace)
    env = {**_user_files(tmp_path), instance.WORLD_ENV: str(world),
           "AWS_EC2_METADATA_DISABLED": "true"}
    kubelet = Kubelet(kube_cluster, baked_image, {}).start()
    found = KubeWorld(cluster=kube_cluster, namespace=namespace, kubeconfig=kubeconfig,
                      store_url=f"s3://{STORE_BUCKET}?endpoint_url={url}&region=us-east-1"
                                f"&profile=store",
                      endpoint=url, world=world, kubelet=kubelet, env=env)
    try:
        yield found
        assert not kubelet.errors, kubelet.errors
        assert found.running() == [], "pods' processes still running after the test"
        assert [o for o in found.objects() if "dstack-" in o] == []
    finally:
        kubelet.stop()
        _stop(proc)
        # A failed test's pods would hold the nodes' GPUs for the next tests.
        kube_cluster.request("DELETE", f"/api/v1/namespaces/{namespace}/pods")


class KubeDstack(Dstack):
    """`dstack` as the user of a cluster runs it: the built Kubernetes plugin first on PATH,
    the user's AWS files, no AWS credentials in the environment."""

    def __init__(self, home: Path, project: Path, world: KubeWorld,
                 extra: dict[str, str] | None = None) -> None:
        super().__init__(home, project)
        self.world = world
        self.extra = extra or {}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in super().env().items()
               if not k.startswith("AWS_") and k != "DSTACK_S3_ENDPOINT_URL"}
        env.update(self.world.env)
        env.update(self.extra)
        env["PATH"] = f"{kube.tools()}{os.pathsep}{env.get('PATH', '')}"
        return env

    def record(self, run: str) -> dict[str, Any]:
        """The run's document, read from the store's bucket (without the CLI)."""
        loaded: dict[str, Any] = json.loads(self.world.read(f"runs/{run}/run.json"))
        return loaded


def wait_pod(world: KubeWorld, name: str, phase: str = "Running",
             timeout: float = 60) -> dict[str, Any]:
    """The pod once its phase is `phase`."""
    def check() -> dict[str, Any] | None:
        pod = world.pod(name)
        return pod if pod and pod.get("status", {}).get("phase") == phase else None
    found: dict[str, Any] = poll(f"pod {name} to be {phase}", check, timeout, every=0.3)
    return found
