"""The runner: executes one run's job on the target machine, the same code on every backend.

`python -m dstack.runner --store URL --run NAME --workdir DIR [--cache DIR]`

It unpacks the code, places dependency artifacts, prepares the Python environment, runs
the job script in its own process group, ships logs and syncs artifacts while the job runs,
honours stop requests (`runs/<run>/stop.json`) and SIGTERM, syncs once more at the end and
writes the final status. It never leaves the job running: on any exit path the job's
process group is killed first.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, cast

from dstack.code.archive import extract_archive, safe_join
from dstack.errors import DstackError, StoreError
from dstack.procs import describe_exit, shell_exit_code, signal_name
from dstack.run.record import (
    App,
    RunRecord,
    Status,
    load_run,
    now,
    update_run,
)
from dstack.runner.jobscript import render_job_script
from dstack.runner.pyenv import python_env
from dstack.store.artifact_sync import ArtifactSync
from dstack.store.base import Store, open_store
from dstack.store.job_log import LogShipper, Stream
from dstack.store.keys import artifact_prefix, code_key, heartbeat_key, stop_key
from dstack.store.secrets import load_run_env, load_secrets, maskable

TICK_S = 0.2
SYNC_EVERY_S = 0.5
STOP_GRACE_S = 10.0
HEARTBEAT_EVERY_S = 15.0


def job_ports(count: int) -> list[int]:
    """The job's ports: the fixed ones a cloud firewall opens (`DSTACK_APP_PORTS`), else free
    ports of this machine."""
    fixed = [int(p) for p in os.environ.get("DSTACK_APP_PORTS", "").split(",") if p.strip()]
    if fixed:
        if len(fixed) < count:
            raise DstackError(f"the job needs {count} ports; the instance opened {len(fixed)}")
        return fixed[:count]
    return [free_port() for _ in range(count)]


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Runner:
    """One run's job, from code download to final status."""

    def __init__(self, store: Store, run: RunRecord, workdir: Path, cache: Path,
                 host: str = "127.0.0.1") -> None:
        self.store = store
        self.run = run
        self.workdir = workdir
        self.cache = cache
        self.host = host
        self.repo = workdir / "repo"
        self.log = LogShipper(store, run.name, workdir / "job.log", eager_s=SYNC_EVERY_S)
        self.proc: subprocess.Popen[bytes] | None = None
        self._pumps: list[threading.Thread] = []
        self._term = threading.Event()
        self.aborted_during_stop = False
        self.sync_error: str | None = None
        """The last failure of an artifact sync while the job ran, if one failed."""

    # -- preparation ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Code, dependency artifacts: everything the job needs on disk."""
        self.repo.mkdir(parents=True, exist_ok=True)
        if self.run.code:
            archive = self.workdir / "code.tar.gz"
            self.store.get_file(code_key(self.run.code), archive)
            extract_archive(archive, self.repo)
            archive.unlink()
        for dep in self.run.deps:
            keys = self.store.list(artifact_prefix(dep))
            self.log.say(f"fetching {len(keys)} artifact file(s) of run {dep}")
            for key in keys:
                rel = key[len(artifact_prefix(dep)):]
                self.store.get_file(key, safe_join(self.repo, rel))

    def environment(self, ports: list[int], python_bin: Path) -> dict[str, str]:
        """The job's environment: the runner's, the user's, and DSTACK_* / PORT_* values."""
        # Not the engine's: a local runner is started by the engine's dynamic provider, whose
        # PULUMI_* variables (passphrase file, state URL, the stack's config) are no job's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
        env.update(self.run.job.env)
        stored = (load_run_env(self.store, self.run.name, self.run.job.stored_env)
                  if self.run.job.stored_env else {})  # --env-file: not in the record
        env.update(stored)
        secrets = load_secrets(self.store)  # from the store: never in scripts or state
        env.update(secrets)
        self.log.hide([*secrets.values(), *maskable(list(stored.values())),
                       *(self.run.job.env[k] for k in self.run.job.secret_env
                         if k in self.run.job.env)])
        env["DSTACK_RUN"] = self.run.name
        env["DSTACK_WORKFLOW"] = self.run.workflow or ""
        env["PATH"] = f"{python_bin}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        env["DSTACK_CACHE"] = str(self.cache)
        for i, port in enumerate(ports):
            env[f"PORT_{i}"] = str(port)
        if ports:
            env["PORT"] = str(ports[0])
            env["DSTACK_HOST"] = self.host
        if self.run.job.token:
            env["DSTACK_TOKEN"] = self.run.job.token
        return env

    # -- the job -------------------------------------------------------------------------

    def start_job(self) -> None:
        """Start `job.sh` in its own process group, its stdout and stderr going to the log."""
        job = self.run.job
        python_bin = python_env(job.requirements and str(self.repo / job.requirements),
                                self.cache / "venvs", self.log.say, job.packages)
        ports = job_ports(job.ports)
        self.ports = ports
        script = self.workdir / "job.sh"
        script.write_text(render_job_script(job, str(self.repo / job.working_dir)),
                          encoding="utf-8", errors="surrogateescape")
        self.proc = subprocess.Popen(
            ["bash", str(script)], cwd=self.repo, env=self.environment(ports, python_bin),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            process_group=0,
        )
        self._pumps = [threading.Thread(target=self._pump, args=(pipe, stream), daemon=True)
                       for pipe, stream in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))]
        for pump in self._pumps:
            pump.start()

    def _pump(self, pipe: IO[bytes], stream: Stream) -> None:
        reader = cast("io.BufferedReader", pipe)  # what Popen gives for a pipe (bufsize -1)
        for chunk in iter(lambda: reader.read1(65536), b""):  # what is there, not 64 KiB
            self.log.write(chunk, stream)

    def _drain(self, timeout_s: float = 5.0) -> None:
        """Wait until the job's pipes are read to the end (a process that left the job's group
        and keeps them open is not waited for longer than `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        for pump in self._pumps:
            pump.join(max(0.0, deadline - time.monotonic()))

    def kill_job(self, sig: int) -> None:
        """Send `sig` to the job's whole process group."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def stop_job(self, abort: bool) -> None:
        """SIGTERM, a grace period, then SIGKILL (SIGKILL at once when aborting)."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            self.kill_job(signal.SIGKILL)  # what the job left running in its process group
            return
        if not abort:
            self.kill_job(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(TICK_S)
                with contextlib.suppress(StoreError):
                    self.log.flush()  # the job's shutdown output, as it comes
                if self._stop_requested() == "abort":
                    self.log.say("abort requested: killing the job now")
                    self.aborted_during_stop = True
                    break
        self.kill_job(signal.SIGKILL)
        self.proc.wait()
        if self.run.job.needs_docker:  # the container outlives its killed client otherwise
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["docker", "rm", "-f", f"dstack-{self.run.name}"],
                               capture_output=True, timeout=60)

    def _check_apps(self, pending: list[tuple[App, str]]) -> list[tuple[App, str]]:
        """Apps whose port answers now are recorded in the run; return those still waiting."""
        import urllib.error  # only a job with apps probes them: 14 ms of the runner's start
        import urllib.request

        still = []
        ready = []
        for app, probe in pending:
            try:
                with urllib.request.urlopen(probe, timeout=0.5):
                    ready.append(app)
            except urllib.error.HTTPError:
                ready.append(app)  # it answers, even if not with 200 on that path
            except (OSError, ValueError):
                still.append((app, probe))
        if ready:
            self.run = update_run(self.store, self.run.name, apps=[*self.run.apps, *ready])
            for app in ready:
                self.log.say(f"{app.name} is ready at {app.url}")
        return still

    def _pending_apps(self) -> list[tuple[App, str]]:
        """Each app of the job with the URL that tells when it is ready."""
        apps = []
        for spec in self.run.job.apps:
            port = self.ports[spec.index]
            base = f"http://{self.host}:{port}"  # 0.0.0.0 on a cloud: shown with its address
            probe = f"http://{'127.0.0.1' if self.host == '0.0.0.0' else self.host}:{port}"
            path = spec.url_path.replace("{token}", self.run.job.token or "")
            apps.append((App(name=spec.name, port=port, url=base + path),
                         probe + spec.ready_path))
        return apps

    def supervise(self, sync: ArtifactSync) -> tuple[int | None, str | None]:
        """Wait for the job, syncing as it runs; return (exit code, stop kind) at its end."""
        assert self.proc is not None
        pending = self._pending_apps()
        last_sync = last_beat = 0.0
        while True:
            code = self.proc.poll()
            if code is not None:
                return code, None
            stop = self._stop_requested()
            if stop is not None:
                self.log.say("stop requested: " + ("aborting" if stop == "abort" else "stopping"))
                self.stop_job(abort=stop == "abort")
                return self.proc.returncode, "abort" if self.aborted_during_stop else stop
            if pending:
                pending = self._check_apps(pending)
            if time.monotonic() - last_sync >= SYNC_EVERY_S:
                last_sync = time.monotonic()
                self._sync_quietly(sync)
            if time.monotonic() - last_beat >= HEARTBEAT_EVERY_S:
                last_beat = time.monotonic()
                with contextlib.suppress(DstackError):
                    self.store.put_json(heartbeat_key(self.run.name), {"at": time.time()})
            time.sleep(TICK_S)

    def _stop_requested(self) -> str | None:
        if self._term.is_set():
            return "stop"
        try:
            if self.store.exists(stop_key(self.run.name)):
                abort = self.store.get_json(stop_key(self.run.name)).get("abort", False)
                return "abort" if abort else "stop"
        except DstackError:
            return None
        return None

    def _sync_quietly(self, sync: ArtifactSync) -> None:
        """A sync while the job runs: a failure is logged and retried on the next tick."""
        try:
            self.log.flush()
            sync.sync()
        except (StoreError, OSError) as exc:
            self.sync_error = str(exc)
            with contextlib.suppress(Exception):
                self.log.say(f"artifact sync failed (will retry): {exc}")

    # -- the whole run ---------------------------------------------------------------------

    def execute(self) -> int:
        """Run the job end to end; return the runner's own exit code (0 unless it crashed)."""
        self.sync_error = None
        signal.signal(signal.SIGTERM, lambda *_: self._term.set())
        self.run = update_run(self.store, self.run.name, status=Status.RUNNING.value,
                              started_at=now())
        if self.run.status.finished:
            return 0
        sync = ArtifactSync(self.store, self.run.name, self.repo,
                            [a.path for a in self.run.job.artifacts])
        stop: str | None = None
        code: int | None = None
        try:
            self.prepare()
            if self._stop_requested() is None:
                self.start_job()
                code, stop = self.supervise(sync)
            else:
                stop = self._stop_requested()
        except DstackError as exc:
            self.log.say(f"error: {exc}")
            self._finish(Status.FAILED, None, str(exc), sync, final_sync=True)
            return 0
        finally:
            self.stop_job(abort=True)
        if stop == "abort":
            self._finish(Status.ABORTED, code, "aborted by the user", sync, final_sync=False)
        elif stop == "stop":
            self._finish(Status.STOPPED, code, "stopped by the user", sync, final_sync=True)
        else:
            status = Status.DONE if code == 0 else Status.FAILED
            self._finish(status, code, job_message(code), sync, final_sync=True)
        return 0

    def _finish(self, status: Status, code: int | None, message: str | None,
                sync: ArtifactSync, final_sync: bool) -> None:
        self._drain()
        if final_sync:
            update_run(self.store, self.run.name, status=Status.UPLOADING.value)
            try:
                n = sync.sync()
                if sync.paths:
                    self.log.say(f"saved {sync.files} artifact file(s) ({n} uploaded in the "
                                 "final sync)")
            except (StoreError, OSError) as exc:
                self.log.say(f"error: the final artifact sync failed: {exc}")
                status, message = Status.FAILED, f"artifact sync failed: {exc}"
        if status is Status.DONE and self.sync_error and sync.changed():
            status, message = Status.FAILED, f"artifact sync failed: {self.sync_error}"
        self.log.say(f"run {status.value}" + (f" ({describe_exit(code)})" if code is not None
                                               else ""))
        with contextlib.suppress(StoreError):
            self.log.flush()
        self.run = update_run(self.store, self.run.name, status=status.value, exit_code=code,
                              message=message)
        if status is Status.DONE and self.run.tag:
            from dstack.run.tags import add_tag  # only a tagged run's end needs it

            try:
                add_tag(self.store, self.run.tag, self.run)
            except DstackError as exc:
                self.log.say(f"could not tag the run: {exc}")
                with contextlib.suppress(StoreError):
                    self.log.flush()


def job_message(code: int | None) -> str | None:
    """The run's message for a job that ended with `code`: None when it succeeded."""
    if code is None or code == 0:
        return None
    if code < 0:
        return f"the job was ended by signal {signal_name(-code)} (exit code " \
               f"{shell_exit_code(code)})"
    return f"the job exited with {code}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m dstack.runner`."""
    parser = argparse.ArgumentParser(prog="dstack.runner")
    parser.add_argument("--store", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".dstack" / "cache")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    os.umask(0o077)  # the runner's files are private; job.sh restores the usual 022
    store = open_store(args.store)
    run = load_run(store, args.run)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        return Runner(store, run, args.workdir, args.cache, args.host).execute()
    except BaseException as exc:
        with contextlib.suppress(Exception):
            update_run(store, args.run, status=Status.FAILED.value,
                       message=f"the runner crashed: {exc!r}")
        raise


if __name__ == "__main__":
    sys.exit(main())
