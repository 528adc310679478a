"""The docker and code providers: the exact commands their job scripts run (with recording
stand-ins for docker, curl, wget and the servers), and the refusal of docker jobs where no
Docker engine answers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from dstack.errors import SpecError, UsageError
from dstack.providers import docker
from dstack.providers.apps import OPENVSCODE_SHA256, OPENVSCODE_VERSION, CodeParams
from dstack.run.context import Context
from dstack.run.job import Job
from dstack.run.submit import RunOptions, make_job, plan_run
from dstack.runner.jobscript import render_job_script
from dstack.spec.registry import PROVIDERS, provider_params
from dstack.spec.validation import validate_workflow
from dstack.store.secrets import add_secret

RUN = "brave-otter-1"
HOST = "127.0.0.1"
PORTS = ["41001", "41002"]
TOKEN = "tok-EN_123"
PASSWORD = "p'\"$(touch pwned)`;\n é"
ARGS = ["a b", "it's", "$(touch pwned)", "", "é"]
# Tools the scripts may use; PATH holds only these (linked) and the stand-ins of a test.
TOOLS = ["bash", "sh", "cat", "cp", "dirname", "gzip", "mkdir", "mktemp", "mv", "rm",
         "sha256sum", "tar", "printf", "echo"]
RECORD = r"""#!/bin/bash
# Records its name, argv (NUL-separated), stdin and a few variables, then exits 0.
n=$(cat "$REC/count" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$REC/count"
printf '%s\0' "$(basename "$0")" "$@" > "$REC/$n.argv"
env > "$REC/$n.env"
"""


def job_of(fields: dict[str, Any], args: list[str] | None = None,
           env: dict[str, str] | None = None) -> Job:
    return make_job(validate_workflow(fields), args or [], env or {})


def sandbox(tmp_path: Path, stand_ins: dict[str, str]) -> tuple[Path, Path]:
    """A bin folder with the tools and the stand-ins (name → extra script lines), and the
    folder the stand-ins record into."""
    bin_dir, rec = tmp_path / "bin", tmp_path / "rec"
    bin_dir.mkdir()
    rec.mkdir()
    for tool in [*TOOLS, "basename", "env"]:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(RECORD + body)
        (bin_dir / name).chmod(0o755)
    return bin_dir, rec


def run_script(job: Job, tmp_path: Path, bin_dir: Path, rec: Path,
               extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the job's script as the runner would, with the runner's variables."""
    work = tmp_path / "work dir"
    work.mkdir(exist_ok=True)
    script = tmp_path / "job.sh"
    script.write_text(render_job_script(job, str(work)), encoding="utf-8")
    env = {"PATH": str(bin_dir), "REC": str(rec), "HOME": str(tmp_path / "home"),
           "DSTACK_RUN": RUN, "DSTACK_WORKFLOW": "", "DSTACK_HOST": HOST, "LC_ALL": "C.UTF-8",
           **{f"PORT_{i}": p for i, p in enumerate(PORTS[:job.ports])},
           **({"PORT": PORTS[0]} if job.ports else {}),
           **({"DSTACK_TOKEN": TOKEN} if job.token else {}), **job.env, **(extra_env or {})}
    return subprocess.run([str(bin_dir / "bash"), str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def calls(rec: Path) -> list[list[str]]:
    """Each recorded call's argv, its program's name first, in order."""
    n = int((rec / "count").read_text()) if (rec / "count").exists() else 0
    return [(rec / f"{i}.argv").read_bytes().decode().split("\0")[:-1] for i in range(1, n + 1)]


def call_env(rec: Path, i: int) -> dict[str, str]:
    lines = (rec / f"{i}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


# -- docker: the command line -------------------------------------------------------------


def test_docker_from_cli_takes_the_image_and_passes_the_rest() -> None:
    params = provider_params("docker")
    assert params.from_cli(["ubuntu"]) == ({"image": "ubuntu"}, [])
    assert params.from_cli(["ubuntu", "echo", "hi"]) == (
        {"image": "ubuntu"}, ["echo", "hi"])
    for bad in ([], ["--rm"]):
        with pytest.raises(UsageError, match="needs the image") as caught:
            params.from_cli(bad)
        assert "dstack run docker IMAGE [-- COMMAND...]" in (caught.value.hint or "")


def test_docker_job_runs_docker_run_with_the_passed_command(tmp_path: Path) -> None:
    job = job_of({"provider": "docker", "image": "ubuntu:22.04"}, ["echo", "hi there"])
    assert job.needs_docker and job.ports == 0 and job.secret_env == []
    bin_dir, rec = sandbox(tmp_path, {"docker": ""})
    proc = run_script(job, tmp_path, bin_dir, rec)
    assert proc.returncode == 0, proc.stderr
    assert calls(rec) == [[
        "docker", "run", "--rm", "--init", "--name", f"dstack-{RUN}",
        "-v", f"{tmp_path / 'work dir'}:/workdir", "-w", "/workdir",
        "-e", "DSTACK_RUN", "-e", "DSTACK_WORKFLOW", "ubuntu:22.04", "echo", "hi there"]]


def test_docker_job_passes_env_by_name_ports_shm_gpus_and_commands(tmp_path: Path) -> None:
    commands = ['printf "<%s>" "$@"', "echo; echo done"]
    job = job_of({"provider": "docker", "image": "img", "commands": commands, "ports": 2,
                  "environment": {"SECRETISH": "v $(x)"}, "env": ["B=2"],
                  "resources": {"shm_size": "1GB", "gpu": 2}}, ARGS)
    bin_dir, rec = sandbox(tmp_path, {"docker": ""})
    proc = run_script(job, tmp_path, bin_dir, rec)
    assert proc.returncode == 0, proc.stderr
    [argv] = calls(rec)
    script = "set -e\n" + "\n".join(commands)
    assert argv == [
        "docker", "run", "--rm", "--init", "--name", f"dstack-{RUN}",
        "-v", f"{tmp_path / 'work dir'}:/workdir", "-w", "/workdir",
        "-e", "SECRETISH", "-e", "B", "-e", "DSTACK_RUN", "-e", "DSTACK_WORKFLOW",
        "-e", "PORT_0", "-e", "PORT_1", "-e", "PORT",
        "-p", f"{HOST}:{PORTS[0]}:{PORTS[0]}", "-p", f"{HOST}:{PORTS[1]}:{PORTS[1]}",
        "--shm-size", "1000000000b", "--gpus", "2",
        "img", "sh", "-c", script, "sh", *ARGS]
    assert "v $(x)" not in " ".join(argv)  # values only through the environment
    assert call_env(rec, 1)["SECRETISH"] == "v $(x)"
    # What the container would run: the commands under sh -c, the args as "$@".
    inside = subprocess.run(argv[argv.index("img") + 1:], capture_output=True, text=True,
                            cwd=tmp_path)
    assert inside.stdout == "".join(f"<{a}>" for a in ARGS) + "\ndone\n"
    assert not list(tmp_path.rglob("pwned"))
    assert [a.index for a in job.apps] == [0, 1]


@pytest.mark.parametrize(("entrypoint", "expected"), [
    ("", ["--entrypoint", "", "img", "sh", "-c", "set -e\nls", "sh"]),
    ("/bin/bash -c", ["--entrypoint", "/bin/bash", "img", "-c", "set -e\nls", "sh"]),
    (["python", "-u"], ["--entrypoint", "python", "img", "-u", "sh", "-c", "set -e\nls", "sh"]),
])
def test_docker_entrypoint_override(entrypoint: Any, expected: list[str],
                                    tmp_path: Path) -> None:
    job = job_of({"provider": "docker", "image": "img", "entrypoint": entrypoint,
                  "commands": ["ls"]}, ["x"])
    bin_dir, rec = sandbox(tmp_path, {"docker": ""})
    assert run_script(job, tmp_path, bin_dir, rec).returncode == 0
    [argv] = calls(rec)
    assert argv[argv.index("DSTACK_WORKFLOW") + 1:] == [*expected, "x"]


def test_docker_registry_login_keeps_the_password_off_every_command_line(
        tmp_path: Path) -> None:
    job = job_of({"provider": "docker", "image": "registry.example:5000/team/img:1",
                  "registry_auth": {"username": "me", "password": PASSWORD}})
    assert job.secret_env == [docker.PASSWORD_VAR] and job.env[docker.PASSWORD_VAR] == PASSWORD
    script = render_job_script(job, "/w")
    assert PASSWORD not in script and "p'" not in script
    bin_dir, rec = sandbox(tmp_path, {"docker": 'if [ "$1" = login ]; then cat > "$REC/stdin";'
                                                ' echo "$DOCKER_CONFIG" > "$REC/config"; fi\n'})
    proc = run_script(job, tmp_path, bin_dir, rec)
    assert proc.returncode == 0, proc.stderr
    login, pull, run = calls(rec)
    assert login == ["docker", "login", "--username", "me", "--password-stdin",
                     "registry.example:5000"]
    assert (rec / "stdin").read_text() == PASSWORD
    assert pull == ["docker", "pull", "registry.example:5000/team/img:1"]
    assert run[:3] == ["docker", "run", "--rm"] and "registry.example:5000/team/img:1" in run
    assert all(PASSWORD not in " ".join(argv) for argv in calls(rec))
    config = (rec / "config").read_text().strip()
    assert config and not Path(config).exists()  # the credentials are gone after the pull
    assert call_env(rec, 2)["DOCKER_CONFIG"] == config
    assert "DOCKER_CONFIG" not in call_env(rec, 3)
    assert docker.PASSWORD_VAR not in call_env(rec, 2)  # unset once logged in
    assert f"-e {docker.PASSWORD_VAR}" not in " ".join(run)


def test_docker_registry_password_from_a_profile_secret_is_in_no_job_document(
        tmp_path: Path) -> None:
    job = job_of({"provider": "docker", "image": "ghcr.io/team/img:1",
                  "registry_auth": {"username": "me", "password_secret": "GHCR_TOKEN"}})
    assert job.needs_secrets == ["GHCR_TOKEN"]
    assert job.secret_env == [] and docker.PASSWORD_VAR not in job.env
    assert PASSWORD not in job.model_dump_json()
    bin_dir, rec = sandbox(tmp_path, {"docker": 'if [ "$1" = login ]; then cat > "$REC/stdin";'
                                                " fi\n"})
    # The runner puts every profile secret in the job's environment.
    proc = run_script(job, tmp_path, bin_dir, rec, extra_env={"GHCR_TOKEN": PASSWORD})
    assert proc.returncode == 0, proc.stderr
    login, pull, _run = calls(rec)
    assert pull == ["docker", "pull", "ghcr.io/team/img:1"]
    assert login == ["docker", "login", "--username", "me", "--password-stdin", "ghcr.io"]
    assert (rec / "stdin").read_text() == PASSWORD
    assert all(PASSWORD not in " ".join(argv) for argv in calls(rec))
    assert "GHCR_TOKEN" not in call_env(rec, 2)  # unset once logged in


@pytest.mark.parametrize("auth", [
    {"username": "me"},
    {"username": "me", "password": "pw", "password_secret": "TOKEN"},
    {"username": "me", "password_secret": "not a name"},
])
def test_docker_registry_auth_takes_exactly_one_password(auth: dict[str, str]) -> None:
    with pytest.raises(SpecError) as err:
        job_of({"provider": "docker", "image": "img", "registry_auth": auth})
    assert "password" in str(err.value)


def test_docker_hub_login_names_no_server() -> None:
    assert docker.registry_of("ubuntu") is None
    assert docker.registry_of("me/img:1") is None
    assert docker.registry_of("localhost/img") == "localhost"
    assert docker.registry_of("ghcr.io/me/img@sha256:abc") == "ghcr.io"
    job = job_of({"provider": "docker", "image": "me/img",
                  "registry_auth": {"username": "me", "password": "pw"}})
    assert "docker login --username me --password-stdin\n" in render_job_script(job, "/w")


def test_docker_login_failure_stops_the_job_and_removes_the_credentials(
        tmp_path: Path) -> None:
    job = job_of({"provider": "docker", "image": "img",
                  "registry_auth": {"username": "me", "password": "pw"}})
    bin_dir, rec = sandbox(tmp_path, {"docker": 'echo "$DOCKER_CONFIG" > "$REC/config"\n'
                                                '[ "$1" != pull ]\n'})
    proc = run_script(job, tmp_path, bin_dir, rec)
    assert proc.returncode != 0
    assert [c[1] for c in calls(rec)] == ["login", "pull"]
    assert not Path((rec / "config").read_text().strip()).exists()


# -- docker: refused without an engine ------------------------------------------------------


def test_a_docker_run_is_refused_before_anything_is_created(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("DSTACK_HOME", str(home))
    monkeypatch.setattr("dstack.stacks.local.docker_engine_available", lambda: False)
    ctx = Context.open(None)
    with pytest.raises(UsageError, match="needs a Docker engine") as caught:
        plan_run(ctx, tmp_path, "docker", ["ubuntu"], RunOptions(), after_dashes=["echo", "hi"])
    assert caught.value.exit_code == 2
    assert [p.name for p in home.iterdir()] == []  # no store, no state, no stack


def test_a_run_needing_a_missing_secret_is_refused_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("DSTACK_HOME", str(home))
    monkeypatch.setattr("dstack.stacks.local.docker_engine_available", lambda: False)
    (tmp_path / ".dstack").mkdir()
    (tmp_path / ".dstack" / "workflows.yaml").write_text(
        "workflows:\n  - name: private\n    provider: docker\n    image: ghcr.io/me/img\n"
        "    registry_auth: {username: me, password_secret: GHCR_TOKEN}\n")
    ctx = Context.open(None)
    with pytest.raises(UsageError, match="workflow private needs the secret") as caught:
        plan_run(ctx, tmp_path, "private", [], RunOptions())
    assert "GHCR_TOKEN" in caught.value.message and caught.value.exit_code == 2
    assert caught.value.hint is not None and "dstack secrets add GHCR_TOKEN" in caught.value.hint
    assert [p.name for p in home.iterdir()] == []
    add_secret(ctx.store, "GHCR_TOKEN", PASSWORD)
    with pytest.raises(UsageError, match="needs a Docker engine"):  # the next check
        plan_run(ctx, tmp_path, "private", [], RunOptions())


def test_the_cli_refuses_a_docker_run_without_an_engine(tmp_path: Path) -> None:
    """`dstack run docker ubuntu -- echo hi` with a docker client whose engine is down."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "docker").write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\n"
                                 "exit 1\n")
    (fake / "docker").chmod(0o755)
    home = tmp_path / "home"
    env = {**os.environ, "DSTACK_HOME": str(home),
           "PATH": f"{fake}{os.pathsep}{os.environ.get('PATH', '')}"}
    dstack = Path(sys.executable).parent / "dstack"
    proc = subprocess.run([str(dstack), "run", "docker", "ubuntu", "--", "echo", "hi"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error: the docker provider needs a Docker engine" in proc.stderr
    assert "Start Docker" in proc.stderr
    assert list(home.iterdir()) == []


# -- code: openvscode-server, its download, or code-server ------------------------------------


def test_code_job_is_one_tokened_app_with_no_python_package() -> None:
    job = job_of({"provider": "code"})
    assert job.ports == 1 and job.token and job.packages == [] and not job.needs_docker
    [app] = job.apps
    assert (app.name, app.url_path, app.ready_path) == ("code", "/?tkn={token}", "/")
    parse = provider_params("code").from_cli
    assert parse(["--x", "y"]) == ({}, ["--x", "y"])


OPENVSCODE_ARGV = ["--host", HOST, "--port", PORTS[0], "--connection-token", TOKEN,
                   "--accept-server-license-terms", "--telemetry-level", "off",
                   "--default-folder", "."]


def test_code_starts_openvscode_server_from_path(tmp_path: Path) -> None:
    bin_dir, rec = sandbox(tmp_path, {"openvscode-server": "", "code-server": "", "curl": ""})
    proc = run_script(job_of({"provider": "code"}, ARGS), tmp_path, bin_dir, rec)
    assert proc.returncode == 0, proc.stderr
    assert calls(rec) == [["openvscode-server", *OPENVSCODE_ARGV, *ARGS]]


def test_code_starts_code_server_from_path_with_the_token_as_password(tmp_path: Path) -> None:
    bin_dir, rec = sandbox(tmp_path, {"code-server": "", "curl": ""})
    proc = run_script(job_of({"provider": "code"}, ARGS), tmp_path, bin_dir, rec)
    assert proc.returncode == 0, proc.stderr
    assert calls(rec) == [["code-server", "--bind-addr", f"{HOST}:{PORTS[0]}", "--auth",
                           "password", "--disable-telemetry", "--disable-update-check", ".",
                           *ARGS]]
    assert call_env(rec, 1)["PASSWORD"] == TOKEN


def server_tarball(tmp_path: Path, top: str) -> Path:
    """A release-like tarball: `top/bin/openvscode-server`, a recording stand-in."""
    root = tmp_path / "release" / top
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "openvscode-server").write_text(RECORD)
    (root / "bin" / "openvscode-server").chmod(0o755)
    path = tmp_path / "release.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname=top)
    return path


CURL = 'while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done; cp "$TARBALL" "$out"\n'
WGET = 'while [ $# -gt 0 ]; do [ "$1" = -O ] && out=$2; shift; done; cp "$TARBALL" "$out"\n'


@pytest.mark.parametrize(("machine", "arch", "fetch"), [("x86_64", "x64", "curl"),
                                                        ("aarch64", "arm64", "wget")])
def test_code_downloads_openvscode_server_into_the_cache_once(
        machine: str, arch: str, fetch: str, tmp_path: Path) -> None:
    name = "openvscode-server-v1.2.3"
    tarball = server_tarball(tmp_path, f"{name}-linux-{arch}")
    bin_dir, rec = sandbox(tmp_path, {fetch: CURL if fetch == "curl" else WGET,
                                      "uname": f"echo {machine}\n"})
    cache = tmp_path / "cache dir"
    job = job_of({"provider": "code", "version": "1.2.3"}, ARGS)
    env = {"DSTACK_CACHE": str(cache), "TARBALL": str(tarball)}
    proc = run_script(job, tmp_path, bin_dir, rec, env)
    assert proc.returncode == 0, proc.stderr
    url = (f"https://github.com/gitpod-io/openvscode-server/releases/download/{name}/"
           f"{name}-linux-{arch}.tar.gz")
    uname, download, server = calls(rec)
    assert uname == ["uname", "-m"]
    if fetch == "curl":
        assert download == ["curl", "-fsSL", "--connect-timeout", "20", "--speed-limit", "1024",
                            "--speed-time", "60", "-o", download[-2], url]
    else:
        assert download == ["wget", "-q", "--tries=1", "--timeout=60", "-O", download[-2], url]
    assert server == ["openvscode-server", *OPENVSCODE_ARGV, *ARGS]
    assert sorted(p.name for p in cache.iterdir()) == [name]  # no temporary folder left
    assert (cache / name / "bin" / "openvscode-server").is_file()
    proc = run_script(job, tmp_path, bin_dir, rec, env)  # the second start uses the cache
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls(rec)] == ["uname", fetch, "openvscode-server",
                                          "openvscode-server"]


OFFLINE = 'echo "$(basename "$0"): could not resolve host: github.com" >&2; exit 4\n'


@pytest.mark.parametrize("fetchers", [["curl"], ["wget"], []])
def test_code_without_a_server_offline_tries_once_and_says_what_it_needs(
        fetchers: list[str], tmp_path: Path) -> None:
    bin_dir, rec = sandbox(tmp_path, {"uname": "echo x86_64\n",
                                      **{name: OFFLINE for name in fetchers}})
    cache = tmp_path / "cache"
    proc = run_script(job_of({"provider": "code"}), tmp_path, bin_dir, rec,
                      {"DSTACK_CACHE": str(cache)})
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "dstack: the code provider needs openvscode-server or code-server on PATH, or internet "
        "access to download openvscode-server once. Get one: put bin/ of a release from "
        "https://github.com/gitpod-io/openvscode-server/releases on PATH, or `npm install -g "
        "code-server` (https://coder.com/docs/code-server/install)")
    assert [c[0] for c in calls(rec)] == ["uname", *fetchers]  # one attempt, no retry
    assert list(cache.iterdir()) == []  # no temporary folder left


def test_code_refuses_a_default_release_whose_checksum_differs(tmp_path: Path) -> None:
    name = f"openvscode-server-v{OPENVSCODE_VERSION}"
    tarball = server_tarball(tmp_path, f"{name}-linux-x64")
    bin_dir, rec = sandbox(tmp_path, {"curl": CURL, "uname": "echo x86_64\n"})
    cache = tmp_path / "cache"
    proc = run_script(job_of({"provider": "code"}), tmp_path, bin_dir, rec,
                      {"DSTACK_CACHE": str(cache), "TARBALL": str(tarball)})
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr
    assert [c[0] for c in calls(rec)] == ["uname", "curl"]
    assert list(cache.iterdir()) == []  # neither the server nor a temporary folder


def test_code_default_release_is_pinned_with_checksums() -> None:
    script = "\n".join(CodeParams().install_lines())
    assert f"dstack_name=openvscode-server-v{OPENVSCODE_VERSION}\n" in script
    for arch, digest in OPENVSCODE_SHA256.items():
        assert f"dstack_arch={arch} dstack_sum={digest} ;;" in script
    other = "\n".join(CodeParams(version="1.2.3").install_lines())
    assert "dstack_arch=x64 dstack_sum= ;;" in other


def test_code_on_an_unknown_machine_says_so(tmp_path: Path) -> None:
    bin_dir, rec = sandbox(tmp_path, {"uname": "echo sparc64\n"})
    proc = run_script(job_of({"provider": "code"}), tmp_path, bin_dir, rec,
                      {"DSTACK_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 1 and "no build for sparc64" in proc.stderr


# -- docs --------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "providers"


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_each_provider_has_a_page_naming_every_field(name: str) -> None:
    page = (DOCS / f"{name}.md").read_text()
    for field, info in provider_params(name).model_fields.items():
        assert f"`{info.alias or field}`" in page, field
    assert f"dstack run {name}" in page
    assert f"({name}.md)" in (DOCS / "README.md").read_text()


def test_docs_examples_are_valid_workflows() -> None:
    import yaml

    for name in PROVIDERS:
        page = (DOCS / f"{name}.md").read_text()
        blocks = [b.split("```", 1)[0] for b in page.split("```yaml\n")[1:]]
        assert blocks, name
        for block in blocks:
            for wf in yaml.safe_load(block)["workflows"]:
                validate_workflow(wf)


def test_dry_run_of_every_provider_renders(tmp_path: Path) -> None:
    """Every provider's `job.sh` is rendered without error from its command-line form."""
    forms = {"python": ["x.py"], "bash": ["echo hi"], "docker": ["ubuntu"],
             "streamlit": ["app.py"], "gradio": ["app.py"], "fastapi": ["main:app"],
             "lab": [], "code": [], "notebook": []}
    for name, positional in forms.items():
        fields, rest = provider_params(name).from_cli(positional)
        job = make_job(validate_workflow({"provider": name, **fields}), rest, {})
        assert render_job_script(job, str(tmp_path)).startswith("#!/usr/bin/env bash\n")
