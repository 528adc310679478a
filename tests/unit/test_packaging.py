"""Packaging the working directory: git and plain folders, ignore rules, determinism, limits."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dstack.code.archive import extract_archive
from dstack.code.packaging import CodeArchive, IgnoreRules, package_code
from dstack.errors import DstackError


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the machine's git configuration (global excludes, hooks) out of the tests."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com",
         "-c", "commit.gpgsign=false", "-C", str(repo), *args],
        check=True, capture_output=True, text=True).stdout


def write(root: Path, rel: str, text: str = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def members(archive: CodeArchive) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive.path) as tar:
        return {m.name: m for m in tar.getmembers()}


def content(archive: CodeArchive, name: str) -> str:
    with tarfile.open(archive.path) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read().decode()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repo with committed, modified, deleted, untracked and ignored files."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    write(root, ".gitignore", "*.log\nbuild/\n")
    for rel in ("tracked.txt", "modified.py", "deleted.txt", "was_tracked.log", "sub/inner.txt"):
        write(root, rel, f"committed {rel}")
    git(root, "add", "-f", ".")
    git(root, "commit", "-q", "-m", "init")
    write(root, "modified.py", "changed")
    (root / "deleted.txt").unlink()
    git(root, "rm", "-q", "--cached", "was_tracked.log")
    write(root, "untracked.txt")
    write(root, "ignored.log")
    write(root, "build/out.bin")
    return root


def test_git_repo_holds_tracked_modified_and_untracked_files(repo: Path, tmp_path: Path) -> None:
    archive = package_code(repo, tmp_path / "out")
    assert set(members(archive)) == {".gitignore", "tracked.txt", "modified.py",
                                     "sub/inner.txt", "untracked.txt"}
    assert content(archive, "modified.py") == "changed"
    assert archive.files == 5
    assert archive.skipped == []


def test_git_repo_honours_dstackignore(repo: Path, tmp_path: Path) -> None:
    write(repo, ".dstackignore", "\n".join([
        "# data stays out", "", "data/", "*.csv", "!keep.csv", "/secret.txt",
        "docs/**/draft.md", "models/**", "!models/README.md"]))
    for rel in ("data/a.bin", "nested/data/b.bin", "x.csv", "keep.csv", "deep/y.csv",
                "secret.txt", "nested/secret.txt", "docs/draft.md", "docs/a/b/draft.md",
                "docs/final.md", "models/w.pt", "models/README.md", "data.txt"):
        write(repo, rel)
    git(repo, "add", "x.csv")  # tracked files are ignored by .dstackignore too
    names = set(members(package_code(repo, tmp_path / "out")))
    assert names == {".gitignore", ".dstackignore", "tracked.txt", "modified.py",
                     "sub/inner.txt", "untracked.txt", "keep.csv", "nested/secret.txt",
                     "docs/final.md", "models/README.md", "data.txt"}


def test_subfolder_of_a_repo_is_packaged_relative_to_itself(repo: Path, tmp_path: Path) -> None:
    write(repo, "sub/new.txt")
    write(repo, "sub/skip.me")
    write(repo, "sub/.dstackignore", "*.me\n")
    names = set(members(package_code(repo / "sub", tmp_path / "out")))
    assert names == {"inner.txt", "new.txt", ".dstackignore"}


def test_submodule_like_nested_repo_is_skipped_and_reported(repo: Path, tmp_path: Path) -> None:
    nested = repo / "vendor"
    nested.mkdir()
    git(nested, "init", "-q")
    write(nested, "lib.py")
    archive = package_code(repo, tmp_path / "out")
    assert "vendor" in archive.skipped
    assert not any(name.startswith("vendor") for name in members(archive))


def test_plain_folder_outside_git(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    for rel in ("main.py", "pkg/mod.py", "pkg/__pycache__/mod.pyc", ".git/config",
                ".venv/bin/python", ".dstack/cache/blob", ".dstack/workflows.yaml",
                "scratch.tmp", "important.tmp", "models/w.pt", "src/models/keep.py"):
        write(root, rel)
    write(root, ".gitignore", "*.tmp\n")
    write(root, ".dstackignore", "!important.tmp\n/models/\n")
    assert subprocess.run(["git", "-C", str(root), "rev-parse"], capture_output=True
                          ).returncode != 0, "the temp folder must not be inside a git repo"
    names = set(members(package_code(root, tmp_path / "out")))
    assert names == {"main.py", "pkg/mod.py", ".dstack/workflows.yaml", "important.tmp",
                     "src/models/keep.py", ".gitignore", ".dstackignore"}


def test_same_content_gives_the_same_bytes(tmp_path: Path) -> None:
    root = tmp_path / "a"
    write(root, "run.sh", "#!/bin/sh\necho hi\n").chmod(0o700)
    write(root, "data/notes.txt", "hello").chmod(0o600)
    write(root, "d" * 120 + "/long-name-" + "e" * 120 + ".txt", "long")
    first = package_code(root, tmp_path / "out1")
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (copy / "data/notes.txt").chmod(0o664)
    second = package_code(copy, tmp_path / "out2")
    assert first.sha256 == second.sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    data = first.path.read_bytes()
    assert first.sha256 == hashlib.sha256(data).hexdigest()
    assert first.path == tmp_path / "out1" / f"{first.sha256}.tar.gz"
    assert first.size == len(data)
    assert first.store_key == f"code/{first.sha256}.tar.gz"
    assert data[4:8] == b"\0\0\0\0"  # gzip header mtime
    with gzip.open(first.path) as gz, tarfile.open(fileobj=gz) as tar:
        infos = tar.getmembers()
    assert [m.name for m in infos] == sorted(m.name for m in infos)
    assert {(m.name, m.mode) for m in infos if m.name in ("run.sh", "data/notes.txt")} == {
        ("run.sh", 0o755), ("data/notes.txt", 0o644)}
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "") for m in infos)
    (copy / "data/notes.txt").write_text("hello!")
    assert package_code(copy, tmp_path / "out3").sha256 != first.sha256


def test_symlinks_inside_are_kept_outside_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write(root, "real.txt", "real")
    write(root, "sub/file.txt", "in sub")
    write(tmp_path, "outside.txt", "secret")
    os.symlink("real.txt", root / "rel_link")
    os.symlink(root / "real.txt", root / "sub" / "abs_link")
    os.symlink("sub", root / "dir_link")
    os.symlink(tmp_path / "outside.txt", root / "out_link")
    os.symlink("../outside.txt", root / "up_link")
    os.mkfifo(root / "pipe")
    archive = package_code(root, tmp_path / "out")
    infos = members(archive)
    assert set(infos) == {"real.txt", "sub/file.txt", "rel_link", "sub/abs_link", "dir_link"}
    assert {n: m.linkname for n, m in infos.items() if m.issym()} == {
        "rel_link": "real.txt", "sub/abs_link": "../real.txt", "dir_link": "sub"}
    assert archive.skipped == ["out_link", "pipe", "up_link"]
    dest = tmp_path / "dest"
    extract_archive(archive.path, dest)
    assert (dest / "sub" / "abs_link").read_text() == "real"
    assert (dest / "dir_link" / "file.txt").read_text() == "in sub"


def test_too_big_names_the_biggest_files(tmp_path: Path) -> None:
    root = tmp_path / "big"
    sizes = {"ckpt/model.pt": 9000, "data/train.bin": 7000, "data/val.bin": 5000,
             "notes.txt": 3000, "src/a.py": 2000, "src/b.py": 10}
    for rel, size in sizes.items():
        write(root, rel, "x" * size)
    with pytest.raises(DstackError) as err:
        package_code(root, tmp_path / "out", max_bytes=10_000)
    message = err.value.message
    for rel in ("ckpt/model.pt", "data/train.bin", "data/val.bin", "notes.txt", "src/a.py"):
        assert rel in message
    assert "src/b.py" not in message
    assert message.index("ckpt/model.pt") < message.index("data/train.bin")
    assert ".dstackignore" in (err.value.hint or "")
    assert not (tmp_path / "out").exists()


def test_too_many_files_names_the_crowded_folders(tmp_path: Path) -> None:
    root = tmp_path / "many"
    for i in range(30):
        write(root, f"frames/{i}.png")
    write(root, "train.py")
    with pytest.raises(DstackError, match=r"frames/ \(30 files\)"):
        package_code(root, tmp_path / "out", max_files=20)
    assert package_code(root, tmp_path / "out", max_files=31).files == 31


@pytest.mark.parametrize(("lines", "path", "is_dir", "expected"), [
    (["*.log"], "a/b/x.log", False, True),
    (["*.log"], "x.logs", False, False),
    (["build/"], "build", True, True),
    (["build/"], "build", False, False),
    (["build/"], "src/build/out.o", False, True),
    (["/build"], "src/build", True, False),
    (["/build"], "build/x", False, True),
    (["a/b"], "x/a/b", False, False),
    (["a/*.c"], "a/b/x.c", False, False),
    (["**/foo"], "x/y/foo", False, True),
    (["a/**/b"], "a/b", False, True),
    (["a/**/b"], "a/x/y/b", False, True),
    (["a/**"], "a", True, False),
    (["a/**"], "a/x/y", False, True),
    (["x?z"], "xyz", False, True),
    (["x?z"], "x/z", False, False),
    (["[ab].txt"], "b.txt", False, True),
    (["[!ab].txt"], "c.txt", False, True),
    (["[!ab].txt"], "a.txt", False, False),
    (["\\#lit", "\\!bang"], "#lit", False, True),
    (["\\#lit", "\\!bang"], "!bang", False, True),
    (["# comment", "", "   "], "# comment", False, False),
    (["*.txt", "!keep.txt"], "keep.txt", False, False),
    (["*.txt", "!keep.txt", "keep.txt"], "keep.txt", False, True),
    (["data/", "!data/keep.txt"], "data/keep.txt", False, True),
    (["data/*", "!data/keep.txt"], "data/keep.txt", False, False),
    (["trailing   "], "trailing", False, True),
])
def test_ignore_rules(lines: list[str], path: str, is_dir: bool, expected: bool) -> None:
    assert IgnoreRules.from_lines(lines).ignored(path, is_dir) is expected


def test_ignore_rules_from_a_missing_file_ignore_nothing(tmp_path: Path) -> None:
    rules = IgnoreRules.from_file(tmp_path / "nope")
    assert len(rules) == 0
    assert not rules.ignored("anything")


TREE = ("a/b/c.txt", "a/b.txt", "a/c/b", "b/a/c.py", "b/ab.txt", "c.py", "ab/c", "x/a/b/c.txt")


@pytest.fixture(scope="module")
def git_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A git repo with no commits whose untracked files form a small tree."""
    root = tmp_path_factory.mktemp("tree")
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", str(root)], check=True, env=env)
    for rel in TREE:
        write(root, rel)
    yield root


segment = st.sampled_from(["a", "b", "c", "*", "?", "**", "a*", "*.txt", "[ab]", "[!a]*"])
pattern = st.builds(
    lambda neg, lead, segs, trail: ("!" if neg else "") + ("/" if lead else "")
    + "/".join(segs) + ("/" if trail else ""),
    st.booleans(), st.booleans(), st.lists(segment, min_size=1, max_size=3), st.booleans())


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patterns=st.lists(pattern, min_size=1, max_size=4))
def test_ignore_rules_agree_with_git(git_tree: Path, patterns: list[str]) -> None:
    """What git lists as untracked-not-ignored is exactly what IgnoreRules keeps."""
    (git_tree / ".gitignore").write_text("\n".join(patterns) + "\n")
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    listed = subprocess.run(
        ["git", "-C", str(git_tree), "ls-files", "-z", "--others", "--exclude-standard"],
        check=True, capture_output=True, env=env).stdout.decode().split("\0")
    rules = IgnoreRules.from_lines(patterns)
    ours = {p for p in (*TREE, ".gitignore") if not rules.ignored(p)}
    assert ours == {p for p in listed if p}, patterns


def test_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DstackError, match="not a folder"):
        package_code(tmp_path / "missing", tmp_path / "out")
