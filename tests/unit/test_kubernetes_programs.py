"""The Kubernetes run program under Pulumi's mocks: each security invariant of what a run
declares (the real plugin and API server are in tests/integration/test_kubernetes.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pulumi.runtime import rpc

from dstack.stacks.kubernetes_programs import KubeRun, run_program

from . import pulumi_mocks as mocks

SECRET = "planted-store-secret-0123456789"
BASE = KubeRun(run="brave-otter-1", workflow="train", profile="k8s",
               kubeconfig="/home/me/.kube/config", context="prod", namespace="ml",
               image="python:3.11-slim", bootstrap="#!/usr/bin/env bash\nexec runner\n",
               store_env=(("AWS_ACCESS_KEY_ID", "AKIA0"), ("AWS_SECRET_ACCESS_KEY", SECRET)))
POD = "kubernetes:core/v1:Pod"
SECRET_TYPE = "kubernetes:core/v1:Secret"
POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
SERVICE = "kubernetes:core/v1:Service"
SIG_KEY = rpc._special_sig_key
SECRET_SIG = rpc._special_secret_sig
"""Pulumi's marker of a secret value in the resource protocol."""


def declared(cfg: KubeRun) -> mocks.Recorder:
    """What the program declares for `cfg`."""
    return mocks.run_under_mocks(lambda: run_program(cfg), mocks.Recorder())


def pod_spec(rec: mocks.Recorder) -> dict[str, Any]:
    spec: dict[str, Any] = rec.one(POD)["spec"]
    return spec


def test_every_object_goes_through_the_profiles_kubeconfig_by_path_into_its_namespace() -> None:
    rec = declared(BASE)
    [provider] = [r.inputs for r in rec.resources if r.typ == "pulumi:providers:kubernetes"]
    assert provider["kubeconfig"] == "/home/me/.kube/config"  # the path, never its content
    assert provider["context"] == "prod" and provider["namespace"] == "ml"
    for typ in (POD, SECRET_TYPE, POLICY):
        meta = rec.one(typ)["metadata"]
        assert meta["namespace"] == "ml" and meta["name"] == "dstack-brave-otter-1"
        assert meta["labels"]["dstack.ai/run"] == "brave-otter-1"
    assert rec.of_type(SERVICE) == []  # no app port, no Service


def test_the_store_credentials_are_only_in_the_secret_which_the_pod_takes_as_env() -> None:
    rec = declared(BASE)
    data = rec.one(SECRET_TYPE)["stringData"]
    # A Pulumi secret, as the engine receives it: encrypted in the state, masked in output.
    assert data[SIG_KEY] == SECRET_SIG
    assert data["value"]["AWS_SECRET_ACCESS_KEY"] == SECRET
    spec = pod_spec(rec)
    [container] = spec["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "dstack-brave-otter-1"}}]
    assert SECRET not in str(spec) and SECRET not in str(rec.one(POLICY))


def test_the_pod_runs_once_without_an_api_token_within_the_max_duration() -> None:
    spec = pod_spec(declared(replace(BASE, max_duration_s=3600)))
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["activeDeadlineSeconds"] == 3600
    [container] = spec["containers"]
    assert container["command"] == ["/bin/bash", "-c", BASE.bootstrap]
    assert container["resources"] == {"requests": {"cpu": "1"}}
    assert "tolerations" not in spec and "affinity" not in spec  # a CPU job stays off GPUs


def test_gpus_are_requested_and_limited_pinned_to_the_model_and_the_taint_tolerated() -> None:
    cfg = replace(BASE, gpus=2, gpu_products=("NVIDIA-H100-80GB-HBM3",), cpu=8,
                  memory=64 * 2**30, shm_size=8 * 2**30)
    spec = pod_spec(declared(cfg))
    [container] = spec["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["resources"]["requests"] == {"cpu": "8", "memory": str(64 * 2**30),
                                                  "nvidia.com/gpu": "2"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                    "effect": "NoSchedule"}]
    [term] = spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "In",
                                         "values": ["NVIDIA-H100-80GB-HBM3"]}]
    assert spec["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory",
                                                             "sizeLimit": str(8 * 2**30)}}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


@pytest.mark.parametrize("caller", [None, "203.0.113.7/32"])
def test_the_policy_admits_only_the_app_ports_and_only_from_the_caller(
        caller: str | None) -> None:
    rec = declared(replace(BASE, app_ports=(8000, 8001), caller_cidr=caller))
    policy = rec.one(POLICY)["spec"]
    assert policy["podSelector"] == {"matchLabels": {"dstack.ai/run": "brave-otter-1"}}
    assert policy["policyTypes"] == ["Ingress"]
    if caller is None:
        assert policy["ingress"] == []  # only dstack's port-forward reaches the apps
    else:
        [rule] = policy["ingress"]
        assert rule["from"] == [{"ipBlock": {"cidr": caller}}]
        assert rule["ports"] == [{"protocol": "TCP", "port": 8000},
                                 {"protocol": "TCP", "port": 8001}]
    service = rec.one(SERVICE)["spec"]
    assert service["type"] == "ClusterIP"  # never a LoadBalancer or NodePort
    assert [p["port"] for p in service["ports"]] == [8000, 8001]
    assert service["selector"] == {"dstack.ai/run": "brave-otter-1"}


def test_dstack_waits_for_the_pod_itself_so_the_schedulers_reason_reaches_the_user() -> None:
    meta = declared(BASE).one(POD)["metadata"]
    assert meta["annotations"]["pulumi.com/skipAwait"] == "true"
