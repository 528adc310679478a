"""The rendered scripts: every provider's `job.sh` and the bootstrap pass `bash -n` and
shellcheck whatever the user's words are, and passed-through arguments reach the job byte
for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dstack.run.submit import make_job
from dstack.runner.bootstrap import render_bootstrap
from dstack.runner.jobscript import render_job_script
from dstack.spec.registry import PROVIDERS
from dstack.spec.validation import validate_workflow

# Words that break naive shell building: spaces, quotes, command substitution, `;`,
# backticks, a newline, non-ASCII, a variable, an option, the empty word, glob, history.
NASTY = ["a b", "it's", 'say "hi"', "$(touch pwned)", "a;b", "`touch pwned`",
         "line1\nline2", "héllo ✓ 日本", "$HOME", "--flag=x y", "", "\\", "*", "!x", "-"]
SETUP = ["echo 'setting up' \"$PWD\""]

# Representative fields of each provider, user text as nasty as its field allows.
FIELDS: dict[str, dict[str, Any]] = {
    "python": {"file": "my script's $(x).py", "args": NASTY, "requirements": "req s.txt",
               "version": "3.11"},
    "bash": {"commands": ['echo "hello $(date)"', "printf '%s\\n' \"$@\"",
                          "for f in *; do echo \"$f\"; done"], "ports": 2},
    "docker": {"image": "registry.example:5000/team/img:1.0", "commands": [*NASTY, 'echo "$1"'],
               "entrypoint": ["/bin/sh", "-c"], "ports": 2,
               "registry_auth": {"username": "u $(x)'`", "password": "p'\"$(x)`;\n"},
               "environment": {"A_B": "x y $(z)"}, "env": ["C=`d` é"],
               "resources": {"gpu": 1, "shm_size": "1GB"}},
    "streamlit": {"target": "app $(x).py", "args": NASTY},
    "gradio": {"file": "ui's.py", "args": NASTY},
    "fastapi": {"app": "main:app", "uvicorn": {"workers": 2, "root-path": "/a b$(x)'`;",
                                               "proxy-headers": True, "reload": False}},
    "lab": {"version": "4.2.5"},
    "code": {"version": "1.2.3"},
    "notebook": {},
}
EXTRA = {  # a second form of the providers whose script has branches
    "docker": {"image": "ubuntu", "entrypoint": "", "commands": []},
    "code": {},
}
SHELLCHECK_EXCLUDE = [
    "SC2016",  # "expressions don't expand in single quotes": literal on purpose
    "SC1003",  # "want to escape a single quote?": a quoted backslash is meant
]


def job_script(provider: str, fields: dict[str, Any], args: list[str],
               workdir: str = "/tmp/work dir/$(x)'s") -> str:
    """The `job.sh` the runner would write for a workflow of `provider`."""
    wf = validate_workflow({"provider": provider, "setup": SETUP, **fields})
    return render_job_script(make_job(wf, args, {"HOME": "/home/u"}), workdir)


def lint(script: str, tmp_path: Path, name: str) -> None:
    """`bash -n` and shellcheck pass on `script` (shellcheck must be installed)."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: apt-get install shellcheck")
    path = tmp_path / f"{name}.sh"
    path.write_text(script, encoding="utf-8")
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    check = subprocess.run([shellcheck, "--exclude=" + ",".join(SHELLCHECK_EXCLUDE),
                            str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_provider_has_representative_fields() -> None:
    assert sorted(FIELDS) == sorted(PROVIDERS)


@pytest.mark.parametrize("provider", list(FIELDS))
def test_job_scripts_pass_bash_n_and_shellcheck(provider: str, tmp_path: Path) -> None:
    lint(job_script(provider, FIELDS[provider], NASTY), tmp_path, provider)
    lint(job_script(provider, FIELDS[provider], []), tmp_path, provider + "-no-args")
    if provider in EXTRA:
        lint(job_script(provider, EXTRA[provider], NASTY), tmp_path, provider + "-extra")


def test_the_bootstrap_passes_bash_n_and_shellcheck(tmp_path: Path) -> None:
    script = render_bootstrap(
        python="/opt/py thon/bin/python3", store_url="file:///tmp/st ore/$(x)'s",
        run="brave-otter-1", workdir="/w d/'x'/`y`", cache="/c;$(z)/é",
        host="127.0.0.1", preamble=["echo 'installing dstack'"],
        env={"DSTACK_HOME": "/h $(x)", "K": "v\nw 'q' \"d\" `b` ✓"},
    )
    lint(script, tmp_path, "bootstrap")
    lint(render_bootstrap(python="python3", store_url="s3://b", run="r", workdir="w",
                          cache="c"), tmp_path, "bootstrap-plain")


def test_no_user_word_is_executed(tmp_path: Path) -> None:
    """Running a python job whose args are all the nasty words creates no `pwned` file."""
    out = run_job("python", {"file": "show.py"}, NASTY, tmp_path)
    assert out == NASTY
    assert not list(tmp_path.rglob("pwned"))


# -- running job.sh ------------------------------------------------------------------------

SHOW = ("import json, os, sys\n"
        "sys.stdout.write(json.dumps([os.fsencode(a).hex() for a in sys.argv[1:]]))\n")


def run_job(provider: str, fields: dict[str, Any], args: list[str], tmp_path: Path) -> Any:
    """Run the job's script with bash in a folder holding `show.py`; its JSON output."""
    work = tmp_path / "work dir"
    work.mkdir(exist_ok=True)
    (work / "show.py").write_text(SHOW)
    script = tmp_path / "job.sh"
    script.write_text(job_script(provider, {**fields, "setup": []}, args, str(work)),
                      encoding="utf-8", errors="surrogateescape")  # as the runner writes it
    python_dir = str(Path(sys.executable).parent)
    env = {"PATH": python_dir + os.pathsep + os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return [os.fsdecode(bytes.fromhex(a)) for a in json.loads(proc.stdout)]


BASH_SHOW = {"commands": ['python show.py "$@"']}


@pytest.mark.parametrize(("provider", "fields"), [("python", {"file": "show.py"}),
                                                  ("bash", BASH_SHOW)])
def test_passthrough_args_arrive_byte_for_byte(provider: str, fields: dict[str, Any],
                                               tmp_path: Path) -> None:
    assert run_job(provider, fields, NASTY, tmp_path) == NASTY
    assert run_job(provider, fields, [], tmp_path) == []


def test_python_args_field_comes_before_the_passed_args(tmp_path: Path) -> None:
    out = run_job("python", {"file": "show.py", "args": "--lr 0.1 'two words'"}, ["x y"],
                  tmp_path)
    assert out == ["--lr", "0.1", "two words", "x y"]


# What a command line can hold: any bytes but NUL, as Python decodes them (os.fsdecode).
ARGS = st.lists(
    st.one_of(
        st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=20),
        st.binary(max_size=20).filter(lambda b: b"\0" not in b).map(os.fsdecode),
    ),
    max_size=6,
)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=ARGS, provider=st.sampled_from(["python", "bash"]))
def test_any_arguments_arrive_unchanged(args: list[str], provider: str,
                                        tmp_path: Path) -> None:
    fields = {"file": "show.py"} if provider == "python" else BASH_SHOW
    assert run_job(provider, fields, args, tmp_path) == args
