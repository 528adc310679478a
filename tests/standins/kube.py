"""The stand-in kubelet of the Kubernetes tests: runs the command of each pod that kwok marks
Running, as a local instance (`tests.standins.instance`), the way the stand-in clouds run an
instance's user-data.

kwok plays the nodes (Ready, heartbeats) and moves a pod the real scheduler placed to
Running; it runs nothing. `Kubelet` polls the API server for such pods and gives each one an
instance whose boot script is the pod's first container's command and arguments, with the
container's environment (values from Secrets resolved as the kubelet resolves them) and the
given image folder as its /opt. When the command exits, the pod's status becomes Succeeded or
Failed with the exit code, as a kubelet reports it; when the pod is deleted, its instance is
terminated. Not played: volumes (a Secret volume, the /dev/shm emptyDir), resource limits,
`activeDeadlineSeconds`.
"""

from __future__ import annotations

import base64
import contextlib
import shlex
import threading
import urllib.error
from datetime import datetime, timezone
from pathlib import Path

from tests.kube.cluster import FAKE_NODE, Cluster
from tests.standins import instance

CLOUD = "kube"


def powered_off(instance_id: str) -> None:
    """Called by an instance's supervisor when the pod's command ended; `Kubelet` reports it
    (it reads the exit code the instance wrote)."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    """Runs the pods of the cluster's fake nodes until `stop()`."""

    def __init__(self, cluster: Cluster, image: Path | None, env: dict[str, str]) -> None:
        self.cluster = cluster
        self.image = image
        self.env = env
        """What every pod's process gets besides its own env (how to reach the store)."""
        self.launched: dict[str, tuple[str, str]] = {}
        """instance id → (namespace, pod name)."""
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="standin-kubelet", daemon=True)
        self._fake = {n["metadata"]["name"] for n in cluster.items("/api/v1/nodes")  # type: ignore[index]
                      if (n["metadata"].get("annotations") or {}).get(FAKE_NODE[0])  # type: ignore[index]
                      == FAKE_NODE[1]}

    def start(self) -> Kubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and terminate every instance still running."""
        self._stop.set()
        self._thread.join(30)
        for instance_id in list(self.launched):
            instance.terminate(CLOUD, instance_id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
                self.errors.append(repr(exc))
            self._stop.wait(0.3)

    def _sync(self) -> None:
        pods = {}
        for pod in self.cluster.items("/api/v1/pods"):
            spec = pod["spec"]
            if spec.get("nodeName") in self._fake:  # type: ignore[union-attr]
                pods[_instance_id(pod)] = pod
        for instance_id, pod in pods.items():
            deleting = bool(pod["metadata"].get("deletionTimestamp"))  # type: ignore[union-attr]
            phase = (pod.get("status") or {}).get("phase")  # type: ignore[union-attr]
            if instance_id not in self.launched and phase == "Running" and not deleting:
                self._launch(instance_id, pod)
            elif instance_id in self.launched and deleting:
                instance.terminate(CLOUD, instance_id)
                del self.launched[instance_id]
            elif instance_id in self.launched and phase == "Running" and \
                    instance.state(CLOUD, instance_id) == "terminated":
                self._report_end(instance_id, pod)
        for instance_id in set(self.launched) - set(pods):  # deleted outright
            instance.terminate(CLOUD, instance_id)
            del self.launched[instance_id]

    def _launch(self, instance_id: str, pod: dict[str, object]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        container = spec["containers"][0]  # type: ignore[index]
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        where = instance.folder(CLOUD, instance_id)
        script = "\n".join([
            shlex.join(argv),
            f"echo $? > {shlex.quote(str(where / 'exit_code'))}",
            "poweroff",
        ])
        env = {**self.env, **self._container_env(meta["namespace"], container)}  # type: ignore[index]
        instance.launch(instance.Spec(cloud=CLOUD, id=instance_id, script=script,
                                      image=str(self.image) if self.image else None, env=env))
        self.launched[instance_id] = (meta["namespace"], meta["name"])  # type: ignore[index]

    def _container_env(self, namespace: str, container: dict[str, object]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:  # type: ignore[attr-defined]
            if "secretRef" in source:
                env.update(self._secret(namespace, source["secretRef"]["name"]))
        for item in container.get("env") or []:  # type: ignore[attr-defined]
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "secretKeyRef" in (item.get("valueFrom") or {}):
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self._secret(namespace, ref["name"])[ref["key"]]
        return env

    def _secret(self, namespace: str, name: str) -> dict[str, str]:
        found = self.cluster.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        return {k: base64.b64decode(v).decode()
                for k, v in (found.get("data") or {}).items()}  # type: ignore[attr-defined]

    def _report_end(self, instance_id: str, pod: dict[str, object]) -> None:
        """Write the pod's end as a kubelet does: phase and the container's exit code."""
        where = instance.folder(CLOUD, instance_id)
        try:
            code = int((where / "exit_code").read_text().strip())
        except (OSError, ValueError):
            code = 137  # ended without writing its code: killed
        meta, spec = pod["metadata"], pod["spec"]
        container = spec["containers"][0]  # type: ignore[index]
        status = {"status": {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": _now(),
                            "reason": "PodCompleted"}],
            "containerStatuses": [{
                "name": container["name"], "image": container["image"], "ready": False,
                "restartCount": 0, "started": False,
                "state": {"terminated": {"exitCode": code, "finishedAt": _now(),
                                         "reason": "Completed" if code == 0 else "Error"}}}]}}
        with contextlib.suppress(urllib.error.HTTPError):  # deleted meanwhile
            self.cluster.request(
                "PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",  # type: ignore[index]
                status, "application/merge-patch+json")


def _instance_id(pod: dict[str, object]) -> str:
    meta = pod["metadata"]
    return f"{meta['namespace']}.{meta['name']}.{str(meta['uid'])[:8]}"  # type: ignore[index]
