"""The GCP backend: runs jobs on Compute Engine VMs in the user's own project.

Profile settings: `project` (required), `region` (or `zone`; offers are chosen there),
`zone` (else the offer's zone, else `<region>-b`), `credentials` (the path of a service-account
key file for Pulumi; else application-default credentials), `bucket` (else
`dstack-<profile>-<suffix>`), `bucket_location`, `kms_key`, `network` / `subnetwork` (else a
network of the workspace's own), `image`, `secure_boot` (default true), `service_account_id`,
`caller_cidr`, `max_duration`, `wheel`, `store_url` (written by `dstack config add gcp`; its
bucket must be the workspace bucket). The Pulumi state backend is the profile's `state_url`
(e.g. `gs://my-state-bucket`), else the local file backend. See `docs/clouds.md`.
"""

from __future__ import annotations

import shlex
from urllib.parse import urlencode

from dstack.catalogue.offers import Offer, describe_offer, format_price
from dstack.config.backends import BackendClass
from dstack.run.job import Job
from dstack.run.record import RunRecord
from dstack.stacks.caller import planned_caller
from dstack.stacks.cloud import CloudBackend, Outputs, Program
from dstack.stacks.cloud_bootstrap import VENV, cloud_bootstrap, wheel_path
from dstack.stacks.gcp_programs import (
    GcpRun,
    GcpWorkspace,
    account_id,
    image_for,
    network_tag,
    region_of,
    resource_name,
    run_program,
    workspace_program,
)
from dstack.stacks.instance_spec import (
    app_ports,
    disk_gib,
    format_duration,
    job_resources,
    max_duration_s,
)

DOWNLOAD_PY = ("import sys; from google.cloud import storage; "
               "storage.Client(project=sys.argv[1]).bucket(sys.argv[2]).blob(sys.argv[3])"
               ".download_to_filename(sys.argv[4])")
DEFAULT_ZONE_SUFFIX = "-b"
"""Zone `b` exists in every region the catalogue lists (us-east1 has no zone `a`)."""


class GcpBackend(CloudBackend[GcpWorkspace, GcpRun]):
    """Each run a Compute Engine VM in its own ephemeral stack; the store is the workspace
    bucket."""

    name = "gcp"

    # -- settings and workspace --------------------------------------------------------------

    def project(self) -> str:
        """The profile's GCP project."""
        return self.required("project", "my-project-id")

    def region(self) -> str:
        """The profile's region (from its zone when only that is set)."""
        zone = self.setting("zone")
        return self.setting("region") or (region_of(zone) if zone else
                                          self.required("region", "us-central1"))

    def location(self) -> str:
        """Where offers are chosen: the zone when set, else the region."""
        return self.setting("zone") or self.region()

    def zone_for(self, offer: Offer) -> str:
        """The VM's zone: the profile's, else the offer's, else zone `b` of the region."""
        return self.setting("zone") or offer.zone or f"{offer.region}{DEFAULT_ZONE_SUFFIX}"

    def workspace_config(self) -> GcpWorkspace:
        """The workspace as the profile's settings describe it."""
        return GcpWorkspace(
            profile=self.profile.name, project=self.project(), region=self.region(),
            zone=self.setting("zone"), credentials=self.setting("credentials"),
            bucket=self.named_bucket(), location=self.setting("bucket_location"),
            kms_key=self.setting("kms_key"), network=self.setting("network"),
            account_id=self.setting("service_account_id"))

    def workspace_program(self, config: GcpWorkspace) -> Program:
        """`workspace_program(config)` as the engine wants it."""
        return lambda: workspace_program(config)

    def built_store_url(self) -> str:
        """`gs://<bucket>?project=…` (the same on the VM, which uses its service account)."""
        return f"gs://{self.bucket()}?{urlencode({'project': self.project()})}"

    def ask_identity(self) -> str:
        """The account of the profile's GCP credentials."""
        from dstack.stacks.credentials import gcp_account

        return gcp_account(self.profile.settings)

    # -- runs --------------------------------------------------------------------------------

    def plan_resources(self, job: Job) -> list[dict[str, str]]:
        """Every resource a run of `job` would declare, without the engine or the network."""
        offer = self.offer(job)
        caller = planned_caller(self.profile)
        ports = app_ports(job.ports)
        plan: list[dict[str, str]] = []
        if self.cached_workspace() is None:
            ws = {"stack": self.workspace_stack}  # created by the first run
            plan += [
                {"type": "gcp:storage/bucket:Bucket",
                 "name": self.named_bucket() or f"{resource_name(self.profile.name)}-…",
                 "what": "artifact bucket: uniform access, public access prevented, "
                         "versioned", **ws},
                {"type": "gcp:serviceaccount/account:Account",
                 "name": self.setting("service_account_id") or account_id(self.profile.name),
                 "what": "the VMs' identity", **ws},
                {"type": "gcp:storage/bucketIAMMember:BucketIAMMember", "name": "runner-objects",
                 "what": "roles/storage.objectAdmin on that bucket only", **ws},
            ]
            if not self.setting("network"):
                plan.append({"type": "gcp:compute/network:Network",
                             "name": resource_name(self.profile.name),
                             "what": "a VPC network with no ingress rules", **ws})
        if ports:
            plan.append({"type": "gcp:compute/firewall:Firewall", "name": "apps",
                         "what": f"tcp {', '.join(map(str, ports))} from {caller} only, to the "
                                 "run's VM (network tag)"})
        gpu = offer.gpu is not None
        plan.append({
            "type": "gcp:compute/instance:Instance", "name": "instance",
            "what": describe_offer(offer), "machine_type": offer.type,
            "accelerator": (f"{offer.gpu.count} x {offer.accelerator}"
                            if offer.accelerator and offer.gpu else "none"),
            "price_per_hour": format_price(offer.price), "spot": "yes" if offer.spot else "no",
            "zone": self.zone_for(offer), "image": image_for(gpu, self.setting("image")),
            "disk": f"{disk_gib(job_resources(job))} GiB pd-balanced",
            "shielded_vm": "secure boot, vTPM, integrity monitoring",
            "max_duration": format_duration(max_duration_s(job, self.profile)),
        })
        return plan

    def bootstrap(self, run: RunRecord) -> str:
        """Startup script: install the exact wheel from the bucket with the VM's service
        account, run the runner against the bucket, power off when it exits. No secret."""
        wheel = self.wheel()
        venv = f"{VENV}/bin"
        dest = wheel_path(wheel)
        url = f"gs://{self.bucket()}/{wheel.store_key}"
        fetch = [  # else google-cloud-storage, one of the runner's requirements (installed first)
            "if command -v gcloud >/dev/null 2>&1; then",
            "  " + shlex.join(["gcloud", "storage", "cp", url, dest]),
            "else",
            "  " + shlex.join([f"{venv}/python", "-c", DOWNLOAD_PY, self.project(),
                               self.bucket(), wheel.store_key, dest]),
            "fi",
        ]
        return cloud_bootstrap(run, store_url=self.instance_store_url(), wheel=wheel, fetch=fetch,
                               max_duration=max_duration_s(run.job, self.profile))

    def run_config(self, run: RunRecord, bootstrap: str, workspace: Outputs) -> GcpRun:
        """The run program's config: offer, zone, caller, workspace identity and network."""
        offer = self.offer(run.job)
        return GcpRun(
            run=run.name, workflow=run.workflow, profile=self.profile.name,
            project=self.project(), zone=self.zone_for(offer), machine_type=offer.type,
            accelerator=offer.accelerator, gpu_count=offer.gpu.count if offer.gpu else 0,
            spot=offer.spot, disk_gib=disk_gib(job_resources(run.job)),
            startup_script=bootstrap, service_account=str(workspace["service_account"]),
            network=str(workspace["network"]), subnetwork=self.setting("subnetwork"),
            max_run_s=max_duration_s(run.job, self.profile),
            app_ports=tuple(app_ports(run.job.ports)), caller_cidr=self.caller(run.job),
            credentials=self.setting("credentials"),
            image=self.setting("image"),
            secure_boot=str(self.setting("secure_boot", "true")).lower() != "false",
        )

    def run_program(self, config: GcpRun) -> Program:
        """The run stack's program for `config`."""
        return lambda: run_program(config)

    def instance_info(self, run: RunRecord, cfg: GcpRun, outputs: Outputs,
                      offer: Offer) -> dict[str, object]:
        """Where the run's runner runs, as recorded in the run."""
        instance: dict[str, object] = {
            "cloud": "gcp", "id": outputs.get("instance_id"),
            "name": outputs.get("instance_name"), "type": cfg.machine_type,
            "accelerator": cfg.accelerator, "gpus": cfg.gpu_count,
            "region": region_of(cfg.zone), "zone": cfg.zone,
            "public_ip": outputs.get("public_ip"), "host": outputs.get("public_ip"),
            "price_per_hour": offer.price, "spot": cfg.spot, "app_ports": list(cfg.app_ports),
            "caller_cidr": cfg.caller_cidr, "network_tag": network_tag(run.name),
        }
        return instance


_: BackendClass = GcpBackend  # mypy checks it is a `Backend`
