"""A real node for the real-node tests (`make test-real-nodes`): Debian's containerd and
runc, kubelite's kubelet, a Python image built here without a registry. Needs root.

- Images: a pause image (tests/kube/pause) and a Python image: Debian's root filesystem from
  debootstrap with python3, plus `/opt/dstack/venv` holding the dstack wheel's dependencies
  (as a team bakes an image). Each is written as an OCI archive and imported into containerd;
  the Python one is kept in the user's cache per pyproject.toml.
- Network: a bridge `dstk0` with 10.88.0.1/16, which is also the node's address; pods get
  addresses on it from the CNI bridge plugin, and reach the host's servers at 10.88.0.1.
- This sandbox's limits, worked around: no CAP_SYS_RESOURCE (a runc wrapper raises a
  negative `oomScoreAdj` to 0), cgroup v1 (`failCgroupV1: false`, cgroupfs, no QoS cgroups).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.kube.cluster import ROOT, Cluster, free_port, node_ready, tools, wait

BRIDGE, NODE_IP, SUBNET = "dstk0", "10.88.0.1", "10.88.0.0/16"
NODE = "real-0"
PAUSE_IMAGE = "dstack.local/pause:1"
PYTHON_IMAGE = "dstack.local/python:3.11"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dstack" / "kube-real"

RUNC_WRAPPER = """#!/bin/sh
# runc for containerd in a sandbox without CAP_SYS_RESOURCE: a negative oomScoreAdj (the
# kubelet gives -998 to sandboxes) would make runc fail, so it becomes 0.
prev=""
for arg in "$@"; do
  if [ "$prev" = "--bundle" ] || [ "$prev" = "-b" ]; then
    {python} -c 'import json, sys
p = sys.argv[1] + "/config.json"
c = json.load(open(p))
if c.get("process", {{}}).get("oomScoreAdj", 0) < 0:
    c["process"]["oomScoreAdj"] = 0
    json.dump(c, open(p, "w"))' "$arg"
  fi
  prev="$arg"
done
exec /usr/sbin/runc "$@"
"""


def _run(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True,
                          **kw)  # type: ignore[call-overload]


# -- images -------------------------------------------------------------------------------


def oci_archive(rootfs: Path, out: Path, name: str, entrypoint: list[str]) -> Path:
    """Write `rootfs` as a one-layer OCI image archive named `name`."""
    layer = io.BytesIO()
    with gzip.GzipFile(fileobj=layer, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:  # type: ignore[call-overload]
        for entry in sorted(rootfs.iterdir()):
            tar.add(entry, arcname=entry.name)
    layer_bytes = layer.getvalue()
    diff_id = hashlib.sha256(gzip.decompress(layer_bytes)).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint,
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]}}).encode()
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": f"sha256:{digest}", "size": len(data)}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    **blob(layer_bytes)}]}).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(manifest),
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}]}
    with tarfile.open(out, "w") as tar:
        def add(arcname: str, data: bytes) -> None:
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            add(f"blobs/sha256/{digest}", data)
    return out


def pause_archive(folder: Path) -> Path:
    """The pause image's archive, built from tests/kube/pause."""
    rootfs = folder / "pause-rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    _run("go", "build", "-trimpath", "-o", str(rootfs / "pause"), ".",
         cwd=ROOT / "tests" / "kube" / "pause", env={**os.environ, "CGO_ENABLED": "0"})
    return oci_archive(rootfs, folder / "pause.tar", PAUSE_IMAGE, ["/pause"])


def python_archive(wheel: Path) -> Path:
    """The Python image's archive: Debian with python3 and a venv of the wheel's
    dependencies; built once per pyproject.toml into the user's cache."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    out = CACHE / f"python-{key}.tar"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / f"rootfs-{key}"
    shutil.rmtree(rootfs, ignore_errors=True)
    mirror = _debian_mirror()
    _run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
         "bookworm", str(rootfs), mirror, timeout=1800)
    shutil.copy("/etc/resolv.conf", rootfs / "etc" / "resolv.conf")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "tmp" / "ca.crt")
    shutil.copy(wheel, rootfs / "tmp" / wheel.name)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "PIP_CERT": "/tmp/ca.crt",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           **{k: v for k, v in os.environ.items() if k.startswith("PIP_INDEX")}}
    venv = "/opt/dstack/venv"
    _run("chroot", str(rootfs), "sh", "-c",
         f"python3 -m venv {venv} && {venv}/bin/pip install -q boto3 /tmp/{wheel.name} && "
         f"{venv}/bin/pip uninstall -y -q dstack && rm -f /tmp/*.whl /tmp/ca.crt",
         env=env, timeout=1800)
    building = out.with_suffix(".tmp")
    oci_archive(rootfs, building, PYTHON_IMAGE, ["/bin/bash"])
    building.rename(out)
    shutil.rmtree(rootfs, ignore_errors=True)
    return out


def _debian_mirror() -> str:
    """The Debian mirror apt uses on this machine."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] or (words[:1] == ["deb"] and len(words) > 1):
                    return words[1]
    raise RuntimeError("no Debian mirror in apt's sources")


# -- the node -----------------------------------------------------------------------------


@dataclass
class RealNode:
    """containerd and a kubelet registered as node `real-0`."""

    folder: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop the kubelet, then containerd's containers and containerd, then the bridge."""
        from tests.integration.servers import _stop

        for name in ("kubelet", "containerd"):
            if name in self.procs:
                _stop(self.procs[name])
        subprocess.run(["pkill", "-f", f"containerd-shim-runc-v2 -namespace k8s.io -address "
                        f"{self.folder / 'containerd.sock'}"], check=False)
        subprocess.run(["ip", "link", "del", BRIDGE], check=False, capture_output=True)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.folder))]
        for point in sorted(mounts, key=len, reverse=True):  # the kubelet's and containerd's
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def start_node(cluster: Cluster, folder: Path, python_image: Path) -> RealNode:
    """Start containerd and the kubelet in `folder` for `cluster`; return once the node is
    Ready and both images are imported."""
    folder.mkdir(parents=True, exist_ok=True)
    node = RealNode(folder)
    try:
        _bridge()
        sock = folder / "containerd.sock"
        wrapper = folder / "runc-wrapper"
        wrapper.write_text(RUNC_WRAPPER.format(python=shutil.which("python3") or "python3"))
        wrapper.chmod(0o755)
        (folder / "cni").mkdir(exist_ok=True)
        (folder / "cni" / "10-dstack.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "dstack-test", "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                "hairpinMode": True, "ipam": {"type": "host-local", "ranges": [[{
                    "subnet": SUBNET, "rangeStart": "10.88.1.1", "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}]}}]}))
        config = folder / "containerd.toml"
        config.write_text(f"""version = 2
root = "{folder}/containerd/root"
state = "{folder}/containerd/state"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{folder}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      BinaryName = "{wrapper}"
      SystemdCgroup = false
""")
        with open(folder / "containerd.log", "ab") as log:
            node.procs["containerd"] = subprocess.Popen(
                ["containerd", "--config", str(config)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True)
        wait("containerd's socket", sock.exists, 30)
        for archive in (pause_archive(folder), python_image):
            _run("ctr", "--address", str(sock), "-n", "k8s.io", "images", "import",
                 str(archive), timeout=600)
        kubelet_config = folder / "kubelet.yaml"
        kubelet_config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
            "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "port": free_port(), "readOnlyPort": 0, "healthzPort": 0,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "resolvConf": "/etc/resolv.conf", "localStorageCapacityIsolation": False,
            "containerRuntimeEndpoint": f"unix://{sock}"}))
        kubelet = tools() / "kubelite-kubelet"
        with open(folder / "kubelet.log", "ab") as log:
            node.procs["kubelet"] = subprocess.Popen(
                [str(kubelet), "kubelet", "--config", str(kubelet_config),
                 "--kubeconfig", str(cluster.kubeconfig), "--node-ip", NODE_IP,
                 "--hostname-override", NODE, "--root-dir", str(folder / "kubelet"),
                 "--cert-dir", str(folder / "kubelet" / "pki"), "--v", "1"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)

        wait(f"node {NODE} to be Ready", lambda: node_ready(cluster, NODE), 120)
        # The API server taints a new node not-ready, and the test cluster runs no
        # node-lifecycle controller to lift it once the node is Ready.
        cluster.request("PATCH", f"/api/v1/nodes/{NODE}", {"spec": {"taints": []}},
                        "application/merge-patch+json")
    except BaseException:
        node.stop()
        raise
    return node


def _bridge() -> None:
    subprocess.run(["ip", "link", "del", BRIDGE], check=False, capture_output=True)
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{NODE_IP}/16", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
