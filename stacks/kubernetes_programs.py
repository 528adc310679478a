"""The Kubernetes run program: one run's pod and what it needs, in the profile's namespace.

A plain function of a frozen config, so tests run it under Pulumi's mocks and the backend
hands `lambda: run_program(config)` to the engine. Every object goes through an explicit
`kubernetes.Provider` that reads the profile's kubeconfig file where it is (its path, not its
content, is in the provider's state) and its context.

Run `run-<name>`:
- a Secret `dstack-<run>` with the store's credentials, as Pulumi secrets (encrypted in the
  state), that the pod takes as its environment;
- a Pod `dstack-<run>` with `restartPolicy: Never` whose command is the bootstrap: the
  image, cpu and memory requests, `nvidia.com/gpu` in requests and limits, a required node
  affinity on the GPU model label, a toleration of the GPU taint, `/dev/shm` an in-memory
  emptyDir sized by `shm_size`, no service-account token, `activeDeadlineSeconds` the
  workflow's `max_duration`. Pulumi does not wait for it (`pulumi.com/skipAwait`): dstack
  waits itself, and reports the scheduler's reason when the pod cannot be placed;
- a NetworkPolicy that selects the pod: no ingress but the app ports, from the caller's
  address only (the Kubernetes analogue of the cloud firewall);
- a ClusterIP Service for the app ports, when the job serves any.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from dstack.stacks.kube_offers import GPU_RESOURCE, PRODUCT_LABEL

RUN_LABEL = "dstack.ai/run"
GPU_TAINT_KEY = "nvidia.com/gpu"


@dataclass(frozen=True)
class KubeRun:
    """What one run's program declares."""

    run: str
    workflow: str | None
    profile: str
    kubeconfig: str
    context: str | None
    namespace: str
    image: str
    bootstrap: str
    store_env: tuple[tuple[str, str], ...]
    """The store's credentials (NAME, value): only ever in the Secret, as Pulumi secrets."""
    cpu: int = 1
    memory: int | None = None
    gpus: int = 0
    gpu_products: tuple[str, ...] = ()
    """The GPU models the pod may land on (node affinity); empty: any node with GPUs."""
    shm_size: int | None = None
    app_ports: tuple[int, ...] = ()
    caller_cidr: str | None = None
    max_duration_s: int = 72 * 3600

    @property
    def object_name(self) -> str:
        """The name of the run's pod, Secret, Service and NetworkPolicy."""
        return object_name(self.run)


def object_name(run: str) -> str:
    """`dstack-<run>`: the name of a run's pod, Secret, Service and NetworkPolicy."""
    return f"dstack-{run}"[:63].rstrip("-.")


def provider(cfg: KubeRun) -> k8s.Provider:
    """The explicit provider of every object: the kubeconfig by path, its context and the
    profile's namespace."""
    return k8s.Provider("cluster", kubeconfig=cfg.kubeconfig, context=cfg.context,
                        namespace=cfg.namespace)


def labels(cfg: KubeRun) -> dict[str, str]:
    """Labels of every object of the run (the pod's select it for the policy and Service)."""
    return {RUN_LABEL: cfg.run, "app.kubernetes.io/managed-by": "dstack",
            "dstack.ai/profile": cfg.profile[:63]}


def container_resources(cfg: KubeRun) -> dict[str, dict[str, str]]:
    """Requests (and, for GPUs, limits) of the job's container."""
    requests = {"cpu": str(cfg.cpu)}
    if cfg.memory:
        requests["memory"] = str(cfg.memory)
    limits: dict[str, str] = {}
    if cfg.gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(cfg.gpus)
    return {"requests": requests, **({"limits": limits} if limits else {})}


def pod_spec(cfg: KubeRun, secret_name: pulumi.Input[str]) -> dict[str, object]:
    """The pod's spec (as the provider takes it, in its snake-case keys)."""
    shm: dict[str, object] = {"medium": "Memory"}
    if cfg.shm_size:
        shm["size_limit"] = str(cfg.shm_size)
    spec: dict[str, object] = {
        "restart_policy": "Never",
        "automount_service_account_token": False,
        "enable_service_links": False,
        "active_deadline_seconds": cfg.max_duration_s,
        "termination_grace_period_seconds": 30,
        "containers": [{
            "name": "job", "image": cfg.image, "command": ["/bin/bash", "-c", cfg.bootstrap],
            "env_from": [{"secret_ref": {"name": secret_name}}],
            "resources": container_resources(cfg),
            "ports": [{"container_port": p, "name": f"app-{i}"}
                      for i, p in enumerate(cfg.app_ports)],
            "volume_mounts": [{"name": "dshm", "mount_path": "/dev/shm"}],
        }],
        "volumes": [{"name": "dshm", "empty_dir": shm}],
    }
    if cfg.gpus:
        spec["tolerations"] = [{"key": GPU_TAINT_KEY, "operator": "Exists",
                                "effect": "NoSchedule"}]
    if cfg.gpu_products:
        spec["affinity"] = {"node_affinity": {
            "required_during_scheduling_ignored_during_execution": {"node_selector_terms": [{
                "match_expressions": [{"key": PRODUCT_LABEL, "operator": "In",
                                       "values": list(cfg.gpu_products)}]}]}}}
    return spec


def run_program(cfg: KubeRun) -> None:
    """Declare one run: Secret, Pod, NetworkPolicy and (with app ports) Service."""
    opts = pulumi.ResourceOptions(provider=provider(cfg))
    name, tags = cfg.object_name, labels(cfg)
    meta = {"name": name, "namespace": cfg.namespace, "labels": tags}
    secret = k8s.core.v1.Secret(
        "store-credentials", metadata=meta, type="Opaque",
        string_data={key: pulumi.Output.secret(value) for key, value in cfg.store_env},
        opts=opts)
    pod = k8s.core.v1.Pod(
        "job", metadata={**meta, "annotations": {"pulumi.com/skipAwait": "true",
                                                  "dstack.ai/workflow": cfg.workflow or ""}},
        spec=pod_spec(cfg, secret.metadata.name), opts=opts)
    ingress = [{"from_": [{"ip_block": {"cidr": cfg.caller_cidr}}],
                "ports": [{"protocol": "TCP", "port": p} for p in cfg.app_ports]}] \
        if cfg.app_ports and cfg.caller_cidr else []
    k8s.networking.v1.NetworkPolicy(
        "firewall", metadata=meta,
        spec={"pod_selector": {"match_labels": {RUN_LABEL: cfg.run}},
              "policy_types": ["Ingress"], "ingress": ingress}, opts=opts)
    if cfg.app_ports:
        k8s.core.v1.Service(
            "apps", metadata=meta,
            spec={"type": "ClusterIP", "selector": {RUN_LABEL: cfg.run},
                  "ports": [{"name": f"app-{i}", "port": p, "target_port": p}
                            for i, p in enumerate(cfg.app_ports)]},
            opts=opts)
    pulumi.export("pod", pod.metadata.name)
    pulumi.export("namespace", cfg.namespace)
