"""A real Kubernetes control plane on loopback for the Kubernetes tests, from kubelite.

`start(folder)` runs etcd, the kube-apiserver (token auth, RBAC), the controller manager, the
scheduler and kwok, each a `kubelite` process on free loopback ports, and registers fake GPU
nodes that kwok keeps Ready: two GPU models on tainted nodes, and one CPU node. kwok marks a
pod that the scheduler placed as running; running the pod's command is the job of
`tests.standins.kube` (the stand-in kubelet). `Cluster.stop()` ends every process.

The tools come from `scripts/kube-tools.sh install` (run by `make test`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.servers import _stop

ROOT = Path(__file__).resolve().parents[2]
TOOLS_SCRIPT = ROOT / "scripts" / "kube-tools.sh"
KWOK_CONFIG = Path(__file__).with_name("kwok.yaml")
FAKE_NODE = ("kwok.x-k8s.io/node", "fake")
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GIB = 1024**3


@dataclass(frozen=True)
class FakeNode:
    """A node kwok keeps Ready: its allocatable CPUs, memory (GiB) and GPUs of one model."""

    name: str
    cpus: int
    memory_gib: int
    gpus: int = 0
    gpu_product: str = ""
    gpu_memory_mib: int = 0

    def manifest(self) -> dict[str, object]:
        """The Node object, with the labels GPU feature discovery sets and the GPU taint."""
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "type": "kwok"}
        resources = {"cpu": str(self.cpus), "memory": f"{self.memory_gib}Gi", "pods": "110"}
        taints: list[dict[str, str]] = []
        if self.gpus:
            labels.update({"nvidia.com/gpu.product": self.gpu_product,
                           "nvidia.com/gpu.count": str(self.gpus),
                           "nvidia.com/gpu.memory": str(self.gpu_memory_mib),
                           "nvidia.com/gpu.present": "true"})
            resources["nvidia.com/gpu"] = str(self.gpus)
            taints.append(GPU_TAINT)
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": labels,
                             "annotations": {FAKE_NODE[0]: FAKE_NODE[1],
                                             "node.alpha.kubernetes.io/ttl": "0"}},
                "spec": {"taints": taints},
                "status": {"allocatable": resources, "capacity": resources}}


NODES = (
    FakeNode("gpu-h100-0", cpus=96, memory_gib=1024, gpus=8,
             gpu_product="NVIDIA-H100-80GB-HBM3", gpu_memory_mib=81559),
    FakeNode("gpu-a10g-0", cpus=16, memory_gib=64, gpus=1,
             gpu_product="NVIDIA-A10G", gpu_memory_mib=23028),
    FakeNode("cpu-0", cpus=8, memory_gib=32),
)
"""The test cluster's nodes: 8 H100s, 1 A10G (both tainted), a CPU node."""


@functools.cache
def tools() -> Path:
    """The folder with `kubelite` and `pulumi-resource-kubernetes` (built when missing)."""
    out = subprocess.run(["bash", str(TOOLS_SCRIPT), "install"], check=True,
                         capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running control plane: its API server, an admin token and a kubeconfig for it."""

    folder: Path
    server: str
    token: str
    kubeconfig: Path
    viewer_token: str = ""
    """A user with no role: the API server authenticates it and RBAC allows it nothing."""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def send(self, method: str, path: str, body: object | None = None,
             content_type: str = "application/json", timeout: float = 30) -> bytes:
        """One API call as the admin; the body of its answer (HTTPError on a failure
        status)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": content_type,
            "Accept": "application/json"})
        with urllib.request.urlopen(req, context=_insecure(), timeout=timeout) as resp:
            return bytes(resp.read())

    def request(self, method: str, path: str, body: object | None = None,
                content_type: str = "application/json") -> dict[str, object]:
        """One API call as the admin; its JSON answer (HTTPError on a failure status)."""
        loaded: dict[str, object] = json.loads(self.send(method, path, body, content_type)
                                               or b"{}")
        return loaded

    def get(self, path: str) -> dict[str, object] | None:
        """GET `path`; None when it does not exist."""
        try:
            return self.request("GET", path)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def items(self, path: str) -> list[dict[str, object]]:
        """The items of a list call."""
        listed = self.request("GET", path).get("items")
        return listed if isinstance(listed, list) else []

    def create_namespace(self, name: str) -> None:
        """Create namespace `name` (the service-account controller then gives it `default`)."""
        self.request("POST", "/api/v1/namespaces",
                     {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        wait(f"service account default in {name}",
              lambda: self.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"), 30)

    def objects(self, namespace: str) -> list[str]:
        """`kind/name` of every pod, secret, service and network policy in `namespace`, but
        what the cluster itself puts in every namespace."""
        found = []
        for path, kind in ((f"/api/v1/namespaces/{namespace}/pods", "Pod"),
                           (f"/api/v1/namespaces/{namespace}/secrets", "Secret"),
                           (f"/api/v1/namespaces/{namespace}/services", "Service"),
                           (f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
                            "NetworkPolicy")):
            found += [f"{kind}/{item['metadata']['name']}"  # type: ignore[index]
                      for item in self.items(path)]
        return found

    def stop(self) -> None:
        """End every process of the control plane, kwok first."""
        for name in reversed(list(self.procs)):
            _stop(self.procs[name])


def _insecure() -> ssl.SSLContext:
    """The API server's certificate is self-signed: the test client does not verify it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wait(what: str, check: object, timeout: float) -> object:
    """Call `check` until it returns something truthy (a connection error counts as not
    yet); that value, or RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError):
            value = check()  # type: ignore[operator]
            if value:
                return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def write_kubeconfig(path: Path, server: str, token: str, namespace: str = "default") -> None:
    """A kubeconfig with one context, `test`, for the admin token."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server,
                                                  "insecure-skip-tls-verify": True}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin",
                                                  "namespace": namespace}}],
    }, indent=1))
    path.chmod(0o600)


def start(folder: Path, nodes: tuple[FakeNode, ...] = NODES) -> Cluster:
    """Start the control plane in `folder` and register `nodes`; stop it on any failure."""
    kubelite = tools() / "kubelite"
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    viewer = secrets.token_hex(16)
    (folder / "tokens.csv").write_text(f"{token},admin,admin,system:masters\n"
                                       f"{viewer},viewer,viewer\n")
    key, pub = folder / "sa.key", folder / "sa.pub"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                   capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
                   check=True, capture_output=True)
    kubeconfig = folder / "admin.kubeconfig"
    write_kubeconfig(kubeconfig, server, token)
    cluster = Cluster(folder=folder, server=server, token=token, kubeconfig=kubeconfig,
                      viewer_token=viewer)

    def launch(name: str, *args: str) -> None:
        with open(folder / f"{name}.log", "ab") as log:
            cluster.procs[name] = subprocess.Popen(
                [str(kubelite), name, *args], stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, cwd=folder, start_new_session=True)

    try:
        etcd = f"http://127.0.0.1:{etcd_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        launch("etcd", "--name", "default", "--data-dir", str(folder / "etcd"),
               "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"default={peer}", "--log-level", "warn")
        launch("kube-apiserver", "--etcd-servers", etcd, "--bind-address", "127.0.0.1",
               "--secure-port", str(api_port), "--cert-dir", str(folder / "certs"),
               "--service-cluster-ip-range", "10.96.0.0/16",
               "--service-account-key-file", str(pub),
               "--service-account-signing-key-file", str(key),
               "--service-account-issuer", "https://kubernetes.default.svc",
               "--token-auth-file", str(folder / "tokens.csv"),
               "--authorization-mode", "RBAC", "--v", "0",
               "--kubelet-preferred-address-types", "InternalIP")
        wait("the API server", lambda: cluster.send("GET", "/readyz", timeout=5) == b"ok", 60)
        launch("kube-controller-manager", "--kubeconfig", str(kubeconfig),
               "--leader-elect=false", "--bind-address", "127.0.0.1",
               "--secure-port", str(free_port()),
               "--service-account-private-key-file", str(key),
               "--root-ca-file", str(folder / "certs" / "apiserver.crt"),
               "--use-service-account-credentials=false",
               "--controllers", "*,-nodeipam,-nodelifecycle,-ttl")
        launch("kube-scheduler", "--kubeconfig", str(kubeconfig), "--leader-elect=false",
               "--bind-address", "127.0.0.1", "--secure-port", str(free_port()))
        kwok_port = free_port()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(folder / "kwok.key"), "-out", str(folder / "kwok.crt"),
                        "-days", "30", "-subj", "/CN=kwok",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        launch("kwok", "--kubeconfig", str(kubeconfig), "--config", str(KWOK_CONFIG),
               "--server-address", f"127.0.0.1:{kwok_port}", "--node-port", str(kwok_port),
               "--tls-cert-file", str(folder / "kwok.crt"),
               "--tls-private-key-file", str(folder / "kwok.key"),
               "--manage-all-nodes=false",
               f"--manage-nodes-with-annotation-selector={FAKE_NODE[0]}={FAKE_NODE[1]}",
               "--node-ip", "127.0.0.1", "--cidr", "10.244.0.1/16")
        for node in nodes:
            manifest = node.manifest()
            cluster.request("POST", "/api/v1/nodes", manifest)
            cluster.request("PATCH", f"/api/v1/nodes/{node.name}/status",
                            {"status": manifest["status"]}, "application/merge-patch+json")
            # The API server taints a new node not-ready; with no node-lifecycle controller
            # (kwok plays the nodes), nothing would lift it.
            cluster.request("PATCH", f"/api/v1/nodes/{node.name}", {"spec": manifest["spec"]},
                            "application/merge-patch+json")
        wait("the fake nodes to be Ready",
              lambda: all(node_ready(cluster, n.name) for n in nodes), 60)
        wait("the default service account",
              lambda: cluster.get("/api/v1/namespaces/default/serviceaccounts/default"), 60)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def node_ready(cluster: Cluster, name: str) -> bool:
    node = cluster.get(f"/api/v1/nodes/{name}") or {}
    conditions = (node.get("status") or {}).get("conditions") or []  # type: ignore[attr-defined]
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
