"""The docker provider: runs a container image.

The job is one `docker run --rm` on the machine of the run: the job's working dir is mounted
at `/workdir` (and is the container's working dir, so artifacts written there are saved),
the job's environment variables are passed by name (`-e NAME`: their values never appear on a
command line), each port is published on the same number, bound to the run's address. The
`commands` run under `sh -c` in the container; without them the arguments passed from
`dstack run` are the container's command.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from dstack.errors import UsageError
from dstack.providers.rendering import PASSED, Raw, Word, shell_line
from dstack.spec.fields import Args, Count
from dstack.spec.models import SpecModel, Workflow
from dstack.spec.provider import AppPort, JobParts, Provider, Usage

WORKDIR = "/workdir"
PASSWORD_VAR = "DSTACK_REGISTRY_PASSWORD"  # listed in Job.secret_env; read by printf only
NAME = Raw('"dstack-$DSTACK_RUN"')
MOUNT = Raw(f'"$PWD:{WORKDIR}"')
RUN_VARS = ("DSTACK_RUN", "DSTACK_WORKFLOW")  # set by the runner, useful inside too
_SHELLS = {"sh", "bash", "dash", "ash", "zsh"}


class RegistryAuth(SpecModel):
    """Credentials of a private container registry: the password itself, or the name of a
    profile secret that holds it (then it is in no workflow file and no run record)."""

    username: str = Field(min_length=1, description="Registry user name.")
    password: str | None = Field(None, min_length=1,
                                 description="Registry password or token (kept in the run's "
                                             "record; prefer `password_secret`).")
    password_secret: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="Name of the profile secret (`dstack secrets add NAME`) holding the "
                    "password.")

    @model_validator(mode="after")
    def _one_password(self) -> RegistryAuth:
        if (self.password is None) == (self.password_secret is None):
            raise ValueError("give exactly one of `password` and `password_secret` (the name "
                             "of a secret added with `dstack secrets add NAME`)")
        return self


class Params(Provider):
    """Fields of a `provider: docker` workflow."""

    usage = Usage("runs a container image (with the command after `--`)",
                  "IMAGE [-- COMMAND...]")

    image: str = Field(min_length=1, description="Container image, e.g. `ubuntu:22.04`.")
    commands: list[str] = Field(
        default_factory=list, description="Shell commands run in the container, in order."
    )
    entrypoint: Args | None = Field(
        None,
        description="Overrides the image's entrypoint: a string (split as a shell would) "
        "or a list.",
    )
    ports: Count = Field(0, ge=0, le=64, description="How many ports the container listens on.")
    registry_auth: RegistryAuth | None = Field(
        None, description="Credentials for a private registry: {username, password}."
    )

    @classmethod
    def from_cli(cls, positional: list[str]) -> tuple[dict[str, object], list[str]]:
        """`dstack run docker IMAGE [-- COMMAND...]`: the image; what follows is the command."""
        if not positional or positional[0].startswith("-"):
            raise UsageError("`dstack run docker` needs the image to run",
                             f"Write it as `{cls.usage.line('docker')}`, e.g. "
                             "`dstack run docker ubuntu -- echo hi`.")
        return {"image": positional[0]}, positional[1:]

    def job_parts(self, common: Workflow) -> JobParts:
        """`docker run` of the image (after a registry login when `registry_auth` is set)."""
        setup: list[str] = []
        secret: dict[str, str] = {}
        needs: list[str] = []
        auth = self.registry_auth
        if auth is not None:
            var = auth.password_secret or PASSWORD_VAR
            setup = login_lines(self.image, auth.username, var)
            secret = {PASSWORD_VAR: auth.password} if auth.password is not None else {}
            needs = [auth.password_secret] if auth.password_secret else []
        apps = [AppPort(name=f"port {i}", index=i) for i in range(self.ports)]
        return JobParts(setup=setup, shell=[shell_line("exec", *self.docker_run(common))],
                        ports=self.ports, apps=apps, needs_docker=True, secret_env=secret,
                        needs_secrets=needs)

    def docker_run(self, common: Workflow) -> list[Word]:
        """The words of the `docker run` command line."""
        words: list[Word] = ["docker", "run", "--rm", "--init", "--name", NAME,
                             "-v", MOUNT, "-w", WORKDIR]
        for name in self._env_names(common):
            words += ["-e", name]
        for i in range(self.ports):
            words += ["-p", Raw(f'"$DSTACK_HOST:$PORT_{i}:$PORT_{i}"')]
        resources = common.resources
        if resources.shm_size:
            words += ["--shm-size", f"{resources.shm_size}b"]
        if resources.gpu is not None and resources.gpu.count:
            words += ["--gpus", str(resources.gpu.count)]
        entry_args: list[str] = []
        if self.entrypoint is not None:
            first, *entry_args = self.entrypoint or [""]
            words += ["--entrypoint", first]
        words += [self.image, *entry_args]
        if self.commands:
            script = "\n".join(["set -e", *self.commands])
            runs_shell = (self.entrypoint is not None and len(self.entrypoint) >= 2
                          and self.entrypoint[-1] == "-c"
                          and self.entrypoint[0].rsplit("/", 1)[-1] in _SHELLS)
            words += [script, "sh"] if runs_shell else ["sh", "-c", script, "sh"]
        return [*words, PASSED]

    def _env_names(self, common: Workflow) -> list[str]:
        """Names of the variables the container gets: the workflow's, the run's, the ports'."""
        names = dict.fromkeys(common.environment)
        for item in common.env:
            names[item.partition("=")[0]] = None
        ports = [f"PORT_{i}" for i in range(self.ports)] + (["PORT"] if self.ports else [])
        return [*names, *RUN_VARS, *ports]


def registry_of(image: str) -> str | None:
    """The registry host an image reference names, or None for Docker Hub."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def login_lines(image: str, username: str, var: str = PASSWORD_VAR) -> list[str]:
    """Log in with the password from the environment variable `var`, pull, then forget the
    credentials.

    The password reaches `docker login` on its standard input from `printf`, a shell
    builtin, so it is on no command line; the credentials live in a private, temporary
    `DOCKER_CONFIG` only while the image is pulled.
    """
    server = registry_of(image)
    login = ["docker", "login", "--username", username, "--password-stdin",
             *([server] if server else [])]
    return [
        'DOCKER_CONFIG="$(mktemp -d)"',
        "export DOCKER_CONFIG",
        "trap 'rm -rf \"$DOCKER_CONFIG\"' EXIT",
        f"printf '%s' \"${var}\" | " + shell_line(*login),
        f"unset {var}",
        shell_line("docker", "pull", image),
        'rm -rf "$DOCKER_CONFIG"',
        "trap - EXIT",
        "unset DOCKER_CONFIG",
    ]
