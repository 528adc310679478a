"""Offers of a Kubernetes cluster: its nodes, grouped into pools, and which of them fit a job.

A node's offer is what it can allocate (CPUs, memory, `nvidia.com/gpu`) and the GPU model
that GPU discovery labels it with (`nvidia.com/gpu.product`, `nvidia.com/gpu.memory` in MiB).
Nodes alike in all of these form one pool. A job fits a pool when a node of it can allocate
what the job's `resources` ask; the run's pod is then pinned to the pool's GPU model by a
required node affinity, and the scheduler picks the node. No price: the cluster is the
user's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dstack.catalogue.offers import gpu_name_key
from dstack.errors import UsageError
from dstack.sizes import format_size
from dstack.spec.models import Resources

GPU_RESOURCE = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
"""MiB of memory of each GPU, as GPU feature discovery labels a node."""
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)([a-zA-Z]*)$")
_UNITS = {"": 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def quantity(text: str) -> float:
    """A Kubernetes quantity (`500m`, `64Gi`, `8`) as a number; ValueError when it is not."""
    match = _QUANTITY.match(str(text).strip())
    if not match or match[2] not in _UNITS:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return float(match[1]) * _UNITS[match[2]]


@dataclass(frozen=True)
class NodePool:
    """Nodes alike in what they can allocate and in their GPU model."""

    nodes: tuple[str, ...]
    cpus: float
    memory: int
    gpus: int
    gpu_product: str | None
    gpu_memory_mib: int | None

    def describe(self) -> str:
        """`8x NVIDIA-H100-80GB-HBM3, 96 CPUs, 1TiB (1 node: gpu-h100-0)` (with a times sign)."""
        gpus = f"{self.gpus}\N{MULTIPLICATION SIGN} {self.gpu_product or 'GPU'}, " \
            if self.gpus else "no GPU, "
        count = len(self.nodes)
        names = ", ".join(self.nodes[:3]) + (", ..." if count > 3 else "")
        return (f"{gpus}{self.cpus:g} CPUs, {format_size(self.memory)} "
                f"({count} node{'s' if count != 1 else ''}: {names})")


def node_pools(nodes: Iterable[Mapping[str, object]]) -> list[NodePool]:
    """The pools of the cluster's schedulable nodes (Node objects as the API returns them)."""
    groups: dict[tuple[float, int, int, str | None, int | None], list[str]] = {}
    for node in nodes:
        meta = _mapping(node.get("metadata"))
        spec, status = _mapping(node.get("spec")), _mapping(node.get("status"))
        if spec.get("unschedulable"):
            continue
        labels = _mapping(meta.get("labels"))
        alloc = _mapping(status.get("allocatable"))
        try:
            cpus = quantity(str(alloc.get("cpu", "0")))
            memory = int(quantity(str(alloc.get("memory", "0"))))
            gpus = int(quantity(str(alloc.get(GPU_RESOURCE, "0"))))
        except ValueError:
            continue
        product = str(labels[PRODUCT_LABEL]) if gpus and labels.get(PRODUCT_LABEL) else None
        mem = str(labels.get(GPU_MEMORY_LABEL, ""))
        key = (cpus, memory, gpus, product, int(mem) if gpus and mem.isdigit() else None)
        groups.setdefault(key, []).append(str(meta.get("name")))
    pools = [NodePool(tuple(sorted(names)), *key) for key, names in groups.items()]
    return sorted(pools, key=lambda p: (p.gpus == 0, p.gpu_product or "", -p.gpus, p.nodes))


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def product_key(product: str, memory_mib: int | None) -> tuple[str, int | None]:
    """A GPU product label as matching sees it: `NVIDIA-H100-80GB-HBM3` → ("h100", 80)."""
    words = [w for w in re.split(r"[\s_-]+", product.lower()) if w not in ("", "nvidia", "tesla")]
    gib = next((int(m[1]) for w in words if (m := re.match(r"^(\d+)g(?:i?b)?$", w))), None)
    if gib is None and memory_mib:
        gib = round(memory_mib / 1024)
    return (words[0] if words else ""), gib


def fits(pool: NodePool, resources: Resources) -> bool:
    """Whether one node of `pool` can allocate what `resources` ask."""
    gpu = resources.gpu
    if (resources.cpu or 1) > pool.cpus or (resources.memory or 0) > pool.memory:
        return False
    if gpu is None:
        return pool.gpus == 0
    if gpu.count > pool.gpus:
        return False
    have_model, have_gib = product_key(pool.gpu_product or "", pool.gpu_memory_mib)
    if gpu.name:
        want_model, want_gib = gpu_name_key(gpu.name)
        if want_model != have_model or (want_gib is not None and want_gib != have_gib):
            return False
    if gpu.memory_bytes:
        return have_gib is not None and have_gib * 2**30 >= gpu.memory_bytes * 0.95
    return True


def fitting_pools(pools: list[NodePool], resources: Resources, cluster: str) -> list[NodePool]:
    """The pools a job fits, best first (fewest GPUs that do); a UsageError that lists what
    the cluster has when none does."""
    found = sorted((p for p in pools if fits(p, resources)), key=lambda p: (p.gpus, p.cpus))
    if found:
        return found
    have = "; ".join(p.describe() for p in pools) or "no schedulable node"
    raise UsageError(f"no node of cluster {cluster} fits {describe_need(resources)}",
                     f"The cluster has: {have}. Ask for what one node has, or add nodes.")


def describe_need(resources: Resources) -> str:
    """`2x H100, 8 CPUs, 64GiB` or `1 CPU` (what a refusal names; with a times sign)."""
    gpu = resources.gpu
    parts = []
    if gpu:
        parts.append(f"{gpu.count}\N{MULTIPLICATION SIGN} {gpu.name or 'GPU'}" +
                     (f" ({format_size(gpu.memory_bytes)})" if gpu.memory_bytes else ""))
    parts.append(f"{resources.cpu or 1} CPU{'s' if (resources.cpu or 1) != 1 else ''}")
    if resources.memory:
        parts.append(format_size(resources.memory))
    return ", ".join(parts)
