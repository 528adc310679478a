"""The stand-in `pulumi-resource-gcp` plugin: the resource types dstack's GCP programs declare,
on the GCS emulator and a compute document, with instances run by `instance.launch`.

- `gcp:storage/bucket:Bucket` is a real bucket in the GCS emulator (STORAGE_EMULATOR_HOST),
  versioned when the emulator can (its filesystem backend cannot); the settings the emulator
  does not keep (location: it puts every bucket in its own; labels, lifecycle rules, uniform
  access, public access prevention, encryption, and versioning when refused) are recorded in
  the project's document under `buckets` and read back from there. Deleting a bucket that
  still holds objects fails unless `forceDestroy`, as with the real provider.
- The service account, the bucket IAM member, the network, the firewall and the instance
  are objects of one JSON document per project, `<world>/gcp/<project>.json`, keyed by their
  ids (`projects/P/zones/Z/instances/N`, ...), each stored with the inputs the program gave
  and the outputs pulumi-gcp returns (camelCase, as on the wire). Every change happens under
  an exclusive `fcntl` lock (`<project>.json.lock`) and is written atomically, since several
  engines may run at once.
- An instance is created RUNNING and launched with its exact `metadataStartupScript`, its
  boot image's folder `<world>/images/<image_slug(image)>` as /opt (none: an empty /opt), the
  GCS emulator's address, and a GCE metadata server (project, instance, service account and
  its token, scheduling, attributes). A VM that powers itself off stays in the document,
  TERMINATED (`powered_off`), as GCE keeps stopped VMs. `scheduling.maxRunDuration` with
  `instanceTerminationAction: DELETE` deletes the VM after that many seconds (scaled by
  DSTACK_STANDIN_MINUTE_S/60) of running, as GCE does.
- Public IPs: a real NAT IP is out of reach here, so `networkInterfaces[0].accessConfigs[0]
  .natIp` is a loopback address of the instance's own (127.0.0.N, see `addresses`); apps on
  the instance bind 0.0.0.0, so they answer there. Firewall rules are recorded, not enforced.

Diffs follow pulumi-gcp (its ForceNew fields): a new name or project replaces anything; a
new location a bucket, account id an account, bucket/role/member a grant, network or
direction a firewall rule; a new zone, startup script, boot disk (but autoDelete), spot
model or accelerators a VM. The rest is updated in place, except what GCE changes on a
stopped VM only (machine type, service account, Shielded VM, an interface's network, the
maximum run duration, ...): that fails unless `allowStoppingForUpdate`, as in the real
provider, and with it the stand-in VM is stopped and booted again. Checks the real API makes
(names, labels, a network or account that must exist, a name already taken, a network still
in use) fail the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tests.standins import addresses, instance
from tests.standins.plugin import UNKNOWN, Config, Gone, Props, Resource, Servicer, auto_name

VERSION = "10.2.0"
COMPUTE = "https://www.googleapis.com/compute/v1/"
STORAGE = "https://www.googleapis.com/storage/v1/"
METADATA = "/computeMetadata/v1/"
SECTIONS = ("buckets", "serviceAccounts", "bucketIamMembers", "networks", "firewalls",
            "instances")
DEFAULT_NETWORK = "default"
"""Every project has it (GCE makes it); it is not in the document."""
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
ACCOUNT_ID = re.compile(r"^[a-z](?:[-a-z0-9]{4,28}[a-z0-9])$")
BUCKET_NAME = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9]$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
STOP_MESSAGE = (
    "Changing the machine_type, min_cpu_platform, service_account, enable_display, "
    "shielded_instance_config, scheduling.node_affinities or network_interface.[#d]"
    ".(network/subnetwork/subnetwork_project) or advanced_machine_features on a started "
    "instance requires stopping it. To acknowledge this, please set "
    "allow_stopping_for_update = true in your config. You can also stop it by setting "
    "desired_status = \"TERMINATED\", but the instance will not be restarted after the update.")


class ApiError(Exception):
    """What the GCP API answers to a request it refuses (its code and message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"googleapi: Error {code}: {message}")
        self.code = code


# -- names, ids and config -------------------------------------------------------------------


def image_slug(image: str) -> str:
    """The folder name of a boot image under `<world>/images/`: the image string with every
    character but [a-z0-9-] turned into `-` (e.g. `projects-debian-cloud-global-images-...`)."""
    return re.sub(r"[^a-z0-9-]", "-", image.lower())


def image_folder(image: str | None) -> str | None:
    """The folder (or symlink to one) holding image `image`'s /opt; None: a bare image."""
    if not image:
        return None
    path = instance.world() / "images" / image_slug(image)
    return str(path.resolve()) if path.is_dir() else None


def project_number(project: str) -> str:
    """A stable 12-digit project number for `project`."""
    return str(10**11 + int(hashlib.sha256(project.encode()).hexdigest(), 16) % (9 * 10**11))


def _project(cfg: Config, props: Props) -> str:
    project = props.get("project") or cfg.get("project")
    if not project:
        raise ApiError(400, "project: required field is not set (the provider's `project` "
                            "config, or the resource's `project`)")
    return str(project)


def _zone(cfg: Config, props: Props) -> str:
    zone = props.get("zone") or cfg.get("zone")
    if not zone:
        raise ApiError(400, "Cannot determine zone: set in this resource, or set provider-level "
                            "zone.")
    return str(zone)


def _last(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[-1]


def _network_id(project: str, network: str) -> str:
    """`projects/P/global/networks/N` of a network name, partial or full link."""
    found = re.search(r"projects/([^/]+)/global/networks/([^/]+)$", network)
    if found:
        return f"projects/{found.group(1)}/global/networks/{found.group(2)}"
    return f"projects/{project}/global/networks/{_last(network)}"


def _known(value: Any) -> bool:
    return value is not None and value is not UNKNOWN


def _require(props: Props, *keys: str) -> None:
    missing = [k for k in keys if k not in props]
    if missing:
        raise ValueError(f"missing required propert{'y' if len(missing) == 1 else 'ies'} "
                         f"{', '.join(repr(k) for k in missing)}")


def _check_name(kind: str, name: Any, pattern: re.Pattern[str] = RFC1035) -> None:
    if isinstance(name, str) and not pattern.match(name):
        raise ApiError(400, f"Invalid value for field 'resource.name': '{name}'. Must be a "
                            f"match of regex '{pattern.pattern}' ({kind})")


def _check_labels(labels: Any) -> None:
    for key, value in (labels or {}).items() if isinstance(labels, dict) else ():
        if not LABEL_KEY.match(key) or (isinstance(value, str) and not LABEL_VALUE.match(value)):
            raise ApiError(400, f"Invalid value for field 'resource.labels': '{key}={value}'. "
                                "Label keys and values must be lowercase letters, digits, '_' "
                                "or '-', at most 63 characters, keys starting with a letter.")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _numeric_id() -> str:
    return str(secrets.randbelow(9 * 10**18) + 10**18)


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _labels(props: Props) -> dict[str, Any]:
    """`labels`, `effectiveLabels` and `pulumiLabels` of pulumi-gcp's label model."""
    labels = dict(props.get("labels") or {})
    return {"effectiveLabels": labels, "pulumiLabels": labels}


# -- the compute document --------------------------------------------------------------------


def document_path(project: str) -> Path:
    """`<world>/gcp/<project>.json`."""
    folder = instance.world() / "gcp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{project}.json"


def _empty(project: str) -> dict[str, Any]:
    return {"project": project, "projectNumber": project_number(project),
            **{section: {} for section in SECTIONS}}


def load(project: str) -> dict[str, Any]:
    """The project's document as it is now (read without the lock: writes are atomic)."""
    try:
        doc: dict[str, Any] = json.loads(document_path(project).read_text())
    except FileNotFoundError:
        return _empty(project)
    return doc


@contextlib.contextmanager
def document(project: str) -> Iterator[dict[str, Any]]:
    """The project's document under its exclusive lock; written back when the block ends
    without an error (atomically: a reader never sees half of it)."""
    path = document_path(project)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = load(project)
        for section in SECTIONS:
            doc.setdefault(section, {})
        yield doc
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, path)


def _projects() -> list[str]:
    folder = instance.world() / "gcp"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def find_instance(instance_id: str) -> tuple[str, str] | None:
    """(project, resource id) of the VM whose numeric `instanceId` is `instance_id`."""
    for project in _projects():
        for id_, vm in load(project)["instances"].items():
            if vm.get("instanceId") == instance_id:
                return project, id_
    return None


def _set_status(instance_id: str, status: str) -> None:
    found = find_instance(instance_id)
    if found is None:
        return
    project, id_ = found
    with document(project) as doc:
        vm = doc["instances"].get(id_)
        if vm is not None and vm.get("instanceId") == instance_id:
            vm["currentStatus"] = status


def powered_off(instance_id: str) -> None:
    """The VM powered itself off: GCE keeps it, TERMINATED (called by the supervisor)."""
    _set_status(instance_id, "TERMINATED")


# -- a resource kept in the document ---------------------------------------------------------


class _Documented(Resource):
    """A resource type whose objects are entries of one section of the project document:
    `outputs` says what the API returns for given inputs, on a create and on an update."""

    section = ""
    auto_named = False
    """Whether a missing `name` is auto-named `<logical name>-<7 hex>`."""

    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        if self.auto_named and not news.get("name"):
            return {**news, "name": auto_name(name, seed, olds, "name")}
        return news

    def outputs(self, doc: dict[str, Any], inputs: Props, old: Props | None) -> Props:
        """The object as the API returns it (its `id` included), from its inputs and, on an
        update, its `old` self; an ApiError for what the API refuses."""
        raise NotImplementedError

    def _entry(self, cfg: Config, id_: str, outputs: Props) -> tuple[str, Props]:
        project = str(outputs.get("project") or _project(cfg, outputs))
        entry = load(project)[self.section].get(id_)
        if entry is None:
            raise Gone(f"{id_} does not exist")
        return project, entry

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        with document(_project(cfg, inputs)) as doc:
            outputs = self.outputs(doc, inputs, None)
            id_ = str(outputs["id"])
            if id_ in doc[self.section]:
                raise ApiError(409, f"The resource '{id_}' already exists, alreadyExists")
            doc[self.section][id_] = outputs
        return id_, outputs

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        return self._entry(cfg, id_, outputs)[1]

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        with document(str(olds.get("project") or _project(cfg, news))) as doc:
            entry = doc[self.section].get(id_)
            if entry is None:
                raise ApiError(404, f"The resource '{id_}' was not found, notFound")
            updated = self.outputs(doc, news, entry)
            doc[self.section][id_] = updated
            return updated

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        project = str(outputs.get("project") or _project(cfg, outputs))
        with document(project) as doc:
            self.before_delete(doc, id_)
            if doc[self.section].pop(id_, None) is None:
                raise Gone(id_)

    def before_delete(self, doc: dict[str, Any], id_: str) -> None:
        """Refuse the delete as the API would (e.g. a network in use)."""


def _account_exists(doc: dict[str, Any], email: str) -> bool:
    """Whether the service account exists (one of another project, or a default one, is
    taken to exist)."""
    return not email.endswith(f"@{doc['project']}.iam.gserviceaccount.com") or \
        any(a["email"] == email for a in doc["serviceAccounts"].values())


class Account(_Documented):
    """`gcp:serviceaccount/account:Account`."""

    section = "serviceAccounts"
    replace_on = frozenset({"accountId", "project"})

    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        _require(news, "accountId")
        account = news["accountId"]
        if _known(account) and not ACCOUNT_ID.match(str(account)):
            raise ValueError(f"\"account_id\" (\"{account}\") doesn't match regexp "
                             f"\"{ACCOUNT_ID.pattern}\"")
        return news

    def outputs(self, doc: dict[str, Any], inputs: Props, old: Props | None) -> Props:
        project = doc["project"]
        email = f"{inputs['accountId']}@{project}.iam.gserviceaccount.com"
        id_ = f"projects/{project}/serviceAccounts/{email}"
        if old is None and id_ in doc[self.section]:
            raise ApiError(409, f"Service account {inputs['accountId']} already exists within "
                                f"project projects/{project}., alreadyExists")
        return {**inputs, "id": id_, "name": id_, "email": email, "project": project,
                "member": f"serviceAccount:{email}",
                "uniqueId": old["uniqueId"] if old else _numeric_id()[:21],
                "disabled": bool(inputs.get("disabled", False))}


class BucketIAMMember(_Documented):
    """`gcp:storage/bucketIAMMember:BucketIAMMember`: one member of one role on a bucket."""

    section = "bucketIamMembers"
    replace_on = frozenset({"bucket", "role", "member", "condition"})

    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        _require(news, "bucket", "role", "member")
        return news

    def outputs(self, doc: dict[str, Any], inputs: Props, old: Props | None) -> Props:
        bucket, member = _last(str(inputs["bucket"])), str(inputs["member"])
        if not _bucket_exists(doc["project"], bucket):
            raise ApiError(404, f"The specified bucket does not exist: {bucket}")
        kind, _, email = member.partition(":")
        if kind == "serviceAccount" and not _account_exists(doc, email):
            raise ApiError(400, f"Service account {email} does not exist.")
        id_ = f"b/{bucket}/{inputs['role']}/{member}"
        return {**inputs, "id": id_, "bucket": f"b/{bucket}", "project": doc["project"],
                "etag": _fingerprint([id_, time.time()])[:8]}

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        project, entry = self._entry(cfg, id_, outputs)
        if not _bucket_exists(project, _last(str(entry["bucket"]))):
            raise Gone(f"the bucket of {id_} no longer exists")
        return entry


class Network(_Documented):
    """`gcp:compute/network:Network` (auto-named); its auto-mode subnetworks are implied."""

    section = "networks"
    auto_named = True
    replace_on = frozenset({"name", "project", "autoCreateSubnetworks", "description", "mtu",
                            "deleteDefaultRoutesOnCreate", "enableUlaInternalIpv6"})

    def outputs(self, doc: dict[str, Any], inputs: Props, old: Props | None) -> Props:
        _check_name("network", inputs["name"])
        if inputs["name"] == DEFAULT_NETWORK:
            raise ApiError(409, f"The resource 'projects/{doc['project']}/global/networks/"
                                f"{DEFAULT_NETWORK}' already exists, alreadyExists")
        id_ = f"projects/{doc['project']}/global/networks/{inputs['name']}"
        return {**inputs, "id": id_, "selfLink": COMPUTE + id_, "project": doc["project"],
                "autoCreateSubnetworks": inputs.get("autoCreateSubnetworks", True),
                "routingMode": inputs.get("routingMode", "REGIONAL"),
                "mtu": inputs.get("mtu", 1460), "gatewayIpv4": "",
                "numericId": old["numericId"] if old else _numeric_id(),
                "deleteDefaultRoutesOnCreate": bool(inputs.get("deleteDefaultRoutesOnCreate")),
                "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL"}

    def before_delete(self, doc: dict[str, Any], id_: str) -> None:
        for section in ("firewalls", "instances"):
            for user_id, user in doc[section].items():
                links = [user.get("network")] + [n.get("network") for n in
                                                 user.get("networkInterfaces") or []]
                if any(link and _network_id(doc["project"], link) == id_ for link in links):
                    raise ApiError(400, f"The network resource '{id_}' is already being used "
                                        f"by '{user_id}', resourceInUseByAnotherResource")


def _network_exists(doc: dict[str, Any], network: str) -> str:
    """The network's self link; an API error when the project has no such network."""
    id_ = _network_id(doc["project"], network)
    if _last(id_) != DEFAULT_NETWORK and id_.startswith(f"projects/{doc['project']}/") and \
            id_ not in doc["networks"]:
        raise ApiError(404, f"The resource '{id_}' was not found, notFound")
    return COMPUTE + id_


class Firewall(_Documented):
    """`gcp:compute/firewall:Firewall`: recorded, not enforced (loopback reaches everything)."""

    section = "firewalls"
    auto_named = True
    replace_on = frozenset({"name", "network", "direction", "project"})

    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        _require(news, "network")
        if not news.get("allows") and not news.get("denies"):
            raise ValueError("one of `allows` or `denies` must be specified")
        return super().check(name, olds, news, seed)

    def outputs(self, doc: dict[str, Any], inputs: Props, old: Props | None) -> Props:
        _check_name("firewall", inputs["name"])
        direction = inputs.get("direction", "INGRESS")
        ranges = inputs.get("sourceRanges") or []
        if direction == "INGRESS" and not ranges and not inputs.get("sourceTags"):
            ranges = ["0.0.0.0/0"]  # GCE's default for an ingress rule without a source
        for tag in inputs.get("targetTags") or []:
            _check_name("network tag", tag)
        id_ = f"projects/{doc['project']}/global/firewalls/{inputs['name']}"
        return {**inputs, "id": id_, "selfLink": COMPUTE + id_, "project": doc["project"],
                "network": _network_exists(doc, str(inputs["network"])),
                "direction": direction, "priority": inputs.get("priority", 1000),
                "sourceRanges": ranges, "disabled": bool(inputs.get("disabled", False)),
                "denies": inputs.get("denies") or [], "allows": inputs.get("allows") or [],
                "creationTimestamp": old["creationTimestamp"] if old else _now()}


# -- the bucket, in the GCS emulator ---------------------------------------------------------


def _storage(project: str) -> Any:
    """A google-cloud-storage client of the emulator."""
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        raise RuntimeError("the stand-in gcp plugin keeps buckets in the GCS emulator: "
                           "STORAGE_EMULATOR_HOST must be set")
    from google.cloud import storage

    return storage.Client(project=project)


def _bucket_exists(project: str, name: str) -> bool:
    from google.api_core import exceptions as gex

    try:
        _storage(project).get_bucket(name, retry=None)
    except gex.NotFound:
        return False
    return True


class Bucket(Resource):
    """`gcp:storage/bucket:Bucket` (auto-named), a bucket of the GCS emulator."""

    replace_on = frozenset({"name", "location", "project"})
    kept = ("location", "labels", "lifecycleRules", "uniformBucketLevelAccess",
            "publicAccessPrevention", "encryption", "versioning", "forceDestroy",
            "storageClass", "softDeletePolicy")
    """The inputs recorded in the document (the emulator keeps few of them)."""

    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        _require(news, "location")
        inputs = news if news.get("name") else {
            **news, "name": auto_name(name, seed, olds, "name")}
        bucket = inputs["name"]
        if _known(bucket) and not BUCKET_NAME.match(str(bucket)):
            raise ValueError(f"invalid bucket name {bucket!r}")
        return inputs

    def _outputs(self, project: str, inputs: Props, remote: Any) -> Props:
        name = str(inputs["name"])
        versioning = inputs.get("versioning") or {"enabled": False}
        return {**inputs, "id": name, "name": name, "project": project,
                "projectNumber": project_number(project), "selfLink": STORAGE + "b/" + name,
                "url": f"gs://{name}",
                "location": str(inputs.get("location") or remote.location or "US").upper(),
                "storageClass": remote.storage_class or "STANDARD", "versioning": versioning,
                "forceDestroy": bool(inputs.get("forceDestroy", False)),
                "timeCreated": remote.time_created.isoformat() if remote.time_created else "",
                **_labels(inputs)}

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        from google.api_core import exceptions as gex

        project = _project(cfg, inputs)
        _check_labels(inputs.get("labels"))
        client = _storage(project)
        wanted = bool((inputs.get("versioning") or {}).get("enabled"))
        bucket = client.bucket(str(inputs["name"]))
        bucket.storage_class = inputs.get("storageClass") or "STANDARD"
        bucket.versioning_enabled = wanted
        try:
            try:
                remote = client.create_bucket(bucket, location=inputs["location"], retry=None)
            except gex.InternalServerError as exc:  # a backend that cannot version
                if not wanted or "versioning" not in str(exc):
                    raise
                bucket.versioning_enabled = False
                remote = client.create_bucket(bucket, location=inputs["location"], retry=None)
        except gex.Conflict as exc:
            raise ApiError(409, f"Your previous request to create the named bucket succeeded "
                                f"and you already own it. ({inputs['name']})") from exc
        with document(project) as doc:
            doc["buckets"][remote.name] = {k: inputs[k] for k in self.kept if k in inputs}
        return remote.name, self._outputs(project, inputs, remote)

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        from google.api_core import exceptions as gex

        project = str(outputs.get("project") or _project(cfg, outputs))
        try:
            remote = _storage(project).get_bucket(id_, retry=None)
        except gex.NotFound as exc:
            raise Gone(id_) from exc
        kept = load(project)["buckets"].get(id_, {})
        inputs = {k: v for k, v in outputs.items() if k not in self.kept}
        return self._outputs(project, {**inputs, **kept, "name": id_}, remote)

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        from google.api_core import exceptions as gex

        project = str(olds.get("project") or _project(cfg, news))
        _check_labels(news.get("labels"))
        try:
            remote = _storage(project).get_bucket(id_, retry=None)
        except gex.NotFound as exc:
            raise ApiError(404, f"The specified bucket does not exist: {id_}") from exc
        wanted = bool((news.get("versioning") or {}).get("enabled"))
        if bool(remote.versioning_enabled) != wanted:
            remote.versioning_enabled = wanted
            with contextlib.suppress(gex.InternalServerError):  # a backend that cannot
                remote.patch(retry=None)
        with document(project) as doc:
            doc["buckets"][id_] = {k: news[k] for k in self.kept if k in news}
        return self._outputs(project, {**news, "name": id_}, remote)

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        from google.api_core import exceptions as gex

        project = str(outputs.get("project") or _project(cfg, outputs))
        client = _storage(project)
        try:
            bucket = client.get_bucket(id_, retry=None)
        except gex.NotFound as exc:
            raise Gone(id_) from exc
        blobs = list(client.list_blobs(bucket, versions=True, retry=None))
        if blobs and not outputs.get("forceDestroy"):
            raise ApiError(409, f"Error trying to delete bucket {id_} containing objects "
                                "without `force_destroy` set to true")
        for blob in blobs:
            bucket.delete_blob(blob.name, generation=blob.generation, retry=None)
        with contextlib.suppress(gex.NotFound):
            bucket.delete(retry=None)
        with document(project) as doc:
            doc["buckets"].pop(id_, None)


# -- the instance ----------------------------------------------------------------------------


NEEDS_STOP = ("machineType", "minCpuPlatform", "serviceAccount", "enableDisplay",
              "shieldedInstanceConfig", "advancedMachineFeatures")
"""Inputs GCE changes on a stopped VM only."""


def _same(a: Any, b: Any) -> bool:
    """Equal, or the same GCE resource named by a name and a link."""
    if isinstance(a, str) and isinstance(b, str) and "/" in a + b:
        return _last(a) == _last(b)
    return bool(a == b)


def _nic_moved(olds: Any, news: Any) -> bool:
    """Whether an interface's network or subnetwork changed (the old ones are as GCE
    returned them: a subnetwork the inputs leave out is the one GCE chose)."""
    olds, news = olds or [], news or []
    return any(not _same(o.get("network") or DEFAULT_NETWORK,
                         n.get("network") or DEFAULT_NETWORK) or
               (n.get("subnetwork") and not _same(o.get("subnetwork"), n.get("subnetwork")))
               for o, n in zip(olds, news, strict=False))


def _scheduling_reboots(olds: Any, news: Any) -> bool:
    return bool((olds or {}).get("maxRunDuration") != (news or {}).get("maxRunDuration"))


def _metadata(project: str, vm: Props) -> dict[str, str]:
    """The GCE metadata server's answers for the VM (paths under /computeMetadata/v1/)."""
    number = project_number(project)
    zone = f"projects/{number}/zones/{vm['zone']}"
    account = vm.get("serviceAccount") or {}
    email = account.get("email") or f"{number}-compute@developer.gserviceaccount.com"
    scopes = list(account.get("scopes") or [])
    attributes = {**{k: str(v) for k, v in (vm.get("metadata") or {}).items()},
                  "startup-script": vm.get("metadataStartupScript") or ""}
    nic = (vm.get("networkInterfaces") or [{}])[0]
    nat = ((nic.get("accessConfigs") or [{}]) or [{}])[0].get("natIp", "")
    token = json.dumps({"access_token": f"ya29.standin-{secrets.token_urlsafe(24)}",
                        "expires_in": 3599, "token_type": "Bearer"})
    preemptible = (vm.get("scheduling") or {}).get("preemptible")
    answers = {
        "project/project-id": project, "project/numeric-project-id": number,
        "instance/id": vm["instanceId"], "instance/name": vm["name"], "instance/zone": zone,
        "instance/hostname": f"{vm['name']}.{vm['zone']}.c.{project}.internal",
        "instance/machine-type": f"projects/{number}/machineTypes/{vm['machineType']}",
        "instance/tags": json.dumps(list(vm.get("tags") or [])),
        "instance/scheduling/preemptible": "TRUE" if preemptible else "FALSE",
        "instance/preempted": "FALSE",
        "instance/network-interfaces/0/ip": nic.get("networkIp", ""),
        "instance/network-interfaces/0/access-configs/0/external-ip": nat,
        "instance/service-accounts/": f"default/\n{email}/\n",
        "instance/attributes/": "".join(f"{k}\n" for k in sorted(attributes)),
    }
    for alias in ("default", email):
        base = f"instance/service-accounts/{alias}/"
        answers.update({
            base: json.dumps({"aliases": ["default"], "email": email, "scopes": scopes}),
            base + "email": email, base + "token": token,
            base + "scopes": "".join(f"{s}\n" for s in scopes),
            base + "aliases": "default\n"})
    answers.update({f"instance/attributes/{k}": v for k, v in attributes.items()})
    return {"/": "computeMetadata/\n", METADATA: "instance/\nproject/\n",
            **{METADATA + path: body for path, body in answers.items()}}


def _launch(project: str, vm: Props) -> None:
    """Boot the stand-in VM: its exact startup script, image, metadata server."""
    image = ((vm.get("bootDisk") or {}).get("initializeParams") or {}).get("image")
    env = {k: os.environ[k] for k in ("STORAGE_EMULATOR_HOST",) if os.environ.get(k)}
    if env:  # gcloud (on this machine's image, as on Google's) reaches the emulator too,
        # which takes no credentials
        env.update(CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE=env["STORAGE_EMULATOR_HOST"] + "/",
                   CLOUDSDK_AUTH_DISABLE_CREDENTIALS="true", CLOUDSDK_CORE_PROJECT=project)
    instance.launch(instance.Spec(
        cloud="gcp", id=vm["instanceId"], script=vm.get("metadataStartupScript") or "",
        image=image_folder(image), env=env, metadata_style="gcp",
        metadata=_metadata(project, vm)))


def _expire_later(project: str, vm: Props) -> None:
    """GCE deletes a VM whose `maxRunDuration` (with action DELETE) is up: a detached
    process does that here, unless the VM stops or goes first."""
    scheduling = vm.get("scheduling") or {}
    seconds = (scheduling.get("maxRunDuration") or {}).get("seconds")
    if not seconds or scheduling.get("instanceTerminationAction") != "DELETE":
        return
    delay = float(seconds) * float(os.environ.get(instance.MINUTE_ENV, "60")) / 60
    where = instance.folder("gcp", vm["instanceId"])
    with open(where / "expiry.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "tests.standins.gcp", "expire", project, vm["id"],
             vm["instanceId"], str(delay)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(instance.world()),
            env={**os.environ, "PYTHONPATH": str(instance.ROOT)}, start_new_session=True,
            close_fds=True)


def expire(project: str, id_: str, instance_id: str, delay_s: float) -> None:
    """Delete the VM after `delay_s` seconds of running (what `_expire_later` starts)."""
    deadline = time.monotonic() + delay_s
    while time.monotonic() < deadline:
        if instance.state("gcp", instance_id) != "running":
            return  # stopped or deleted: GCE counts the running time only
        time.sleep(0.2)
    with document(project) as doc:
        vm = doc["instances"].get(id_)
        if vm is None or vm.get("instanceId") != instance_id:
            return
        del doc["instances"][id_]
    _end(instance_id)


def _end(instance_id: str) -> None:
    instance.terminate("gcp", instance_id)
    addresses.release("gcp", instance_id)


class Instance(_Documented):
    """`gcp:compute/instance:Instance`: a stand-in VM running its startup script."""

    section = "instances"
    auto_named = True
    delete_before_replace = False
    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        _require(news, "machineType", "bootDisk", "networkInterfaces")
        return super().check(name, olds, news, seed)

    def replaces(self, olds: Props, news: Props, changed: list[str]) -> list[str]:
        out = [k for k in changed if k in ("name", "zone", "project", "hostname",
                                            "metadataStartupScript", "description",
                                            "guestAccelerators", "scratchDisks")]
        if "bootDisk" in changed:
            old = {k: v for k, v in (olds.get("bootDisk") or {}).items() if k != "autoDelete"}
            new = {k: v for k, v in (news.get("bootDisk") or {}).items() if k != "autoDelete"}
            if old != new:
                out.append("bootDisk")
        if "scheduling" in changed:
            old, new = olds.get("scheduling") or {}, news.get("scheduling") or {}
            if any(old.get(k) != new.get(k) for k in ("preemptible", "provisioningModel")):
                out.append("scheduling")
        if "networkInterfaces" in changed and \
                len(olds.get("networkInterfaces") or []) != len(news.get("networkInterfaces")
                                                                or []):
            out.append("networkInterfaces")
        return out

    def outputs(self, doc: dict[str, Any], inputs: Props, old: Props | None) -> Props:
        """Everything pulumi-gcp returns for the VM, from its inputs (and its old self)."""
        project, zone, name = doc["project"], str(inputs["zone"]), str(inputs["name"])
        _check_name("instance", name)
        _check_labels(inputs.get("labels"))
        _check_labels(((inputs.get("bootDisk") or {}).get("initializeParams") or {})
                      .get("labels"))
        for tag in inputs.get("tags") or []:
            _check_name("network tag", tag)
        email = (inputs.get("serviceAccount") or {}).get("email")
        if email and not _account_exists(doc, email):
            raise ApiError(400, f"The resource 'projects/{project}/serviceAccounts/{email}' "
                                "was not found, notFound")
        id_ = f"projects/{project}/zones/{zone}/instances/{name}"
        if old is None and id_ in doc[self.section]:
            raise ApiError(409, f"The resource '{id_}' already exists, alreadyExists")
        networks = [_network_exists(doc, str(nic.get("network") or DEFAULT_NETWORK))
                    for nic in inputs.get("networkInterfaces") or []]
        instance_id = old["instanceId"] if old else _numeric_id()
        old_nics = (old or {}).get("networkInterfaces") or []
        nics = []
        for i, (nic, network) in enumerate(zip(inputs["networkInterfaces"], networks,
                                               strict=True)):
            subnetwork = nic.get("subnetwork") or (f"{COMPUTE}projects/{project}/regions/"
                                                   f"{zone.rsplit('-', 1)[0]}/subnetworks/"
                                                   f"{_last(network)}")
            configs = []
            for j, config in enumerate(nic.get("accessConfigs") or []):
                ip = config.get("natIp") or (addresses.allocate("gcp", instance_id)
                                             if i == 0 and j == 0 else "")
                configs.append({**config, "natIp": ip,
                                "networkTier": config.get("networkTier", "PREMIUM")})
            host = configs[0]["natIp"].rsplit(".", 1)[1] if configs and configs[0]["natIp"] \
                else str(i + 2)
            nics.append({**nic, "name": f"nic{i}", "network": network,
                         "subnetwork": subnetwork, "subnetworkProject": project,
                         "networkIp": nic.get("networkIp") or
                         (old_nics[i].get("networkIp") if i < len(old_nics) else None) or
                         f"10.128.{i}.{host}",
                         "stackType": nic.get("stackType", "IPV4_ONLY"),
                         "accessConfigs": configs})
        boot = dict(inputs.get("bootDisk") or {})
        boot.update({"autoDelete": boot.get("autoDelete", True),
                     "deviceName": boot.get("deviceName", "persistent-disk-0"),
                     "mode": boot.get("mode", "READ_WRITE"),
                     "source": f"{COMPUTE}projects/{project}/zones/{zone}/disks/{name}"})
        status = (old or {}).get("currentStatus", "RUNNING")
        return {**inputs, "id": id_, "selfLink": COMPUTE + id_, "instanceId": instance_id,
                "name": name, "zone": zone, "project": project, "networkInterfaces": nics,
                "bootDisk": boot, "currentStatus": status, "cpuPlatform": "Intel Cascade Lake",
                "creationTimestamp": (old or {}).get("creationTimestamp") or _now(),
                "deletionProtection": bool(inputs.get("deletionProtection", False)),
                "labelFingerprint": _fingerprint(inputs.get("labels") or {}),
                "metadataFingerprint": _fingerprint(inputs.get("metadata") or {}),
                "tagsFingerprint": _fingerprint(inputs.get("tags") or []),
                "hostname": inputs.get("hostname", ""), **_labels(inputs)}

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        project = _project(cfg, inputs)
        inputs = {**inputs, "zone": _zone(cfg, inputs)}
        with document(project) as doc:
            outputs = self.outputs(doc, inputs, None)
            id_ = str(outputs["id"])
            doc[self.section][id_] = outputs
        try:
            _launch(project, outputs)
        except BaseException:
            with document(project) as doc:
                doc[self.section].pop(id_, None)
            _end(outputs["instanceId"])
            raise
        _expire_later(project, outputs)
        return id_, outputs

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        project = str(olds.get("project") or _project(cfg, news))
        news = {**news, "zone": news.get("zone") or olds["zone"]}
        with document(project) as doc:
            vm = doc[self.section].get(id_)
            if vm is None:
                raise ApiError(404, f"The resource '{id_}' was not found, notFound")
            stop = [k for k in NEEDS_STOP if not _same(vm.get(k), news.get(k))]
            if _nic_moved(vm.get("networkInterfaces"), news.get("networkInterfaces")):
                stop.append("networkInterfaces")
            if _scheduling_reboots(vm.get("scheduling"), news.get("scheduling")):
                stop.append("scheduling")
            running = vm.get("currentStatus") == "RUNNING"
            if stop and running and not news.get("allowStoppingForUpdate"):
                raise ApiError(400, f"{STOP_MESSAGE} (changed: {', '.join(stop)})")
            updated = self.outputs(doc, news, vm)
            doc[self.section][id_] = updated
        if stop and running:  # stopped for the update, started again: a reboot
            instance.terminate("gcp", vm["instanceId"])
            _launch(project, updated)
            _expire_later(project, updated)
        return updated

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        project = str(outputs.get("project") or _project(cfg, outputs))
        with document(project) as doc:
            vm = doc[self.section].pop(id_, None)
            if vm is not None and vm.get("deletionProtection"):
                doc[self.section][id_] = vm
                raise ApiError(400, f"The instance {id_} cannot be deleted: its deletion "
                                    "protection is on, resourceIsProtected")
        instance_id = str((vm or outputs).get("instanceId") or "")
        if instance_id:
            _end(instance_id)
        if vm is None:
            raise Gone(id_)


# -- the plugin ------------------------------------------------------------------------------


TYPES: dict[str, Resource] = {
    "gcp:storage/bucket:Bucket": Bucket(),
    "gcp:serviceaccount/account:Account": Account(),
    "gcp:storage/bucketIAMMember:BucketIAMMember": BucketIAMMember(),
    "gcp:compute/network:Network": Network(),
    "gcp:compute/firewall:Firewall": Firewall(),
    "gcp:compute/instance:Instance": Instance(),
}
PREVIEW_OUTPUTS: dict[str, tuple[str, ...]] = {
    "gcp:storage/bucket:Bucket": ("id", "selfLink", "url", "project", "projectNumber",
                                  "effectiveLabels", "pulumiLabels", "timeCreated"),
    "gcp:serviceaccount/account:Account": ("id", "name", "email", "member", "uniqueId",
                                           "project"),
    "gcp:storage/bucketIAMMember:BucketIAMMember": ("id", "etag", "project"),
    "gcp:compute/network:Network": ("id", "selfLink", "numericId", "gatewayIpv4", "project"),
    "gcp:compute/firewall:Firewall": ("id", "selfLink", "creationTimestamp", "project"),
    "gcp:compute/instance:Instance": ("id", "selfLink", "instanceId", "currentStatus",
                                      "cpuPlatform", "creationTimestamp", "project",
                                      "labelFingerprint", "metadataFingerprint",
                                      "tagsFingerprint", "effectiveLabels", "pulumiLabels"),
}


class GcpServicer(Servicer):
    """The generic server, with the provider's own config check."""

    def CheckConfig(self, request: Any, context: Any) -> Any:
        from pulumi.runtime import proto

        from tests.standins.plugin import _props

        news = _props(request.news)
        failures = []
        if not news.get("project"):
            failures.append(proto.CheckFailure(
                property="project", reason="the stand-in gcp provider needs `project` (every "
                                           "dstack GCP program sets it)"))
        credentials = news.get("credentials")
        if isinstance(credentials, str) and credentials and credentials[:1] != "{" and \
                not Path(credentials).expanduser().is_file():
            failures.append(proto.CheckFailure(
                property="credentials", reason=f"no credentials file at {credentials}"))
        return proto.CheckResponse(inputs=request.news, failures=failures)


def servicer() -> Servicer:
    """The stand-in gcp provider."""
    return GcpServicer("gcp", VERSION, dict(TYPES), {}, PREVIEW_OUTPUTS)


def main(argv: list[str]) -> None:
    """`python -m tests.standins.gcp` serves the plugin; `... expire P ID IID S` is the
    timer of one VM's maximum run duration."""
    if argv[:1] == ["expire"]:
        expire(argv[1], argv[2], argv[3], float(argv[4]))
        return
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator and "://" not in emulator:  # an engine of a gs:// state passes host:port
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://{emulator}"
    from tests.standins.plugin import serve

    serve(servicer())


if __name__ == "__main__":
    main(sys.argv[1:])
