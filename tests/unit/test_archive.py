"""Deterministic archives, safe extraction of hostile archives, and safe_join."""

from __future__ import annotations

import io
import os
import posixpath
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dstack.code.archive import Entry, extract_archive, safe_join, write_archive
from dstack.errors import DstackError


def build(path: Path, members: list[tuple[str, str, str]]) -> Path:
    """A tar.gz of (kind, name, data) members: kind is file, dir, symlink, hardlink, fifo, chr."""
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            if kind == "file":
                info.size = len(data.encode())
                tar.addfile(info, io.BytesIO(data.encode()))
            else:
                info.linkname = data
                tar.addfile(info)
    return path


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A folder around the destination, to prove nothing lands beside it."""
    box = tmp_path / "box"
    (box / "outside").mkdir(parents=True)
    (box / "outside" / "victim.txt").write_text("untouched")
    return box


HOSTILE = {
    "dotdot": [("file", "ok.txt", "fine"), ("file", "../evil", "pwned")],
    "nested-dotdot": [("file", "a/../../evil", "pwned")],
    "absolute": [("file", "ok.txt", "fine"), ("file", "/tmp/dstack-abs-evil", "pwned")],
    "symlink-to-etc-then-file": [("symlink", "etc", "/etc"), ("file", "etc/evil", "pwned")],
    "symlink-up": [("file", "ok.txt", "fine"), ("symlink", "up", "../outside")],
    "symlink-up-deep": [("symlink", "a/b/up", "../../../outside/victim.txt")],
    "file-through-inner-symlink": [("dir", "sub", ""), ("symlink", "inner", "sub"),
                                   ("file", "inner/x", "pwned")],
    "chained-symlinks": [("dir", "x", ""), ("symlink", "x/l", ".."), ("symlink", "m", "x/l/..")],
    "hardlink": [("file", "ok.txt", "fine"), ("hardlink", "hard", "ok.txt")],
    "hardlink-outside": [("hardlink", "hard", "../outside/victim.txt")],
    "fifo": [("fifo", "pipe", "")],
    "device": [("chr", "null", "")],
    "duplicate": [("file", "dup", "one"), ("symlink", "dup", "/etc/passwd")],
    "file-as-folder": [("file", "f", "x"), ("file", "f/g", "y")],
    "symlink-loop": [("symlink", "a", "b"), ("symlink", "b", "a")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_before_writing(sandbox: Path, case: str) -> None:
    archive = build(sandbox.parent / f"{case}.tar.gz", HOSTILE[case])
    before = snapshot(sandbox)
    with pytest.raises(DstackError, match="Refusing to extract") as err:
        extract_archive(archive, sandbox / "dest")
    assert any(name in err.value.message for _, name, _ in HOSTILE[case])
    assert snapshot(sandbox) == before
    assert (sandbox / "outside" / "victim.txt").read_text() == "untouched"
    assert not Path("/tmp/dstack-abs-evil").exists()


def test_file_through_a_symlink_already_in_dest_is_refused(sandbox: Path) -> None:
    dest = sandbox / "dest"
    dest.mkdir()
    os.symlink(sandbox / "outside", dest / "data")
    archive = build(sandbox.parent / "a.tar.gz", [("file", "data/victim.txt", "pwned")])
    with pytest.raises(DstackError, match="already in the destination"):
        extract_archive(archive, dest)
    assert (sandbox / "outside" / "victim.txt").read_text() == "untouched"


def test_symlink_through_a_folder_link_already_in_dest_is_refused(sandbox: Path) -> None:
    dest = sandbox / "dest"
    dest.mkdir()
    os.symlink(sandbox / "outside", dest / "d")
    archive = build(sandbox.parent / "a.tar.gz", [("dir", "d", ""), ("symlink", "x", "d/v")])
    with pytest.raises(DstackError, match="'x'"):
        extract_archive(archive, dest)
    assert snapshot(dest) == {"d"}


def test_existing_file_symlink_is_replaced_not_followed(sandbox: Path) -> None:
    dest = sandbox / "dest"
    dest.mkdir()
    os.symlink(sandbox / "outside" / "victim.txt", dest / "f.txt")
    extract_archive(build(sandbox.parent / "a.tar.gz", [("file", "f.txt", "new")]), dest)
    assert not (dest / "f.txt").is_symlink()
    assert (dest / "f.txt").read_text() == "new"
    assert (sandbox / "outside" / "victim.txt").read_text() == "untouched"


def test_benign_archive_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("print('hi')")
    (src / "run.sh").write_text("#!/bin/sh\n")
    entries = [Entry("pkg/mod.py", src / "pkg" / "mod.py", len("print('hi')")),
               Entry("run.sh", src / "run.sh", len("#!/bin/sh\n"), executable=True),
               Entry("pkg/up", link="../run.sh"), Entry("self", link=".")]
    archive = tmp_path / "a.tar.gz"
    digest = write_archive(reversed(entries), archive)
    assert digest == write_archive(entries, tmp_path / "b.tar.gz")
    dest = tmp_path / "dest"
    names = extract_archive(archive, dest)
    assert names == ["pkg/mod.py", "pkg/up", "run.sh", "self"]
    assert (dest / "pkg" / "mod.py").read_text() == "print('hi')"
    assert (dest / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (dest / "pkg" / "mod.py").stat().st_mode & 0o777 == 0o644
    assert os.readlink(dest / "pkg" / "up") == "../run.sh"
    assert (dest / "self" / "run.sh").exists()


def test_archive_made_by_tar_with_dot_prefix_and_folders(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "c.txt").write_text("c")
    archive = tmp_path / "t.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(src), "."], check=True)
    names = extract_archive(archive, tmp_path / "dest")
    assert set(names) == {"a", "a/b", "a/b/c.txt"}
    assert (tmp_path / "dest" / "a" / "b" / "c.txt").read_text() == "c"


def test_corrupt_archive_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(DstackError, match="not a readable tar archive"):
        extract_archive(bad, tmp_path / "dest")


def test_safe_join(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "escape")
    os.symlink("sub", root / "alias")
    assert safe_join(root, "a/b.txt") == root / "a" / "b.txt"
    assert safe_join(root, "sub/../c") == root / "c"
    assert safe_join(root, "") == root
    assert safe_join(root, ".") == root
    assert safe_join(root, "alias/x") == root / "sub" / "x"
    for bad in ("../x", "a/../../x", "/etc/passwd", "escape/x", "escape", "a\0b"):
        with pytest.raises(DstackError):
            safe_join(root, bad)


components = st.sampled_from(["a", "b", "..", ".", "", "c/d", "../.."])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(components, min_size=1, max_size=6))
def test_safe_join_refuses_exactly_the_escapes(tmp_path_factory: pytest.TempPathFactory,
                                               parts: list[str]) -> None:
    """Without symlinks, a path is refused exactly when it climbs above root; else inside."""
    root = tmp_path_factory.getbasetemp() / "safe-join-root"
    relpath = "/".join(parts)
    depth, escapes = 0, relpath.startswith("/")
    for part in relpath.split("/"):
        depth += -1 if part == ".." else 0 if part in ("", ".") else 1
        escapes = escapes or depth < 0
    if escapes:
        with pytest.raises(DstackError):
            safe_join(root, relpath)
    else:
        normal = posixpath.normpath(relpath)
        assert safe_join(root, relpath) == (root if normal == "." else root / normal)
