"""Hostile and broken input is refused: clearly, with exit code 2, without a traceback, and
before anything is created.

The corpus is in `tests/unit/data/hostile/`:

- `workflows/*.yaml`: broken workflow files, each saying in its header what it is
  (`# hostile:`), what the error must say (`# says:`, one or more) and the line it must
  name (`# at:`, absent when the problem is the whole file);
- `nontext/*`: files that are not UTF-8 YAML text (binary, UTF-16, latin-1, empty, ...),
  with their expectations in `NONTEXT` below;
- `cli.yaml`: broken `dstack` command lines.

Cases that cannot be files in a repository (a huge file, a fifo, links) are made by
`SPECIAL` below. Every case goes through the `dstack` entry point in-process (`validate` and
`run`); a few also through the installed command. Property tests: the spec parser raises
nothing but `SpecError`/`UsageError` on arbitrary input, and no user-given word (file name,
argument, environment value, run name, path) is ever executed by the shell scripts dstack
renders. Artifact downloads and syncs never write or read outside their folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dstack.cli import output
from dstack.cli.app import main
from dstack.errors import DstackError, SpecError, UsageError
from dstack.run.artifacts import download
from dstack.run.job import Job
from dstack.run.record import RunRecord, Status, run_key
from dstack.run.submit import make_job
from dstack.runner.bootstrap import render_bootstrap
from dstack.runner.jobscript import render_job_script
from dstack.spec.loader import MAX_FILE_BYTES, load_workflows
from dstack.spec.validation import check_workflow
from dstack.store.artifact_sync import ArtifactSync
from dstack.store.local import LocalStore

DATA = Path(__file__).parent / "data" / "hostile"
WORKFLOWS_FILE = ".dstack/workflows.yaml"

NONTEXT: dict[str, tuple[list[str], int | None]] = {
    # file: (what the error says, the line it names or None)
    "binary-png.yaml": (["this is a binary file (it has NUL bytes)"], None),
    "nul-in-text.yaml": (["this is a binary file"], None),
    "latin-1.yaml": (["not valid UTF-8 (byte 0xe9)", "Save the file as UTF-8"], 1),
    "utf-16-le.yaml": (["the file is UTF-16", "Save it as UTF-8"], None),
    "utf-16-be.yaml": (["the file is UTF-16"], None),
    "empty.yaml": (["the file is empty", "workflows:"], None),
    "whitespace-only.yaml": (["a tab is used for indentation"], 3),
    "overlong-utf-8.yaml": (["not valid UTF-8 (byte 0xc0)"], 4),
    "surrogate-in-utf-8.yaml": (["not valid UTF-8 (byte 0xed)"], 4),
    "truncated-utf-8.yaml": (["not valid UTF-8 (byte 0xe2)"], 5),
    "bom-then-garbage.yaml": (["not valid UTF-8 (byte 0xff)"], 5),
}


def _huge(path: Path) -> None:
    with path.open("w") as f:
        f.write("workflows:\n")
        f.write("# padding\n" * (MAX_FILE_BYTES // 10 + 1))


def _fifo(path: Path) -> None:
    os.mkfifo(path)  # reading it would block forever


SPECIAL: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "huge": (_huge, ["the file is over 5MiB", "Is this the right file?"]),
    "fifo": (_fifo, ["not a regular file"]),
    "folder": (lambda p: p.mkdir(), ["not a regular file"]),
    "link-to-dev-zero": (lambda p: p.symlink_to("/dev/zero"), ["not a regular file"]),
    "link-loop": (lambda p: p.symlink_to(p.name), ["cannot read the file"]),
    "link-to-nowhere": (lambda p: p.symlink_to("/nonexistent/workflows.yaml"),
                        ["cannot read the file"]),
}


# -- running the entry point in-process ----------------------------------------------------


class Cli:
    """The `dstack` entry point, in this process, with one home, from one folder."""

    def __init__(self, home: Path, cwd: Path, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.home, self.cwd = home, cwd
        self.capsys, self.monkeypatch = capsys, monkeypatch
        monkeypatch.setenv("DSTACK_HOME", str(home))

        def refuse(*_a: Any, **_k: Any) -> None:
            raise AssertionError("a hostile command got as far as submitting a run")

        monkeypatch.setattr("dstack.run.submit.submit", refuse)
        monkeypatch.setattr("dstack.run.submit.run_attached", refuse)

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.monkeypatch.setattr(sys, "argv", ["dstack", *argv])
        self.monkeypatch.chdir(self.cwd)
        output.state.after_dashes = []
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main()
        out, err = self.capsys.readouterr()
        code = done.value.code
        return (code if isinstance(code, int) else 0 if code is None else 1), out, err


def created(home: Path) -> list[str]:
    """What a refused command must not have made: runs, code archives, stacks, workdirs."""
    found = [*home.glob("store/runs/*"), *home.glob("store/code/*"), *home.glob("store/tags/*"),
             *home.glob("state/.pulumi/stacks/**/*.json"), *home.glob("workdirs/*")]
    return sorted(str(p.relative_to(home)) for p in found)


def assert_refused(code: int, err: str, says: list[str], expect: int = 2) -> None:
    assert code == expect, err
    assert err.startswith("error: ") or "Error:" in err, err
    assert "Traceback" not in err and "failed unexpectedly" not in err, err
    for fragment in says:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "project" / ".dstack").mkdir(parents=True)
    return tmp_path / "project"


@pytest.fixture
def cli(tmp_path: Path, project: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(tmp_path / "home", project, capsys, monkeypatch)


# -- broken workflow files -----------------------------------------------------------------


def _header(path: Path) -> tuple[list[str], int | None]:
    says, at = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# says: "):
            says.append(line[len("# says: "):])
        elif line.startswith("# at: "):
            at = int(line[len("# at: "):])
    return says, at


WORKFLOW_CASES = sorted(p.name for p in (DATA / "workflows").glob("*.yaml"))


def test_the_corpus_is_big_and_every_case_says_what_it_checks() -> None:
    cli_cases = yaml.safe_load((DATA / "cli.yaml").read_text())
    assert len(WORKFLOW_CASES) + len(NONTEXT) + len(SPECIAL) + len(cli_cases) >= 200
    for name in WORKFLOW_CASES:
        text = (DATA / "workflows" / name).read_text(encoding="utf-8")
        assert text.startswith("# hostile: "), name
        assert _header(DATA / "workflows" / name)[0], f"{name} says nothing"
    assert sorted(NONTEXT) == sorted(p.name for p in (DATA / "nontext").iterdir())


def _check_file_case(cli: Cli, says: list[str], at: int | None,
                     where: str = WORKFLOWS_FILE) -> None:
    for argv in (["validate"], ["run", "train"]):
        code, out, err = cli(*argv)
        assert_refused(code, err, says)
        assert (f"{where}:{at}:" if at else f"{where}") in err, err
        assert out == "", out
    assert created(cli.home) == []


@pytest.mark.parametrize("name", WORKFLOW_CASES)
def test_a_broken_workflow_file_is_refused_naming_file_and_line(
        name: str, cli: Cli, project: Path) -> None:
    shutil.copy(DATA / "workflows" / name, project / WORKFLOWS_FILE)
    _check_file_case(cli, *_header(DATA / "workflows" / name))


@pytest.mark.parametrize("name", sorted(NONTEXT))
def test_a_file_that_is_not_yaml_text_is_refused(name: str, cli: Cli, project: Path) -> None:
    shutil.copy(DATA / "nontext" / name, project / WORKFLOWS_FILE)
    _check_file_case(cli, *NONTEXT[name])


@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_a_workflow_file_that_is_huge_or_not_a_file_is_refused(
        name: str, cli: Cli, project: Path) -> None:
    make, says = SPECIAL[name]
    make(project / WORKFLOWS_FILE)
    _check_file_case(cli, says, None)


@pytest.mark.parametrize("name", ["syntax-tab-indentation.yaml", "cycle-two.yaml",
                                  "memory-unknown-unit.yaml"])
def test_a_broken_file_among_workflow_files_is_the_one_named(
        name: str, cli: Cli, project: Path) -> None:
    (project / WORKFLOWS_FILE).write_text(
        "workflows:\n  - name: ok\n    provider: bash\n    commands: [\"echo ok\"]\n")
    (project / ".dstack" / "workflows").mkdir()
    shutil.copy(DATA / "workflows" / name, project / ".dstack" / "workflows" / "more.yaml")
    says, at = _header(DATA / "workflows" / name)
    _check_file_case(cli, says, at, where=".dstack/workflows/more.yaml")


# -- broken command lines --------------------------------------------------------------------

CLI_CASES = yaml.safe_load((DATA / "cli.yaml").read_text())
CLI_PROJECT = """\
workflows:
  - name: prepare
    provider: bash
    commands: ["echo prep"]
  - name: train
    provider: python
    file: train.py
"""


def _cli_id(case: dict[str, Any]) -> str:
    return " ".join(case["argv"])[:60]


@pytest.fixture
def cli_project(project: Path) -> Path:
    (project / WORKFLOWS_FILE).write_text(CLI_PROJECT)
    (project / "train.py").write_text("print('train')\n")
    (project / "f.txt").write_text("data\n")
    return project


@pytest.mark.parametrize("case", CLI_CASES, ids=_cli_id)
def test_a_broken_command_line_is_refused(case: dict[str, Any], cli: Cli,
                                          cli_project: Path) -> None:
    code, out, err = cli(*case["argv"])
    assert_refused(code, err, case["says"], case.get("exit", 2))
    assert out == ""
    assert created(cli.home) == []
    assert not (cli_project / "out").exists()


FLAG_CASES = [pytest.param(c, id=_cli_id(c), marks=[pytest.mark.xfail(
    strict=True, reason="the message names the workflow's line, not the flag (submit.py)")]
              if c.get("flag_bug") else []) for c in CLI_CASES if "flag" in c]


@pytest.mark.parametrize("case", FLAG_CASES)
def test_a_bad_flag_value_is_blamed_on_the_flag(case: dict[str, Any], cli: Cli,
                                                cli_project: Path) -> None:
    _code, _out, err = cli(*case["argv"])
    assert case["flag"] in err, err
    assert WORKFLOWS_FILE not in err, err


def _installed(home: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("dstack")
    env = {**os.environ, "DSTACK_HOME": str(home)}
    return subprocess.run([str(binary), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("source", "argv"), [
    ("workflows/memory-unknown-unit.yaml", ["run", "train"]),
    ("workflows/syntax-tab-indentation.yaml", ["run", "train", "--gpu", "0"]),
    ("nontext/binary-png.yaml", ["validate"]),
    (None, ["run", "train", "--gpu", "lots"]),
    (None, ["logs", "../../etc"]),
])
def test_the_installed_command_refuses_the_same_way(
        source: str | None, argv: list[str], tmp_path: Path, cli_project: Path) -> None:
    if source:
        shutil.copy(DATA / source, cli_project / WORKFLOWS_FILE)
    proc = _installed(tmp_path / "home", cli_project, *argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert created(tmp_path / "home") == []


# -- the spec parser on arbitrary input ------------------------------------------------------

YAMLISH = st.text(
    alphabet=st.sampled_from(list("workflows:name-provider bash python commands file "
                                  "resources gpu memory 12XB depends-on :latest artifacts\n"
                                  "  - []{},:&*!|>'\"#%@`?\t0123456789.~\\\x00\x85\ufeff")),
    max_size=300)
FIELDS = ["name", "provider", "commands", "file", "args", "resources", "gpu", "memory",
          "cpu", "artifacts", "path", "depends-on", "env", "environment", "working_dir",
          "setup", "ports", "version", "requirements", "count", "x-any", "workflows"]
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
              st.text(max_size=20), st.sampled_from(["bash", "python", "train:latest", "16GB",
                                                     "../x", "/etc", "train"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5)),
    max_leaves=20)


def _load(project: Path, data: bytes) -> None:
    (project / WORKFLOWS_FILE).write_bytes(data)
    with contextlib.suppress(SpecError, UsageError):
        load_workflows(project)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=YAMLISH)
def test_the_parser_raises_only_spec_errors_on_yaml_ish_text(text: str, project: Path) -> None:
    _load(project, text.encode("utf-8", "surrogatepass"))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_the_parser_raises_only_spec_errors_on_arbitrary_bytes(data: bytes,
                                                               project: Path) -> None:
    _load(project, data)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(["workflows", "x-a", "other"]),
                           st.one_of(st.lists(VALUES, max_size=3), VALUES), max_size=3))
def test_the_parser_raises_only_spec_errors_on_arbitrary_structures(
        doc: dict[str, Any], project: Path) -> None:
    _load(project, yaml.safe_dump(doc, allow_unicode=True).encode())
    check_workflow(doc.get("workflows"))  # returns problems, never raises


# -- nothing the user did not write as a command is run by a shell ---------------------------

WORD = st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=16)
SEGMENT = st.text(st.characters(exclude_characters="\0/", exclude_categories=["Cs"]),
                  min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
ENV_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: n not in ("PATH", "TRACE", "BASH_ENV", "RECORD", "PWD", "SHELLOPTS", "IFS",
                        "BASHOPTS", "PS4", "HOME", "OLDPWD", "SHLVL", "_"))

RECORDER = """#!{python}
import json, os, sys
out = {{"argv": [os.fsencode(a).hex() for a in sys.argv[1:]],
       "env": {{k: os.fsencode(v).hex() for k, v in os.environ.items()}},
       "cwd": os.getcwd()}}
with open(os.environ["RECORD"], "w") as f:
    json.dump(out, f)
"""
TRACE_ENV = ("set -T\n"
             "trap 'printf \"%s\\0\" \"$BASH_COMMAND\" >> \"$TRACE\"' DEBUG\n"
             "command_not_found_handle() { printf '%s\\0' \"$1\" >> \"$TRACE.missing\"; "
             "return 127; }\n")


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PATH holding only `python`, which records how it was called."""
    folder = tmp_path_factory.mktemp("fake-bin")
    (folder / "python").write_text(RECORDER.format(python=sys.executable))
    (folder / "python").chmod(0o755)
    (folder / "trace-env.sh").write_text(TRACE_ENV)
    return folder


def run_traced(script: str, fake_bin: Path, tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run `script` with bash, PATH holding only the recorder; the commands bash ran (from a
    DEBUG trap, subshells included), the commands it could not find, and the recording."""
    for name in ("trace", "trace.missing", "record.json"):
        (tmp / name).unlink(missing_ok=True)
    path = tmp / "script.sh"
    path.write_text(script, encoding="utf-8", errors="surrogateescape")
    full_env = {**env, "PATH": str(fake_bin), "TRACE": str(tmp / "trace"),
                "BASH_ENV": str(fake_bin / "trace-env.sh"), "RECORD": str(tmp / "record.json"),
                "LC_ALL": "C.UTF-8"}
    proc = subprocess.run([shutil.which("bash") or "/bin/bash", str(path)], cwd=tmp,
                          env={k: v.encode("utf-8", "surrogateescape") for k, v in
                               full_env.items()}, capture_output=True, timeout=60)
    trace = (tmp / "trace").read_bytes().split(b"\0")[:-1] if (tmp / "trace").exists() else []
    # Bash shows \x01 and \x7f inside quotes escaped by \x01 (CTLESC) in $BASH_COMMAND.
    trace = [re.sub(rb"\x01(.)", rb"\1", t, flags=re.S) for t in trace]
    missing = (tmp / "trace.missing").read_bytes() if (tmp / "trace.missing").exists() else b""
    record = json.loads((tmp / "record.json").read_text()) if (tmp / "record.json").exists() \
        else None
    return {"rc": proc.returncode, "stderr": proc.stderr, "missing": missing, "record": record,
            "trace": [os.fsdecode(t) for t in trace]}


def _hex(words: list[str]) -> list[str]:
    return [os.fsencode(w).hex() for w in words]


def _prologue() -> list[str]:
    """The fixed lines every job script starts with (options, umask), before its `cd`."""
    lines = [ln for ln in render_job_script(Job(provider="none"), "/w").splitlines()
             if ln and not ln.startswith("#")]
    return lines[:lines.index("cd /w")]


def job_trace(job: Job, workdir: str) -> list[str]:
    """The commands a job script without setup or shell lines runs: its own, nothing else."""
    return [*_prologue(), f"cd {shlex.quote(workdir)}", shlex.join(["set", "--", *job.args]),
            "exec " + shlex.join(job.argv) + ' "$@"']


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=SEGMENT, file_args=st.lists(WORD, max_size=3), args=st.lists(WORD, max_size=4),
       env=st.dictionaries(ENV_NAME, WORD, max_size=3),
       workdir=st.lists(SEGMENT, min_size=1, max_size=2))
def test_a_job_script_runs_only_its_own_commands(
        file: str, file_args: list[str], args: list[str], env: dict[str, str],
        workdir: list[str], fake_bin: Path, tmp_path: Path) -> None:
    job = Job(provider="python", argv=["python", file, *file_args], args=args, env=env)
    where = tmp_path / "repo"
    target = where.joinpath(*workdir)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:  # a name this file system cannot hold
        return
    script = render_job_script(job, str(target))
    got = run_traced(script, fake_bin, tmp_path, env)
    assert got["rc"] == 0, got["stderr"]
    assert got["missing"] == b"", got["missing"]
    # Exactly the script's own commands ran, exactly as dstack wrote them.
    assert got["trace"] == job_trace(job, str(target)), got["trace"]
    record = got["record"]
    assert record["argv"] == _hex([file, *file_args, *args])
    assert {k: record["env"].get(k) for k in env} == {k: v for k, v in
                                                      zip(env, _hex(list(env.values())),
                                                          strict=True)}
    assert os.path.samefile(record["cwd"], target)
    assert not list(tmp_path.rglob("pwned"))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run=WORD, store=WORD, workdir=WORD, cache=WORD,
       env=st.dictionaries(ENV_NAME, WORD, max_size=3))
def test_a_bootstrap_runs_only_its_own_commands(
        run: str, store: str, workdir: str, cache: str, env: dict[str, str],
        fake_bin: Path, tmp_path: Path) -> None:
    script = render_bootstrap(python="python", store_url=store, run=run, workdir=workdir,
                              cache=cache, env=env, preamble=["umask 0022"])
    got = run_traced(script, fake_bin, tmp_path, {})
    assert got["rc"] == 0, got["stderr"]
    assert got["missing"] == b""
    argv = ["-m", "dstack.runner", "--store", store, "--run", run, "--workdir", workdir,
            "--cache", cache, "--host", "127.0.0.1"]
    assert got["trace"] == [
        "set -euo pipefail", "umask 0022",
        *[f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())],
        "exec " + shlex.join(["python", *argv]),
    ], got["trace"]
    assert got["record"]["argv"] == _hex(argv)
    assert {k: got["record"]["env"].get(k) for k in env} == {
        k: os.fsencode(v).hex() for k, v in env.items()}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=WORD, value=WORD, file=SEGMENT)
def test_a_workflow_of_hostile_words_is_refused_or_runs_none_of_them(
        name: str, value: str, file: str, fake_bin: Path, tmp_path: Path) -> None:
    """Through the spec: a hostile workflow name is refused; hostile file names, args and
    environment values reach the job as data."""
    data = {"name": name, "provider": "python", "file": file, "args": [value],
            "environment": {"V": value}}
    workflow, problems = check_workflow(data)
    if workflow is None:
        assert problems and all(p.message for p in problems)
        workflow, problems = check_workflow({**data, "name": "ok"})
    assert workflow is not None, problems
    assert workflow.name is None or workflow.name.replace("-", "").replace(".", "").replace(
        "_", "").isascii()
    job = make_job(workflow, [value], {})
    (tmp_path / "repo").mkdir(exist_ok=True)
    got = run_traced(render_job_script(job, str(tmp_path / "repo")), fake_bin, tmp_path,
                     job.env)
    assert got["rc"] == 0 and got["missing"] == b"", got
    assert got["trace"] == job_trace(job, str(tmp_path / "repo")), got["trace"]
    assert got["record"]["argv"] == _hex([file, value, value])
    assert got["record"]["env"]["V"] == os.fsencode(value).hex()


# -- artifacts never leave their folders -------------------------------------------------------


class EvilStore(LocalStore):
    """A store whose listing holds keys a folder could not (S3 and GCS keys can)."""

    evil: ClassVar[dict[str, bytes]] = {}

    def list(self, prefix: str) -> list[str]:
        return sorted([*super().list(prefix), *(k for k in self.evil if k.startswith(prefix))])

    def get_file(self, key: str, path: Path) -> None:
        if key in self.evil:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.evil[key])
            return
        super().get_file(key, path)


def _done_run(store: LocalStore, name: str) -> None:
    record = RunRecord(name=name, provider="bash", profile="local", backend="local",
                       job=Job(provider="bash"), stack=f"run-{name}", status=Status.DONE,
                       torn_down=True)
    store.put_json(run_key(name), record.model_dump(mode="json"))


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    box = tmp_path / "box"
    (box / "out").mkdir(parents=True)
    (box / "elsewhere").mkdir()
    yield box


EVIL_KEYS = ["../../evil", "../../../../../../tmp/dstack-evil", "/abs-evil", "a/../../evil",
             "ok/../../x/../../evil", "link/evil", "..", "./../evil"]


@pytest.mark.parametrize("rel", EVIL_KEYS)
def test_download_never_writes_outside_the_output_folder(rel: str, sandbox: Path,
                                                          tmp_path: Path) -> None:
    store = EvilStore(tmp_path / "store")
    _done_run(store, "x")
    store.put_bytes("runs/x/artifacts/good.txt", b"good")
    (sandbox / "out" / "link").symlink_to(sandbox / "elsewhere")
    EvilStore.evil = {f"runs/x/artifacts/{rel}": b"pwned"}
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DstackError) as err:
        download(store, "x", sandbox / "out")
    assert "outside" in err.value.message or "absolute" in err.value.message
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert set(after) - set(before) <= {Path("box/out/good.txt")}
    assert not list(tmp_path.rglob("*evil")) and not Path("/tmp/dstack-evil").exists()


def test_download_through_the_cli_refuses_a_key_leading_out(
        sandbox: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    store = EvilStore(cli.home / "store")
    _done_run(store, "brave-otter-1")
    EvilStore.evil = {"runs/brave-otter-1/artifacts/../../evil": b"pwned"}
    monkeypatch.setattr("dstack.run.context.open_store", lambda _url: store)
    code, _out, err = cli("artifacts", "download", "brave-otter-1", "-o", str(sandbox / "out"))
    assert code == 1, err
    assert "leads outside" in err and "Traceback" not in err
    assert not list(sandbox.rglob("*evil")) and not list(tmp_path.rglob("evil"))


def test_artifact_sync_takes_nothing_from_outside_the_working_dir(tmp_path: Path) -> None:
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    (repo / "out" / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (outside / "dir").mkdir()
    (outside / "dir" / "secret2.txt").write_text("secret")
    (repo / "out" / "mine.txt").write_text("mine")
    (repo / "out" / "sub" / "also.txt").write_text("also")
    (repo / "out" / "file-link").symlink_to(outside / "secret.txt")
    (repo / "out" / "dir-link").symlink_to(outside / "dir")
    (repo / "out" / "abs-dir-link").symlink_to("/etc")
    (repo / "out" / "inner-link").symlink_to(repo / "out" / "mine.txt")
    (repo / "whole-link").symlink_to(outside)
    store = LocalStore(tmp_path / "store")
    sync = ArtifactSync(store, "x", repo, ["out", "whole-link", "whole-link/dir"])
    sync.sync()
    keys = store.list("runs/x/artifacts/")
    assert keys == ["runs/x/artifacts/out/inner-link", "runs/x/artifacts/out/mine.txt",
                    "runs/x/artifacts/out/sub/also.txt"]
    assert b"secret" not in b"".join(store.get_bytes(k) for k in keys)
