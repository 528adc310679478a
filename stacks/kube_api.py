"""What dstack asks a Kubernetes cluster directly, through the official Python client: is it
there, may the profile use its namespace, what nodes it has, where a run's pod is, why the
scheduler cannot place it, and a port-forward to it.

Stacks (the objects of a run) are Pulumi's business (`kubernetes_programs`); this module only
reads, except for the port-forward. The kubeconfig is read where it lives, never copied.
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from dstack.errors import BackendError, UsageError
from dstack.json_types import JsonDoc

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

TIMEOUT_S = 10
"""Each API call's time-out."""
NEEDED = (*((group, resource, verb)
             for group, resource in (("", "pods"), ("", "secrets"), ("", "services"),
                                     ("networking.k8s.io", "networkpolicies"))
             for verb in ("get", "create", "patch", "delete")),
          ("", "pods/portforward", "create"), ("", "nodes", "list"))
"""(API group, resource, verb) a profile's identity needs in its namespace, and `nodes` in the
cluster (docs/kubernetes.md). Pulumi creates objects by server-side apply: a patch."""
FORWARD_TRIES = 4
"""How many times one forwarded connection tries to open its stream to the pod."""
PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                           "ErrImageNeverPull", "CreateContainerConfigError"})


@dataclass(frozen=True)
class PodState:
    """Where a run's pod is: its phase, node, and the words of whatever holds it back."""

    phase: str
    node: str | None
    reason: str | None
    """The scheduler's message while unschedulable, or a container's waiting reason."""
    failed_to_start: bool = False
    """True when it cannot start however long one waits (its image cannot be pulled)."""


class KubeApi:
    """One kubeconfig context of a cluster, and the namespace the profile uses in it."""

    def __init__(self, kubeconfig: str, context: str | None = None,
                 namespace: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self._namespace = namespace

    # -- connection ------------------------------------------------------------------------

    @cached_property
    def client(self) -> ApiClient:
        """The API client of the kubeconfig's context (UsageError when it does not load)."""
        return self._new_client()

    @cached_property
    def _forward_client(self) -> ApiClient:
        """A client of its own for port-forwards: the library's `portforward` swaps the
        request function of the client it is given while it connects, which would turn
        another thread's plain call into a websocket one."""
        return self._new_client()

    def _new_client(self) -> ApiClient:
        from kubernetes import config

        if not Path(self.kubeconfig).is_file():
            raise UsageError(f"kubeconfig {self.kubeconfig} does not exist",
                             "Give the path of a kubeconfig file (--kubeconfig).")
        try:
            client = config.new_client_from_config(config_file=self.kubeconfig,
                                                   context=self.context,
                                                   persist_config=False)
        except (config.ConfigException, ValueError, OSError) as exc:
            raise UsageError(f"kubeconfig {self.kubeconfig} does not load: {exc}",
                             "Check the file and the context (--context) it names.") from exc
        if not client.configuration.verify_ssl:  # the kubeconfig says so; no warning a call
            import urllib3

            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        return client

    @property
    def cluster(self) -> str:
        """The context's name, as messages name the cluster."""
        return self.context or self._current_context()[0] or "(current context)"

    @property
    def namespace(self) -> str:
        """The profile's namespace: the one given, else the context's, else `default`."""
        return self._namespace or self._current_context()[1] or "default"

    def _current_context(self) -> tuple[str | None, str | None]:
        from kubernetes import config

        try:
            contexts, current = config.list_kube_config_contexts(config_file=self.kubeconfig)
        except (config.ConfigException, OSError):
            return None, None
        chosen = next((c for c in contexts if c.get("name") == self.context), current) \
            if self.context else current
        chosen = chosen or {}
        return chosen.get("name"), (chosen.get("context") or {}).get("namespace")

    @contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        """Turn the client's failures into dstack errors naming the cluster."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except ApiException as exc:
            if exc.status in (401, 403):
                raise UsageError(
                    f"cluster {self.cluster} refused to {what}: {exc.status} {exc.reason}",
                    "The kubeconfig's user needs the permissions docs/kubernetes.md lists.",
                ) from exc
            raise BackendError(f"cluster {self.cluster} could not {what}: "
                               f"{exc.status} {exc.reason}: {_api_message(exc)}") from exc
        except (HTTPError, OSError) as exc:
            raise BackendError(
                f"cluster {self.cluster} does not answer at {self.client.configuration.host}: "
                f"{exc.__class__.__name__}",
                "Check that the cluster is up and reachable from here (VPN, kubeconfig "
                "server address).") from exc

    def _json(self, obj: object) -> JsonDoc:
        doc = self.client.sanitize_for_serialization(obj)
        return doc if isinstance(doc, dict) else {}

    # -- questions -------------------------------------------------------------------------

    def version(self) -> str:
        """The API server's version (raises when the cluster does not answer)."""
        from kubernetes.client import VersionApi

        with self._calls("tell its version"):
            return str(VersionApi(self.client).get_code(_request_timeout=TIMEOUT_S).git_version)

    def missing_permissions(self) -> list[str]:
        """What the profile's identity may not do in its namespace (`verb resource`); raises
        UsageError when the namespace does not exist."""
        from kubernetes.client import AuthorizationV1Api, CoreV1Api
        from kubernetes.client.exceptions import ApiException

        with self._calls(f"read namespace {self.namespace}"):
            try:
                CoreV1Api(self.client).read_namespace(self.namespace,
                                                      _request_timeout=TIMEOUT_S)
            except ApiException as exc:
                if exc.status == 404:
                    raise UsageError(
                        f"namespace {self.namespace!r} does not exist in cluster {self.cluster}",
                        f"Create it (`kubectl create namespace {self.namespace}`) or give "
                        "another one with --namespace.") from exc
                if exc.status != 403:  # may not read namespaces: the reviews below tell
                    raise
        missing = []
        auth = AuthorizationV1Api(self.client)
        with self._calls("review the profile's permissions"):
            for group, resource, verb in NEEDED:
                review = auth.create_self_subject_access_review({
                    "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": {
                        "namespace": "" if resource == "nodes" else self.namespace,
                        "group": group, "verb": verb,
                        "resource": resource.split("/")[0],
                        "subresource": resource.split("/")[1] if "/" in resource else ""}}},
                    _request_timeout=TIMEOUT_S)
                if not review.status.allowed:
                    missing.append(f"{verb} {resource}")
        return missing

    def nodes(self) -> list[JsonDoc]:
        """Every Node object, as JSON."""
        from kubernetes.client import CoreV1Api

        with self._calls("list its nodes"):
            listed = CoreV1Api(self.client).list_node(_request_timeout=TIMEOUT_S)
        return [self._json(item) for item in listed.items]

    def pod(self, name: str) -> JsonDoc | None:
        """The pod `name` of the namespace as JSON; None when there is none."""
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException

        with self._calls(f"read pod {name}"):
            try:
                return self._json(CoreV1Api(self.client).read_namespaced_pod(
                    name, self.namespace, _request_timeout=TIMEOUT_S))
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def pod_state(self, name: str) -> PodState | None:
        """The state of pod `name`; None when there is none."""
        pod = self.pod(name)
        return None if pod is None else pod_state(pod)

    def wait_started(self, name: str, timeout_s: float, poll_s: float = 0.5) -> PodState:
        """Wait until pod `name` is placed and started (or already ended); BackendError with
        the scheduler's or the kubelet's words when it is not within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        state: PodState | None = None
        while True:
            state = self.pod_state(name)
            if state is not None and state.phase in ("Running", "Succeeded", "Failed"):
                return state
            if state is not None and state.failed_to_start:
                raise BackendError(f"pod {name} cannot start: {state.reason}",
                                   "Check the image the profile or the workflow names.")
            if time.monotonic() > deadline:
                why = state.reason if state and state.reason else "it is still pending"
                raise BackendError(
                    f"cluster {self.cluster} did not start pod {name} within "
                    f"{timeout_s:g}s: {why}",
                    "Ask for resources a node has free now (`dstack run ... --dry-run` shows "
                    "the node pool), or raise the profile's `schedule_timeout`.")
            time.sleep(poll_s)

    def wait_gone(self, name: str, timeout_s: float, poll_s: float = 0.5) -> bool:
        """Wait until pod `name` no longer exists (its kubelet has ended it); whether it is
        gone within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.pod(name) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(poll_s)
        return True

    @contextmanager
    def port_forward(self, pod: str, remote_port: int, local_port: int = 0
                     ) -> Iterator[int]:
        """Forward a local loopback port to `remote_port` of `pod` through the API server,
        while the block runs; the local port."""
        from kubernetes.client import CoreV1Api
        from kubernetes.stream import portforward

        listener = socket.socket()
        try:
            listener.bind(("127.0.0.1", local_port))
            listener.listen(16)
        except OSError:
            listener.close()
            raise
        stop = threading.Event()
        api = CoreV1Api(self._forward_client)
        swapping = threading.Lock()  # one connection at a time swaps the client's request

        def connect() -> tuple[Callable[[], None], socket.socket]:
            """A stream to the pod's port and how to close it. The API server's hop to the
            kubelet can fail on a busy cluster, so it is tried a few times."""
            attempt = 0
            while True:
                try:
                    with swapping:
                        forward = portforward(api.connect_get_namespaced_pod_portforward,
                                              pod, self.namespace, ports=str(remote_port))
                    return forward.close, forward.socket(remote_port)
                except Exception:  # the last failure is the connection's
                    attempt += 1
                    if attempt >= FORWARD_TRIES:
                        raise
                    time.sleep(0.5 * attempt)

        def pipe(conn: socket.socket) -> None:
            try:
                close, remote = connect()
                remote.setblocking(True)
                _splice(conn, remote, stop)
                close()
            except Exception:  # one connection fails, the forward goes on
                conn.close()

        def accept() -> None:
            listener.settimeout(0.5)
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=pipe, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        try:
            yield int(listener.getsockname()[1])
        finally:
            stop.set()
            listener.close()


def _splice(a: socket.socket, b: socket.socket, stop: threading.Event) -> None:
    """Copy bytes both ways between two sockets until either side closes."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while not stop.is_set():
            for key, _ in sel.select(0.5):
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                data = src.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
    finally:
        sel.close()
        a.close()
        b.close()


def pod_state(pod: JsonDoc) -> PodState:
    """A pod's state from its JSON: phase, node, and the reason it waits, if any."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    status = pod.get("status") if isinstance(pod.get("status"), dict) else {}
    assert isinstance(spec, dict) and isinstance(status, dict)
    phase = str(status.get("phase") or "Pending")
    reason: str | None = None
    failed = False
    for cond in status.get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "PodScheduled" and \
                cond.get("status") == "False":
            reason = str(cond.get("message") or cond.get("reason") or "unschedulable")
    for cs in status.get("containerStatuses") or []:
        waiting = ((cs or {}).get("state") or {}).get("waiting") if isinstance(cs, dict) else None
        if isinstance(waiting, dict) and waiting.get("reason") not in (None, "ContainerCreating"):
            reason = f"{waiting.get('reason')}: {waiting.get('message') or ''}".rstrip(": ")
            failed = waiting.get("reason") in PULL_FAILURES
    if phase == "Failed":
        reason = str(status.get("reason") or status.get("message") or _ended(status) or
                     reason or "failed")
    node = spec.get("nodeName")
    return PodState(phase=phase, node=str(node) if node else None, reason=reason,
                    failed_to_start=failed)


def _ended(status: dict[str, object]) -> str | None:
    """`container job ended: OOMKilled, exit code 137` from a pod's container statuses."""
    for cs in status.get("containerStatuses") or []:  # type: ignore[attr-defined]
        ended = ((cs or {}).get("state") or {}).get("terminated")
        if isinstance(ended, dict):
            return (f"container {cs.get('name')} ended: {ended.get('reason') or 'Error'}, "
                    f"exit code {ended.get('exitCode')}")
    return None


def _api_message(exc: Exception) -> str:
    import json

    body = getattr(exc, "body", None)
    try:
        return str(json.loads(body).get("message")) if body else ""
    except (ValueError, AttributeError):
        return str(body)[:300]
