"""`--env-file`: KEY=VALUE lines with comments, blank lines, `export ` and quotes; a bad line
is a usage error naming the file and line and never showing what the line holds; the job names
the file's variables but holds none of their values."""

from __future__ import annotations

from pathlib import Path

import pytest

from dstack.errors import UsageError
from dstack.run.submit import make_job
from dstack.spec.env_file import parse_env_file, read_env_files
from dstack.spec.validation import validate_workflow

SECRET = "hunter2-Zq8"


def test_lines_comments_export_and_quotes() -> None:
    text = (
        "\ufeff# a comment\n"
        "\n"
        "PLAIN=value\n"
        "  SPACED = padded  \n"
        "export EXPORTED=1\n"
        "EMPTY=\n"
        "INLINE=abc # a comment\n"
        "HASH=abc#def\n"
        "EQUALS=a=b==\n"
        'DOUBLE="two words # not a comment"  # a comment\n'
        'ESCAPED="line\\nnext \\"q\\" \\\\ \\$HOME"\n'
        "SINGLE='$HOME \\n stays'\r\n"
        "DOLLAR=$HOME\n"
        "PLAIN=later wins\n"
    )
    assert parse_env_file(text, "x.env") == {
        "PLAIN": "later wins", "SPACED": "padded", "EXPORTED": "1", "EMPTY": "",
        "INLINE": "abc", "HASH": "abc#def", "EQUALS": "a=b==",
        "DOUBLE": "two words # not a comment", "ESCAPED": 'line\nnext "q" \\ $HOME',
        "SINGLE": "$HOME \\n stays", "DOLLAR": "$HOME",
    }


@pytest.mark.parametrize(("line", "what"), [
    (SECRET, "expected KEY=VALUE"),
    (f"MY TOKEN={SECRET}", "is not a variable name"),
    (f"1TOKEN={SECRET}", "is not a variable name"),
    (f"={SECRET}", "is not a variable name"),
    (f'TOKEN="{SECRET}', "quote is not closed (a value is on one line)"),
    (f"TOKEN='{SECRET}", "quote is not closed (a value is on one line)"),
    (f'TOKEN="{SECRET}" trailing', "after the closing quote"),
])
def test_a_bad_line_names_the_file_and_line_but_not_its_text(line: str, what: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_env_file(f"# first\nOK=1\n{line}\n", "conf/prod.env")
    err = caught.value
    assert err.exit_code == 2
    assert err.message.startswith("conf/prod.env:3: ") and what in err.message, err.message
    assert SECRET not in str(err)
    assert err.hint


def test_files_are_read_in_order_and_a_missing_one_names_the_flag(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("A=1\nB=from a\n")
    (tmp_path / "b.env").write_text("B=from b\n")
    assert read_env_files([tmp_path / "a.env", tmp_path / "b.env"]) == {"A": "1", "B": "from b"}
    assert read_env_files([]) == {}
    with pytest.raises(UsageError) as caught:
        read_env_files([tmp_path / "nope.env"])
    assert caught.value.message == f"--env-file {tmp_path / 'nope.env'}: no such file"
    with pytest.raises(UsageError, match="is a folder"):
        read_env_files([tmp_path])
    (tmp_path / "bin.env").write_bytes(b"A=\xff\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        read_env_files([tmp_path / "bin.env"])


def test_the_job_names_the_file_variables_and_holds_none_of_their_values() -> None:
    wf = validate_workflow({"provider": "docker", "image": "ubuntu",
                            "env": ["TOKEN=from-workflow", "OTHER=x"]})
    job = make_job(wf, [], {}, ["TOKEN", "EXTRA"])
    assert job.env == {"OTHER": "x"}
    assert job.stored_env == ["EXTRA", "TOKEN"]
    assert "-e TOKEN -e OTHER -e EXTRA" in job.shell[-1]  # the container gets them by name
    assert job.redacted()["env"] == {"OTHER": "x", "EXTRA": "***", "TOKEN": "***"}
