"""Packaging never takes the dstack home, Pulumi state, stores or credentials; a project over
the size limit is refused naming its largest folders; unused code archives are collected."""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from dstack.code.archive import extract_archive
from dstack.code.packaging import CodeArchive, package_code, scan_code
from dstack.code.uploads import GRACE_S, remove_unused_code, upload_code
from dstack.config.profiles import SETTINGS, Profile, add_profile, get_profile, set_setting
from dstack.errors import UsageError
from dstack.run.submit import code_limit
from dstack.store.local import LocalStore

SECRET = "abc-the-api-key"
ORDINARY = {"hi.py", "src/model.py", "README.md", "config/settings.yaml", "environment.yml"}


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No machine git configuration, and a DSTACK_HOME outside every project here."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("DSTACK_HOME", str(tmp_path / "elsewhere" / ".dstack"))


def write(root: Path, rel: str, text: str = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def names(archive: CodeArchive) -> set[str]:
    with tarfile.open(archive.path) as tar:
        return {m.name for m in tar.getmembers()}


def user_home(root: Path) -> Path:
    """A user's home folder as a project: a dstack home inside it, and credentials."""
    for rel in ORDINARY:
        write(root, rel, f"ordinary {rel}")
    write(root, ".dstack/secrets/pulumi-passphrase", "the-passphrase")
    write(root, ".dstack/store/secrets/API_KEY", SECRET)
    write(root, ".dstack/store/code/" + "a" * 64 + ".tar.gz", "an old archive")
    write(root, ".dstack/store/runs/brave-otter-1/run.json", '{"backend": "local"}')
    write(root, ".dstack/state/.pulumi/stacks/dstack/run-brave-otter-1.json", "{}")
    write(root, ".dstack/config.yaml", "default: local\n")
    write(root, ".ssh/id_rsa", "PRIVATE KEY")
    write(root, ".aws/credentials", "[default]\naws_secret_access_key = s3cr3t\n")
    write(root, ".aws/config", "[default]\n")
    write(root, ".config/gcloud/application_default_credentials.json", "{}")
    write(root, ".netrc", "machine x password y")
    write(root, ".git-credentials", "https://u:p@example.com")
    write(root, "key.pem", "PEM")
    write(root, "certs/server.pem", "PEM")
    write(root, ".env", f"API_KEY={SECRET}")
    write(root, "app/.env.local", f"API_KEY={SECRET}")
    write(root, ".docker/config.json", '{"auths": {}}')
    write(root, ".docker/buildx/ok.txt", "not a credential")
    write(root, ".kube/config", "apiVersion: v1")
    write(root, "infra/.pulumi/stacks/dev.json", "{}")
    write(root, "copy-of-old-home/secrets/pulumi-passphrase", "an old passphrase")
    write(root, "copy-of-old-home/notes.txt", "inside an old home")
    write(root, "backup/store/code/" + "b" * 64 + ".tar.gz", "an archive of a store")
    write(root, "backup/store/tags/best.json", "{}")
    return root


KINDS = (".ssh/", ".aws/", ".config/gcloud/", ".netrc", ".git-credentials", "*.pem",
         ".env", ".docker/config.json", ".kube/")


def _git_init(root: Path) -> None:
    subprocess.run(["git", "init", "-q", str(root)], check=True, capture_output=True)


@pytest.mark.parametrize("git", [False, True], ids=["plain", "git"])
def test_the_home_state_stores_and_credentials_are_never_packaged(
        tmp_path: Path, git: bool) -> None:
    root = user_home(tmp_path / "me")
    if git:
        _git_init(root)
    archive = package_code(root, tmp_path / "out")
    assert names(archive) == ORDINARY | {".docker/buildx/ok.txt"}
    dest = tmp_path / "dest"
    extract_archive(archive.path, dest)
    for path in dest.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(), path
    # one line per kind, each naming it and how to include it
    credential_lines = [w for w in archive.warnings if "credentials" in w]
    assert len(credential_lines) == len(KINDS), archive.warnings
    for kind in KINDS:
        lines = [w for w in credential_lines if w.startswith(f"not packaged: {kind} ")]
        assert len(lines) == 1, (kind, archive.warnings)
        assert ".dstackignore" in lines[0] and '"!' in lines[0]
    never = [w for w in archive.warnings if "never packaged" in w]
    assert any(".dstack/" in w and "dstack home" in w for w in never), never
    assert any("Pulumi state" in w for w in never), never
    assert any("dstack store" in w for w in never), never
    assert len(archive.warnings) == len(credential_lines) + len(never)


def test_a_negation_brings_back_a_credential_but_never_the_home(tmp_path: Path) -> None:
    root = user_home(tmp_path / "me")
    write(root, ".dstackignore", "\n".join([
        "!.env", "!.aws/", "!.dstack/", "!.dstack/**", "!.dstack/secrets/pulumi-passphrase",
        "!**/.pulumi/", "!backup/store/", "!copy-of-old-home/"]))
    archive = package_code(root, tmp_path / "out")
    got = names(archive)
    assert {".env", ".aws/credentials", ".aws/config", ".dstackignore"} <= got
    assert "app/.env.local" not in got  # `!.env` names `.env` only
    assert not any(n.startswith((".dstack/", "copy-of-old-home/", "backup/")) or
                   ".pulumi" in n for n in got), got
    assert not any(w.startswith("not packaged: .aws/") for w in archive.warnings)
    assert any(w.startswith("not packaged: .env ") and "app/.env.local" in w
               for w in archive.warnings), archive.warnings


def test_the_dstack_home_is_recognised_before_its_first_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dstack secrets add` before any run: the home has no passphrase yet, only a store."""
    root = tmp_path / "me"
    write(root, "hi.py", "print('hi')")
    write(root, "dot-dstack/store/secrets/API_KEY", SECRET)
    monkeypatch.setenv("DSTACK_HOME", str(root / "dot-dstack"))
    archive = package_code(root, tmp_path / "out")
    assert names(archive) == {"hi.py"}
    assert archive.warnings == ["not packaged: dot-dstack/ (a dstack home; never packaged)"]


def test_a_folder_the_caller_protects_is_never_packaged(tmp_path: Path) -> None:
    root = tmp_path / "me"
    write(root, "hi.py")
    write(root, "my-store/secrets/API_KEY", SECRET)
    archive = package_code(root, tmp_path / "out", protect=[root / "my-store"])
    assert names(archive) == {"hi.py"}


@pytest.mark.parametrize("inside", [".dstack", ".dstack/workdirs/run-1"])
def test_a_project_in_the_dstack_home_is_refused(tmp_path: Path, inside: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "me" / ".dstack"
    write(home, "secrets/pulumi-passphrase")
    write(home / inside, "hi.py")
    monkeypatch.setenv("DSTACK_HOME", str(home))
    with pytest.raises(UsageError, match="dstack home") as err:
        scan_code(home / inside)
    assert "DSTACK_HOME" in (err.value.hint or "")


def test_an_ordinary_dstack_folder_is_packaged(tmp_path: Path) -> None:
    """A project's own `.dstack/` (its workflows) is not a dstack home."""
    root = tmp_path / "proj"
    write(root, ".dstack/workflows.yaml", "workflows: []\n")
    write(root, "runs/exp1/metrics.json", "{}")
    write(root, "code/train.py")
    assert names(package_code(root, tmp_path / "out")) == {
        ".dstack/workflows.yaml", "runs/exp1/metrics.json", "code/train.py"}


def test_too_big_is_a_usage_error_naming_the_largest_folders(tmp_path: Path) -> None:
    root = tmp_path / "big"
    for rel, size in {"data/a.bin": 60_000, "data/b.bin": 30_000, "ckpt/model.pt": 20_000,
                      "logs/x.txt": 5_000, "src/tiny.py": 100, "notes.txt": 1_000}.items():
        write(root, rel, "x" * size)
    with pytest.raises(UsageError) as err:
        scan_code(root, max_bytes=50_000, profile="gpu")
    assert err.value.exit_code == 2
    message, hint = err.value.message, err.value.hint or ""
    assert "116.1 kB" in message and "50.0 kB" in message, message
    folders = message.split("Largest top-level folders: ")[1].splitlines()[0]
    assert folders.startswith("data/ (90.0 kB), ckpt/ (20.0 kB), logs/ (5.0 kB)"), folders
    assert ".dstackignore" in hint
    assert "dstack config set gpu max_code_size" in hint
    assert not (tmp_path / "out").exists()


def test_the_default_limit_is_100_mb(tmp_path: Path) -> None:
    root = tmp_path / "big"
    write(root, "small.py")
    with open(root / "data.bin", "wb") as f:
        f.truncate(100_000_001)  # sparse: no real disk use
    with pytest.raises(UsageError, match=r"100\.0 MB"):
        scan_code(root)


def test_scan_counts_files_and_bytes_and_writes_nothing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = user_home(tmp_path / "me")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    before = sorted(tmp_path.rglob("*"))
    inventory = scan_code(root)
    assert sorted(tmp_path.rglob("*")) == before
    ordinary = ORDINARY | {".docker/buildx/ok.txt"}
    assert inventory.files == len(ordinary)
    assert inventory.bytes == sum((root / rel).stat().st_size for rel in ordinary)
    archive = package_code(root, tmp_path / "out")
    assert (archive.files, archive.bytes) == (inventory.files, inventory.bytes)


# -- the limit as a profile setting ---------------------------------------------------------


def test_max_code_size_is_a_setting_of_every_backend(tmp_path: Path) -> None:
    assert all("max_code_size" in keys for keys in SETTINGS.values())
    add_profile(tmp_path, Profile(name="gpu", backend="aws", settings={"region": "us-east-1"}))
    assert code_limit(get_profile(tmp_path, "gpu")) == 100_000_000
    set_setting(tmp_path, "gpu", "max_code_size", "500MB")
    assert code_limit(get_profile(tmp_path, "gpu")) == 500_000_000
    set_setting(tmp_path, "local", "max_code_size", "1GiB")
    assert code_limit(get_profile(tmp_path, "local")) == 1 << 30
    with pytest.raises(UsageError, match="max_code_size"):
        set_setting(tmp_path, "gpu", "max_code_size", "lots")
    bad = Profile(name="x", backend="local", settings={"max_code_size": "lots"})
    with pytest.raises(UsageError, match="max_code_size"):
        code_limit(bad)


# -- collecting unused archives -------------------------------------------------------------


def test_gc_removes_old_unreferenced_archives_only(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    old = time.time() - GRACE_S - 60
    keys = {name: f"code/{name * 64}.tar.gz" for name in "abc"}
    for key in keys.values():
        store.put_bytes(key, b"archive")
    for name in "ab":
        os.utime(store.root / keys[name], (old, old))
    store.put_bytes("code/notes.txt", b"not an archive")
    os.utime(store.root / "code/notes.txt", (old, old))
    removed = remove_unused_code(store, {"a" * 64})
    assert removed == [keys["b"]]
    assert store.exists(keys["a"]) and store.exists(keys["c"]) and store.exists("code/notes.txt")
    assert not store.exists(keys["b"])


def test_a_reused_archive_is_put_again_when_it_is_getting_old(tmp_path: Path) -> None:
    """So that gc, which spares archives younger than GRACE_S, spares it while the record of
    the run reusing it is written."""
    store = LocalStore(tmp_path / "store")
    src = write(tmp_path, "proj/hi.py")
    archive = package_code(src.parent, tmp_path / "out")
    path = store.root / archive.store_key
    upload_code(store, archive)
    assert path.read_bytes() == archive.path.read_bytes()
    young = time.time() - GRACE_S / 4
    os.utime(path, (young, young))
    upload_code(store, archive)
    assert path.stat().st_mtime == pytest.approx(young)  # fresh enough: not put again
    old = time.time() - GRACE_S
    os.utime(path, (old, old))
    upload_code(store, archive)
    assert time.time() - path.stat().st_mtime < GRACE_S / 2


def test_list_times_of_the_local_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("code/x.tar.gz", b"1")
    os.utime(store.root / "code/x.tar.gz", (1_000_000, 1_000_000))
    assert store.list_times("code/") == {"code/x.tar.gz": 1_000_000.0}
    assert store.list_times("nothing/") == {}
