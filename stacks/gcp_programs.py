"""The GCP Pulumi programs: the workspace (bucket, service account, network) and one run
(firewall rule, VM).

Each program is a plain function of a frozen config, so tests run it under Pulumi's mocks.
Every resource goes through an explicit `gcp.Provider` built from the profile's project,
region/zone and (optionally) the path of a credentials file; the file's content is never read.

Workspace `workspace-<profile>`: a bucket (uniform bucket-level access, public access
prevention enforced, versioned, old versions expired), a service account granted
`roles/storage.objectAdmin` on that bucket only (a bucket IAM member, nothing project-wide),
and, unless the profile names one, a VPC network of its own that has no ingress rule at all.

Run `run-<name>`: a firewall rule opening the app ports to the caller's address only, aimed at
the run's VM by network tag; the VM of the chosen machine type (guest accelerators for n1,
the g2/a2/a3 type itself otherwise), on-host-maintenance TERMINATE, spot when interruptible,
deleted by GCE after the maximum duration, Shielded VM, a deep-learning image boot disk, the
workspace's service account with the storage scope, and the bootstrap as startup script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp

from dstack.names import slug

IMAGE_PROJECT = "projects/deeplearning-platform-release/global/images/family"
GPU_IMAGE = f"{IMAGE_PROJECT}/common-cu128-ubuntu-2204-nvidia-570"
CPU_IMAGE = f"{IMAGE_PROJECT}/common-cpu"
STORAGE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
OBJECT_ROLE = "roles/storage.objectAdmin"


@dataclass(frozen=True)
class GcpWorkspace:
    """What the workspace program declares."""

    profile: str
    project: str
    region: str
    zone: str | None = None
    credentials: str | None = None
    """Path of a service-account key file for the provider; None: application default."""
    bucket: str | None = None
    """The bucket's name; None: `dstack-<profile>-<random suffix>` chosen by Pulumi."""
    location: str | None = None
    """The bucket's location; None: the region."""
    kms_key: str | None = None
    """A Cloud KMS key for the bucket's default encryption; None: Google-managed keys."""
    network: str | None = None
    """An existing VPC network for the VMs; None: a network of the workspace's own."""
    account_id: str | None = None
    noncurrent_days: int = 30


@dataclass(frozen=True)
class GcpRun:
    """What one run's program declares."""

    run: str
    workflow: str | None
    profile: str
    project: str
    zone: str
    machine_type: str
    accelerator: str | None
    gpu_count: int
    spot: bool
    disk_gib: int
    startup_script: str
    service_account: str
    network: str
    max_run_s: int
    subnetwork: str | None = None
    app_ports: tuple[int, ...] = ()
    caller_cidr: str | None = None
    credentials: str | None = None
    image: str | None = None
    secure_boot: bool = True


def region_of(zone: str) -> str:
    """`us-central1` of `us-central1-a`."""
    return zone.rsplit("-", 1)[0]


def provider(project: str, region: str, zone: str | None,
             credentials: str | None) -> gcp.Provider:
    """The explicit provider every resource of a program uses."""
    return gcp.Provider("gcp", project=project, region=region, zone=zone,
                        credentials=credentials)


def resource_name(profile: str) -> str:
    """Logical name of the bucket and network, auto-named `<it>-<suffix>` by Pulumi."""
    return f"dstack-{slug(profile, 40)}"


def account_id(profile: str) -> str:
    """The service account's id: `dstack-<profile>`, 6 to 30 characters."""
    return f"dstack-{slug(profile, 23)}".strip("-").ljust(6, "0")


def workspace_program(cfg: GcpWorkspace) -> None:
    """Declare the workspace: bucket, service account and its grant on the bucket, network."""
    opts = pulumi.ResourceOptions(
        provider=provider(cfg.project, cfg.region, cfg.zone, cfg.credentials))
    labels = {"dstack-profile": slug(cfg.profile)}
    bucket = gcp.storage.Bucket(
        resource_name(cfg.profile), name=cfg.bucket, location=(cfg.location or cfg.region).upper(),
        uniform_bucket_level_access=True, public_access_prevention="enforced",
        versioning={"enabled": True}, force_destroy=False, labels=labels,
        encryption={"default_kms_key_name": cfg.kms_key} if cfg.kms_key else None,
        lifecycle_rules=[{"action": {"type": "Delete"},
                          "condition": {"days_since_noncurrent_time": cfg.noncurrent_days}}],
        opts=opts)
    account = gcp.serviceaccount.Account(
        "runner", account_id=cfg.account_id or account_id(cfg.profile),
        display_name=f"dstack runner ({cfg.profile})",
        description="Runs dstack jobs; may read and write objects of its bucket only.",
        opts=opts)
    gcp.storage.BucketIAMMember("runner-objects", bucket=bucket.name, role=OBJECT_ROLE,
                                member=account.email.apply(lambda e: f"serviceAccount:{e}"),
                                opts=opts)
    if cfg.network:
        network: pulumi.Input[str] = cfg.network
    else:
        network = gcp.compute.Network(
            resource_name(cfg.profile), auto_create_subnetworks=True,
            description=f"dstack runs of profile {cfg.profile}: no ingress but run rules",
            opts=opts).self_link
    pulumi.export("bucket", bucket.name)
    pulumi.export("service_account", account.email)
    pulumi.export("network", network)
    pulumi.export("project", cfg.project)


def image_for(gpu: bool, override: str | None = None) -> str:
    """The boot image: the profile's, else the deep-learning CUDA (GPU) or CPU family."""
    return override or (GPU_IMAGE if gpu else CPU_IMAGE)


def network_tag(run: str) -> str:
    """The network tag that aims the run's firewall rule at its VM only."""
    return f"dstack-run-{slug(run, 52)}"


def run_labels(cfg: GcpRun) -> dict[str, str]:
    """Labels naming the run and workflow (label-safe)."""
    return {"dstack-run": slug(cfg.run), "dstack-workflow": slug(cfg.workflow or "none"),
            "dstack-profile": slug(cfg.profile)}


def scheduling(spot: bool, max_run_s: int) -> gcp.compute.InstanceSchedulingArgsDict:
    """TERMINATE on host maintenance (GPUs require it), no restart, deleted by GCE after the
    maximum duration; spot when interruptible."""
    return {"on_host_maintenance": "TERMINATE", "automatic_restart": False,
            "provisioning_model": "SPOT" if spot else "STANDARD", "preemptible": spot,
            "instance_termination_action": "DELETE", "max_run_duration": {"seconds": max_run_s}}


# The engine gives typed network interfaces, Pulumi's mocks give dicts: either is read.
def _nat_ip(nics: Any) -> str | None:  # type: ignore[explicit-any]  # typed or the mocks' dicts
    for nic in nics or []:
        configs = nic.get("access_configs") if isinstance(nic, dict) else nic.access_configs
        for config in configs or []:
            ip = config.get("nat_ip") if isinstance(config, dict) else config.nat_ip
            if ip:
                return str(ip)
    return None


def run_program(cfg: GcpRun) -> None:
    """Declare one run: the firewall rule for its app ports, then the VM."""
    opts = pulumi.ResourceOptions(
        provider=provider(cfg.project, region_of(cfg.zone), cfg.zone, cfg.credentials))
    replace_first = pulumi.ResourceOptions.merge(
        opts, pulumi.ResourceOptions(delete_before_replace=True))
    labels = run_labels(cfg)
    tag = network_tag(cfg.run)
    gpu = cfg.gpu_count > 0
    if cfg.caller_cidr and cfg.app_ports:
        gcp.compute.Firewall(
            "apps", name=f"dstack-{slug(cfg.run, 50)}-apps", network=cfg.network,
            direction="INGRESS", priority=1000, source_ranges=[cfg.caller_cidr],
            target_tags=[tag], allows=[{"protocol": "tcp",
                                        "ports": [str(p) for p in cfg.app_ports]}],
            description=f"dstack run {cfg.run}: its app ports, from the caller only",
            opts=replace_first)
    metadata = {"block-project-ssh-keys": "true"}
    if gpu:
        metadata["install-nvidia-driver"] = "True"
    accelerators: list[gcp.compute.InstanceGuestAcceleratorArgsDict] | None = (
        [{"type": cfg.accelerator, "count": cfg.gpu_count}] if cfg.accelerator else None)
    boot_disk: gcp.compute.InstanceBootDiskArgsDict = {"auto_delete": True, "initialize_params": {
        "image": image_for(gpu, cfg.image), "size": cfg.disk_gib, "type": "pd-balanced",
        "labels": labels}}
    nic: gcp.compute.InstanceNetworkInterfaceArgsDict = {
        "network": cfg.network, "subnetwork": cfg.subnetwork, "access_configs": [{}]}
    instance = gcp.compute.Instance(
        "instance", name=f"dstack-{slug(cfg.run, 56)}", zone=cfg.zone,
        machine_type=cfg.machine_type,
        guest_accelerators=accelerators,
        scheduling=scheduling(cfg.spot, cfg.max_run_s),
        shielded_instance_config={"enable_secure_boot": cfg.secure_boot, "enable_vtpm": True,
                                  "enable_integrity_monitoring": True},
        boot_disk=boot_disk, network_interfaces=[nic],
        service_account={"email": cfg.service_account, "scopes": [STORAGE_SCOPE]},
        metadata=metadata, metadata_startup_script=cfg.startup_script, labels=labels,
        tags=[tag], deletion_protection=False, opts=replace_first)
    pulumi.export("instance_id", instance.instance_id)
    pulumi.export("instance_name", instance.name)
    pulumi.export("zone", cfg.zone)
    pulumi.export("public_ip", instance.network_interfaces.apply(_nat_ip))
    pulumi.export("machine_type", cfg.machine_type)
