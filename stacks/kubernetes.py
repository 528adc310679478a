"""The Kubernetes backend: each run a pod on the user's own cluster, in its own stack.

Profile settings (written by `dstack config add kubernetes`): `kubeconfig` (the file's path;
it is read where it is, never copied), `context` (else the kubeconfig's current one),
`namespace` (else the context's, else `default`), `store_url` (`s3://…` with any
S3-compatible endpoint, or `gs://…`, reachable from the pods), `image` (the pods' image when
a workflow names none; it needs bash and python3), `caller_cidr` (the only address app ports
admit besides dstack's port-forward; none by default), `schedule_timeout` (how long a run
waits for its pod to be placed, default 120s), `max_duration`, `wheel`,
`aws_profile` / `gcp_credentials` (where the store's credentials are read from at each run).
See `docs/kubernetes.md`.

No workspace stack: the store's bucket is the user's. Offers are the cluster's node pools
(`kube_offers`); a run's stack is `kubernetes_programs.run_program`. The store's credentials
are read from where the profile references them when the run starts, and reach the cluster
only inside the run's Secret (Pulumi secrets in the state); the run's own secrets stay in
the store, where the runner reads them.
"""

from __future__ import annotations

import shlex
import time
from contextlib import ExitStack, suppress
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlparse, urlunparse

from dstack.config.backends import BackendClass, ResourceChange
from dstack.config.profiles import Profile
from dstack.errors import DstackError, UsageError
from dstack.run.job import Job
from dstack.run.record import App, RunRecord, run_stack_name
from dstack.runner.bootstrap import render_bootstrap
from dstack.sizes import format_size
from dstack.stacks.caller import normalize_cidr
from dstack.stacks.cloud_bootstrap import REMOTE_ROOT, VENV, install_wheel, wheel_path
from dstack.stacks.instance_spec import (
    app_ports,
    format_duration,
    job_resources,
    max_duration_s,
    parse_duration,
)
from dstack.stacks.kube_api import KubeApi, PodState
from dstack.stacks.kube_offers import NodePool, fitting_pools, node_pools
from dstack.stacks.run_stacks import RunStacks
from dstack.store.base import Store, open_store, without_local_profile

if TYPE_CHECKING:
    from dstack.stacks.kubernetes_programs import KubeRun

DEFAULT_IMAGE = "python:3.11-slim"
DEFAULT_SCHEDULE_TIMEOUT_S = 120
POD_GONE_S = 60.0
"""How long a teardown waits for the run's pod to be gone after the stack's destroy."""
POD_CHECK_S = 3.0
"""How often a follower asks the cluster whether a run's pod still runs."""
ROOT = REMOTE_ROOT
DOWNLOAD = {
    "s3": "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1] or None)"
          ".download_file(*sys.argv[2:5])",
    "gs": "import sys; from google.cloud import storage; "
          "storage.Client().bucket(sys.argv[2]).blob(sys.argv[3]).download_to_filename(sys.argv[4])",
}
"""Store scheme → code that downloads the wheel with the store's SDK (one of the runner's
requirements, which the pod installs first)."""
CREDENTIAL_FILES = [
    "# The store's credentials leave the environment for 0600 files, so the job's own",
    "# environment (which a job may print) holds no secret, as on a cloud instance.",
    "umask 077",
    'if [ -n "${AWS_SECRET_ACCESS_KEY:-}" ]; then',
    f"  printf '[default]\\naws_access_key_id = %s\\naws_secret_access_key = %s\\n' "
    f'"$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" > {ROOT}/aws-credentials',
    "  if [ -n \"${AWS_SESSION_TOKEN:-}\" ]; then printf 'aws_session_token = %s\\n' "
    f'"$AWS_SESSION_TOKEN" >> {ROOT}/aws-credentials; fi',
    f"  export AWS_SHARED_CREDENTIALS_FILE={ROOT}/aws-credentials",
    "fi",
    'if [ -n "${DSTACK_GCP_KEY:-}" ]; then',
    f'  printf %s "$DSTACK_GCP_KEY" > {ROOT}/gcp.json',
    f"  export GOOGLE_APPLICATION_CREDENTIALS={ROOT}/gcp.json",
    "fi",
    "unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN DSTACK_GCP_KEY",
    "umask 022",
]
"""Bootstrap lines that move the Secret's credentials from the environment to files."""


class KubernetesBackend(RunStacks):
    """Runs as pods of the profile's cluster and namespace; the store is the profile's."""

    name = "kubernetes"

    def __init__(self, profile: Profile, home: Path) -> None:
        super().__init__(profile, home)
        self._forwards = ExitStack()
        self._forwarded: dict[tuple[str, int], int] = {}
        self._seen: dict[str, tuple[float, tuple[bool, PodState | None]]] = {}

    # -- settings ----------------------------------------------------------------------------

    @cached_property
    def api(self) -> KubeApi:
        """The profile's cluster and namespace."""
        kubeconfig = self.setting("kubeconfig")
        if kubeconfig is None:
            raise UsageError(f"profile {self.profile.name!r} has no `kubeconfig` setting",
                             f"`dstack config add kubernetes {self.profile.name} --kubeconfig "
                             "FILE --store URL` writes it.")
        return KubeApi(kubeconfig, self.setting("context"), self.setting("namespace"))

    def identity(self) -> str:
        """The user of the profile's kubeconfig context."""
        from kubernetes import config

        contexts, active = config.list_kube_config_contexts(self.setting("kubeconfig"))
        wanted = self.setting("context") or (active or {}).get("name")
        context = next((c for c in contexts if c.get("name") == wanted), active or {})
        return str((context.get("context") or {}).get("user") or super().identity())

    def store_url(self) -> str:
        """The profile's store, as this machine opens it."""
        url = self.setting("store_url")
        if url is None:
            raise UsageError(f"profile {self.profile.name!r} has no `store_url` setting",
                             f"`dstack config set {self.profile.name} store_url s3://BUCKET`.")
        return url

    def store(self) -> Store:
        """The profile's store."""
        return open_store(self.store_url())

    def pod_store_url(self) -> str:
        """The store as the pod opens it: without a local AWS profile name (the pod has the
        credentials in its environment)."""
        return without_local_profile(self.store_url())

    def schedule_timeout_s(self) -> int:
        """How long a run waits for its pod to be placed and started."""
        value = self.setting("schedule_timeout")
        return parse_duration(value) if value else DEFAULT_SCHEDULE_TIMEOUT_S

    def ensure_workspace(self) -> dict[str, object]:
        """No workspace stack: the store's bucket and the namespace are the user's."""
        return {}

    # -- offers ------------------------------------------------------------------------------

    def pools(self, job: Job) -> list[NodePool]:
        """The node pools that fit the job, best first (UsageError listing the cluster's
        pools when none does)."""
        return fitting_pools(node_pools(self.api.nodes()), job_resources(job), self.api.cluster)

    def check_resources(self, job: Job) -> None:
        """Refuse, before anything is created, a job no node of the cluster fits."""
        if job.needs_docker:
            raise UsageError("the docker provider needs a Docker engine, which a pod does not "
                             "have", "On Kubernetes, run the job with the python or bash "
                             "provider; the pod's image is the profile's `image` setting.")
        app_ports(job.ports)
        self.pools(job)

    def plan_resources(self, job: Job) -> list[dict[str, str]]:
        """Every object a run of `job` would declare, and the node pool it lands on."""
        pools = self.pools(job)
        res = job_resources(job)
        ports = app_ports(job.ports)
        where = f"{self.api.cluster}, namespace {self.api.namespace}"
        name = "dstack-<run>"
        gpu = res.gpu
        plan = [
            {"type": "kubernetes:core/v1:Secret", "name": name,
             "what": "the store's credentials, as Pulumi secrets", "where": where},
            {"type": "kubernetes:core/v1:Pod", "name": name, "what": "the job, restartPolicy "
             "Never", "image": self.setting("image") or DEFAULT_IMAGE,
             "node_pool": pools[0].describe(),
             "requests": f"{res.cpu or 1} CPU" +
             (f", {format_size(res.memory)} memory" if res.memory else "") +
             (f", nvidia.com/gpu {gpu.count}" if gpu else ""),
             "max_duration": format_duration(max_duration_s(job, self.profile)),
             "where": where},
            {"type": "kubernetes:networking.k8s.io/v1:NetworkPolicy", "name": name,
             "what": "no ingress" + (f" but the app ports from {self.setting('caller_cidr')}"
                                     if ports and self.setting("caller_cidr") else
                                     " (apps are reached by dstack's port-forward)")},
        ]
        if ports:
            plan.append({"type": "kubernetes:core/v1:Service", "name": name,
                         "what": f"ClusterIP, ports {', '.join(map(str, ports))}"})
        return plan

    # -- runs --------------------------------------------------------------------------------

    def bootstrap(self, run: RunRecord) -> str:
        """The pod's command: a venv with the runner's requirements and the exact wheel from
        the store (fetched with the credentials of the pod's Secret, checked against its
        SHA-256, installed without its dependencies), then the runner."""
        wheel = self.wheel()
        scheme = urlparse(self.store_url()).scheme
        if scheme not in DOWNLOAD:
            raise UsageError(f"the store of profile {self.profile.name!r} is {scheme}://, which "
                             "pods cannot reach", "Use an s3:// or gs:// store.")
        code = DOWNLOAD[scheme]
        endpoint = dict(parse_qsl(urlparse(self.store_url()).query)).get("endpoint_url", "")
        q = shlex.quote
        fetch = [shlex.join([f"{VENV}/bin/python", "-c", code, endpoint,
                             _bucket(self.store_url()), _key(self.store_url(), wheel.store_key),
                             wheel_path(wheel)])]
        preamble = [
            f"mkdir -p {q(ROOT)}",
            *CREDENTIAL_FILES,
            f"[ -x {q(VENV + '/bin/python')} ] || python3 -m venv {q(VENV)}",
            *install_wheel(wheel, fetch, self.store_url()),
        ]
        ports = app_ports(run.job.ports)
        return render_bootstrap(
            python=f"{VENV}/bin/python", store_url=self.pod_store_url(), run=run.name,
            workdir=f"{ROOT}/runs/{run.name}", cache=f"{ROOT}/cache", host="0.0.0.0",
            preamble=preamble,
            env={"DSTACK_APP_PORTS": ",".join(map(str, ports))} if ports else {})

    def store_env(self) -> tuple[tuple[str, str], ...]:
        """The store's credentials as the pod's environment, read from where the profile
        references them (never written anywhere but the run's Secret)."""
        from dstack.stacks.kube_credentials import store_credentials

        return store_credentials(self.profile, self.store_url())

    def run_config(self, run: RunRecord, bootstrap: str) -> KubeRun:
        """The run program's config."""
        from dstack.stacks.kubernetes_programs import KubeRun

        res = job_resources(run.job)
        pools = self.pools(run.job)
        gpu = res.gpu
        caller = self.setting("caller_cidr")
        return KubeRun(
            run=run.name, workflow=run.workflow, profile=self.profile.name,
            kubeconfig=str(Path(self.api.kubeconfig).expanduser().resolve()),
            context=self.api.context, namespace=self.api.namespace,
            image=self.setting("image") or DEFAULT_IMAGE, bootstrap=bootstrap,
            store_env=self.store_env(), cpu=res.cpu or 1, memory=res.memory,
            gpus=gpu.count if gpu else 0,
            gpu_products=tuple(sorted({p.gpu_product for p in pools if p.gpu_product}))
            if gpu and gpu.name else (),
            shm_size=res.shm_size, app_ports=tuple(app_ports(run.job.ports)),
            caller_cidr=normalize_cidr(caller, f"profile {self.profile.name!r} caller_cidr")
            if caller else None,
            max_duration_s=max_duration_s(run.job, self.profile))

    def provision(self, run: RunRecord, bootstrap: str
                  ) -> tuple[list[ResourceChange], dict[str, object]]:
        """Upload the wheel, bring up `run-<name>`, and wait until the pod is placed and
        started (BackendError with the scheduler's words when it is not, in time)."""
        from dstack.stacks.kubernetes_programs import run_program

        wheel = self.wheel()
        self.store().put_file(wheel.store_key, wheel.path)
        cfg = self.run_config(run, bootstrap)
        outputs, changes = self.engine.up(run_stack_name(run.name), lambda: run_program(cfg))
        pod = str(outputs.get("pod") or cfg.object_name)
        state = self.api.wait_started(pod, self.schedule_timeout_s())
        return changes, {"cloud": "kubernetes", "id": pod, "pod": pod,
                         "namespace": cfg.namespace, "cluster": self.api.cluster,
                         "node": state.node, "app_ports": list(cfg.app_ports)}

    def teardown(self, run_name: str) -> list[ResourceChange]:
        """Destroy the run's stack, then wait (a bounded time) until its pod is gone: Pulumi
        asks for the deletion, the pod's kubelet ends it."""
        from dstack.stacks.kubernetes_programs import object_name

        changes = super().teardown(run_name)
        if any(c.type == "kubernetes:core/v1:Pod" for c in changes):
            with suppress(DstackError):  # a cluster that does not answer now: done all the same
                self.api.wait_gone(object_name(run_name), POD_GONE_S)
        return changes

    def app_address(self, run: RunRecord, app: App) -> str:
        """A local URL for the app: a port-forward to its pod through the API server (on the
        same port number when it is free here), open while this process runs."""
        parsed = urlparse(app.url)
        pod, port = str(run.instance.get("pod") or ""), parsed.port or app.port
        if not pod or run.status.finished:
            return app.url
        key = (pod, port)
        if key not in self._forwarded:
            try:
                local = self._forwards.enter_context(self.api.port_forward(pod, port, port))
            except OSError:  # the same port is taken here: any free one
                local = self._forwards.enter_context(self.api.port_forward(pod, port, 0))
            self._forwarded[key] = local
        return urlunparse(parsed._replace(netloc=f"127.0.0.1:{self._forwarded[key]}"))

    def _pod(self, run: RunRecord) -> tuple[bool, PodState | None]:
        """(whether the cluster answered, the run's pod state or None when it has none),
        asked at most every POD_CHECK_S per run."""
        pod = run.instance.get("pod")
        if not pod:
            return False, None
        seen = self._seen.get(run.name)
        if seen is None or time.monotonic() - seen[0] >= POD_CHECK_S:
            try:
                seen = (time.monotonic(), (True, self.api.pod_state(str(pod))))
            except DstackError:  # unknown now; the runner's heartbeat tells
                seen = (time.monotonic(), (False, None))
            self._seen[run.name] = seen
        return seen[1]

    def runner_alive(self, run: RunRecord) -> bool | None:
        """False once the run's pod is gone or ended; otherwise unknown."""
        asked, state = self._pod(run)
        if not asked:
            return None
        return False if state is None or state.phase in ("Succeeded", "Failed") else None

    def runner_gone_reason(self, run: RunRecord) -> str | None:
        """What the cluster says of the run's pod when it ended without the runner saying."""
        asked, state = self._pod(run)
        if not asked:
            return None
        if state is None:
            return f"its pod {run.instance.get('pod')} no longer exists"
        if state.phase == "Failed":
            return f"its pod {run.instance.get('pod')} failed: {state.reason}"
        return None


def _bucket(url: str) -> str:
    return urlparse(url).netloc


def _key(url: str, key: str) -> str:
    prefix = urlparse(url).path.strip("/")
    return f"{prefix}/{key}" if prefix else key


_: BackendClass = KubernetesBackend  # mypy checks it is a `Backend`
