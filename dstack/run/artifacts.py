"""Artifacts of runs: listing, downloading, sharing as signed download links, and uploading
local files as a tagged run."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dstack.code.archive import safe_join
from dstack.durations import duration_s
from dstack.errors import NotFoundError, UsageError
from dstack.run.job import ArtifactPath, Job
from dstack.run.record import (
    RunRecord,
    Status,
    create_run,
    load_run,
    now,
    run_stack_name,
    update_run,
)
from dstack.run.tags import add_tag, check_tag_name, load_tag
from dstack.store.artifact_sync import ArtifactSync
from dstack.store.base import Store
from dstack.store.keys import artifact_prefix, run_prefix, tag_key


@dataclass(frozen=True)
class ArtifactFile:
    """One file of a run's artifacts."""

    path: str
    size: int


def resolve_source(store: Store, ref: str) -> RunRecord:
    """`RUN` or `:TAG` → the run."""
    if ref.startswith(":"):
        return load_run(store, load_tag(store, ref[1:]).run)
    return load_run(store, ref)


def list_artifacts(store: Store, run: str) -> list[ArtifactFile]:
    """Every artifact file of `run` with its size."""
    prefix = artifact_prefix(run)
    files = []
    for key in store.list(prefix):
        size = store.size(key)
        files.append(ArtifactFile(key[len(prefix):], size))
    return files


def _selected(store: Store, run: str, path: str | None) -> list[tuple[str, str]]:
    """(store key, artifact path) of `run`'s artifact files, only the file `path` or those
    under it if given; NotFoundError when `path` is neither."""
    prefix = artifact_prefix(run)
    wanted = posixpath.normpath(path).strip("/") if path else None
    files = []
    for key in store.list(prefix):
        rel = key[len(prefix):]
        if not wanted or rel == wanted or rel.startswith(wanted + "/"):
            files.append((key, rel))
    if wanted and not files:
        raise NotFoundError(f"run {run} has no artifact at {wanted!r}",
                            f"`dstack artifacts list {run}` shows what it has.")
    return files


def download(store: Store, run: str, out_dir: Path, path: str | None = None) -> list[Path]:
    """Download `run`'s artifacts (only those under `path`, if given) into `out_dir`."""
    written = []
    for key, rel in _selected(store, run, path):
        target = safe_join(out_dir, rel)
        store.get_file(key, target)
        written.append(target)
    return written


@dataclass(frozen=True)
class SharedLink:
    """A download link to one artifact file, for anyone, without credentials."""

    path: str
    url: str
    expires_at: str
    """When the link stops working (ISO 8601, UTC, to the second)."""


def parse_expires(value: str) -> int:
    """Seconds of an `--expires` value (`24h`, `90m`, `7d`, `30s`; a second or more)."""
    seconds = duration_s(value)
    if seconds is None or seconds < 1:
        raise UsageError(f"--expires {value!r} is not a duration of a second or more",
                         "Write it like 24h, 90m, 7d or 30s.")
    return int(seconds)


def share(store: Store, ref: str, expires_s: int, path: str | None = None) -> list[SharedLink]:
    """Links, valid for `expires_s` seconds, to the artifact files of `ref` (`RUN` or `:TAG`),
    only the file `path` or those under it if given: one per file.

    The store says first whether it can sign such links (a folder cannot; S3 and GCS links
    last at most 7 days). Nothing is made public. `expires_at` is when signing started plus
    `expires_s`, to the second, so no link stops working before it.
    """
    store.check_share(expires_s)
    run = resolve_source(store, ref)
    files = _selected(store, run.name, path)
    if not files:
        raise NotFoundError(f"run {run.name} has no artifacts to share",
                            f"`dstack ps {run.name}` shows how it went.")
    start = datetime.now(timezone.utc).replace(microsecond=0)
    expires_at = (start + timedelta(seconds=expires_s)).isoformat()
    return [SharedLink(rel, store.share_url(key, expires_s), expires_at) for key, rel in files]


def upload_as_tag(store: Store, tag: str, paths: list[str], root: Path, profile: str,
                  backend: str, project: str | None = None) -> RunRecord:
    """Upload local files or folders as the artifacts of a new finished run tagged `tag`, a
    run of `project`.

    When the upload fails, or another upload took the tag meanwhile, the new run is removed.
    """
    check_tag_name(tag)
    if store.exists(tag_key(tag)):
        raise UsageError(f"tag {tag!r} already exists",
                         f"Delete it first: `dstack tags delete {tag}`.")
    rels = []
    for p in paths:
        full = (root / p).resolve()
        try:
            rel = full.relative_to(root.resolve()).as_posix()
        except ValueError:
            raise UsageError(f"--artifact {p}: not inside {root}",
                             "Give paths inside the current folder.") from None
        if not full.exists():
            raise UsageError(f"--artifact {p}: no such file or folder")
        rels.append(rel)
    job = Job(provider="upload", artifacts=[ArtifactPath(path=r) for r in rels])

    def make(name: str) -> RunRecord:
        return RunRecord(name=name, provider="upload", project=project, profile=profile,
                         backend=backend,
                         job=job, stack=run_stack_name(name), torn_down=True,
                         status=Status.UPLOADING, started_at=now(),
                         submitter={"pid": os.getpid()})

    run = create_run(store, make)
    try:
        ArtifactSync(store, run.name, root, rels).sync()
        run = update_run(store, run.name, status=Status.DONE.value, exit_code=0)
        add_tag(store, tag, run)  # the tag's conditional create: one upload of a tag wins
    except BaseException:
        # Lost the tag to a concurrent upload, or failed: no untagged upload is left behind.
        store.delete_prefix(run_prefix(run.name))
        raise
    return run
