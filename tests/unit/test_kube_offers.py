"""Offers of a Kubernetes cluster: node pools from Node objects, and which fit a job."""

from __future__ import annotations

import pytest

from dstack.errors import UsageError
from dstack.spec.models import Resources
from dstack.stacks.kube_api import pod_state
from dstack.stacks.kube_offers import fits, fitting_pools, node_pools, product_key, quantity


def node(name: str, cpu: str, memory: str, gpus: int = 0, product: str = "",
         gpu_mib: int = 0, unschedulable: bool = False) -> dict[str, object]:
    labels = {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": str(gpu_mib)} \
        if gpus else {}
    alloc = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": unschedulable}, "status": {"allocatable": alloc}}


NODES = [node("h100-a", "96", "1Ti", 8, "NVIDIA-H100-80GB-HBM3", 81559),
         node("h100-b", "96", "1Ti", 8, "NVIDIA-H100-80GB-HBM3", 81559),
         node("a10g", "15500m", "62Gi", 1, "NVIDIA-A10G", 23028),
         node("cpu", "8", "32Gi"),
         node("cordoned", "8", "32Gi", unschedulable=True)]


def res(**kw: object) -> Resources:
    return Resources.model_validate(kw)


def test_quantities_read_as_kubernetes_writes_them() -> None:
    assert quantity("15500m") == 15.5 and quantity("62Gi") == 62 * 2**30
    assert quantity("16G") == 16e9 and quantity("8") == 8
    with pytest.raises(ValueError):
        quantity("8 cores")


def test_alike_nodes_form_one_pool_and_cordoned_ones_none() -> None:
    pools = node_pools(NODES)
    assert [p.nodes for p in pools] == [("a10g",), ("h100-a", "h100-b"), ("cpu",)]
    assert pools[1].gpus == 8 and pools[1].gpu_product == "NVIDIA-H100-80GB-HBM3"
    assert pools[0].cpus == 15.5


def test_gpu_products_match_the_names_users_write() -> None:
    assert product_key("NVIDIA-H100-80GB-HBM3", 81559) == ("h100", 80)
    assert product_key("NVIDIA-A10G", 23028) == ("a10g", 22)
    assert product_key("Tesla-T4", None) == ("t4", None)


@pytest.mark.parametrize(("asked", "pool"), [
    ({"gpu": {"count": 2, "name": "H100"}}, ("h100-a", "h100-b")),
    ({"gpu": {"count": 1, "name": "h100-80gb"}}, ("h100-a", "h100-b")),
    ({"gpu": 1}, ("a10g",)),  # the fewest GPUs that fit
    ({"gpu": {"count": 1, "memory": "40GB"}}, ("h100-a", "h100-b")),
    ({"cpu": 4, "memory": "16GB"}, ("cpu",)),  # a CPU job never lands on a GPU pool
])
def test_a_job_lands_on_the_best_pool_that_fits(asked: dict[str, object],
                                                pool: tuple[str, ...]) -> None:
    assert fitting_pools(node_pools(NODES), res(**asked), "prod")[0].nodes == pool


def test_a_job_no_node_fits_is_refused_with_what_the_cluster_has() -> None:
    with pytest.raises(UsageError) as caught:
        fitting_pools(node_pools(NODES), res(gpu={"count": 16, "name": "H100"}), "prod")
    assert "no node of cluster prod fits 16\N{MULTIPLICATION SIGN} H100" in caught.value.message
    assert "8\N{MULTIPLICATION SIGN} NVIDIA-H100-80GB-HBM3, 96 CPUs" in str(caught.value.hint)
    assert not fits(node_pools(NODES)[2], res(cpu=9))


def test_a_pods_state_carries_the_schedulers_and_the_kubelets_words() -> None:
    pending = {"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available: 1 Insufficient nvidia.com/gpu."}]}}
    state = pod_state(pending)
    assert state.reason == "0/3 nodes are available: 1 Insufficient nvidia.com/gpu."
    assert not state.failed_to_start and state.node is None
    pulling = {"spec": {"nodeName": "a10g"}, "status": {"phase": "Pending",
               "containerStatuses": [{"state": {"waiting": {
                   "reason": "ImagePullBackOff", "message": "no such image"}}}]}}
    state = pod_state(pulling)
    assert state.failed_to_start and state.reason == "ImagePullBackOff: no such image"
    assert pod_state({"status": {"phase": "Failed", "reason": "DeadlineExceeded"}}).reason \
        == "DeadlineExceeded"
