"""Tags: names for runs whose artifacts other workflows and people reuse.

A tag is the document `tags/<tag>.json` pointing at one run. `latest` is not a tag: it is
the newest successful run of a workflow in the project, found when a dependency is resolved.
Tags are global, so that `:TAG` shares a run across projects on purpose; `wf:latest` and
`wf:TAG` name only runs of the project that asks.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from dstack.errors import NotFoundError, UsageError
from dstack.json_types import JsonDoc
from dstack.names import did_you_mean
from dstack.run.listing import run_docs, tag_docs
from dstack.run.project import project_label
from dstack.run.record import RunRecord, Status, load_run, now
from dstack.store.base import Store
from dstack.store.keys import TAGS, tag_key, tag_of

TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RESERVED = {"latest"}


class Tag(BaseModel):
    """The document `tags/<tag>.json`."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    version: int = 1
    name: str
    run: str
    workflow: str | None = None
    created_at: str = Field(default_factory=now)


def check_tag_name(tag: str) -> str:
    """Return `tag` if it is a valid tag name; UsageError otherwise."""
    if tag in RESERVED:
        raise UsageError(f"{tag!r} is reserved", "`wf:latest` always means the newest "
                         "successful run of wf; choose another tag name.")
    if not TAG_NAME.match(tag):
        raise UsageError(f"invalid tag name {tag!r}",
                         "Use letters, digits, '.', '_' and '-' (up to 100), starting with a "
                         "letter or digit.")
    return tag


def add_tag(store: Store, tag: str, run: RunRecord, *, replace: bool = False) -> Tag:
    """Tag a successful run. Refuses an existing tag unless `replace`."""
    check_tag_name(tag)
    if run.status is not Status.DONE:
        raise UsageError(f"run {run.name} is {run.status.value}, not done",
                         "Only runs that finished successfully can be tagged.")
    doc = Tag(name=tag, run=run.name, workflow=run.workflow)
    payload: JsonDoc = doc.model_dump(mode="json")
    if replace:
        store.put_json(tag_key(tag), payload)
    elif not store.create_json(tag_key(tag), payload):
        existing = load_tag(store, tag)
        if existing.run == run.name:
            return existing
        raise UsageError(f"tag {tag!r} already points at run {existing.run}",
                         f"Delete it first: `dstack tags delete {tag}`.")
    return doc


def load_tag(store: Store, tag: str) -> Tag:
    """The tag called `tag`; NotFoundError with a suggestion when there is none."""
    if not TAG_NAME.match(tag):
        check_tag_name(tag)  # says what a tag name may be
    try:
        return Tag.model_validate(store.get_json(tag_key(tag)))
    except NotFoundError:
        hint = did_you_mean(tag, list_tag_names(store))
        raise NotFoundError(f"no tag named {tag!r}",
                            hint or "`dstack tags list` shows the tags there are.") from None


def list_tag_names(store: Store) -> list[str]:
    """Names of every tag."""
    return [tag for tag in map(tag_of, store.list(TAGS)) if tag is not None]


@functools.cache
def _tag_list() -> TypeAdapter[list[Tag]]:
    """Validates (and dumps) a whole listing of tags at once: faster than tag by tag."""
    return TypeAdapter(list[Tag])


def list_tags(store: Store, cache: Path | None = None) -> list[Tag]:
    """Every valid tag, newest first."""
    docs = tag_docs(store, cache)
    try:
        return _tag_list().validate_python(docs)
    except ValidationError:  # one or more are not tags: each valid one on its own
        pass
    tags = []
    for doc in docs:
        try:
            tags.append(Tag.model_validate(doc))
        except ValueError:
            continue
    return tags


def tag_dumps(tags: list[Tag]) -> list[JsonDoc]:
    """The tags as JSON documents (`Tag.model_dump(mode="json")` of each)."""
    docs: list[JsonDoc] = _tag_list().dump_python(tags, mode="json")
    return docs


_FIELDS = frozenset(Tag.model_fields)


def _plain(doc: JsonDoc) -> JsonDoc | None:
    """`Tag.model_validate(doc).model_dump(mode="json")` of a document whose fields all have
    exactly their types, as dstack writes them (no pydantic: 10,000 tags are listed in
    milliseconds); None for any other, which pydantic is asked about."""
    version = doc.get("version", 1)
    workflow = doc.get("workflow")
    name, run, created_at = doc.get("name"), doc.get("run"), doc.get("created_at")
    if type(name) is not str or type(run) is not str or type(created_at) is not str or \
            type(version) is not int or (workflow is not None and type(workflow) is not str) \
            or not doc.keys() <= _FIELDS:
        return None
    return {"version": version, "name": name, "run": run, "workflow": workflow,
            "created_at": created_at}


def tag_rows(store: Store, cache: Path | None = None) -> list[JsonDoc]:
    """Every valid tag, newest first, as JSON documents: `tag_dumps(list_tags(...))`."""
    rows = []
    for doc in tag_docs(store, cache):
        row = _plain(doc)
        if row is None:
            try:
                row = Tag.model_validate(doc).model_dump(mode="json")
            except ValueError:
                continue
        rows.append(row)
    return rows


def delete_tag(store: Store, tag: str) -> None:
    """Remove a tag (the run and its artifacts stay)."""
    load_tag(store, tag)
    store.delete(tag_key(tag))


def tags_of(store: Store, cache: Path | None = None) -> dict[str, list[str]]:
    """Run name → the tags pointing at it."""
    out: dict[str, list[str]] = {}
    for doc in tag_docs(store, cache):
        out.setdefault(str(doc.get("run")), []).append(str(doc.get("name")))
    return out


def _successful(store: Store, workflow: str, cache: Path | None) -> list[JsonDoc]:
    """Documents of the successful runs of `workflow` in every project, newest first."""
    return [doc for doc in run_docs(store, cache)
            if doc.get("workflow") == workflow and doc.get("status") == Status.DONE.value]


def latest_run(store: Store, workflow: str, project: str | None,
               cache: Path | None = None) -> RunRecord | None:
    """The newest successful run of `workflow` in `project`."""
    for doc in _successful(store, workflow, cache):
        if doc.get("project") == project:
            return load_run(store, str(doc["name"]))
    return None


def _no_latest(store: Store, workflow: str, project: str | None,
               cache: Path | None) -> NotFoundError:
    """What `wf:latest` says when the project has no successful run of `wf`."""
    others = {doc.get("project") for doc in _successful(store, workflow, cache)} - {project}
    hint = f"Run it first: `dstack run {workflow}`."
    if others:
        n = len(others)
        hint = (f"Runs of {workflow} exist in {n} other project{'s' if n > 1 else ''} "
                f"(`dstack ps -a --all-projects`); tag one (`dstack tags add TAG RUN`) and use "
                f"`:TAG`, or run it here: `dstack run {workflow}`.")
    return NotFoundError(f"{workflow}:latest: workflow {workflow!r} has no successful run in "
                         f"this project ({project_label(project)})", hint)


def unknown_workflow(store: Store, workflow: str, defined: Collection[str],
                     cache: Path | None = None) -> UsageError | None:
    """`unknown workflow "x"` with the closest name when `workflow` is neither one of
    `defined` (the project's workflow files) nor the workflow of a recorded run, of any
    project and status; None when it is one of them."""
    if workflow in defined:
        return None
    recorded = {str(doc["workflow"]) for doc in run_docs(store, cache) if doc.get("workflow")}
    if workflow in recorded:
        return None
    suggestion = did_you_mean(workflow, [*defined, *sorted(recorded - set(defined))])
    message = f'unknown workflow "{workflow}"'
    known = ", ".join(defined) or "none (no .dstack/workflows.yaml)"
    return UsageError(f"{message}. {suggestion}" if suggestion else message,
                      f"A dependency names a workflow of the project's workflow files "
                      f"({known}) or one with runs (`dstack ps -a --all-projects`).")


def resolve_ref(store: Store, workflow: str | None, tag: str, cache: Path | None = None, *,
                project: str | None) -> RunRecord:
    """The run a dependency `wf:latest`, `wf:TAG` or `:TAG` names, `wf:...` within `project`
    (a tag is global: `:TAG` names a run of any project); says what to run if none."""
    if tag == "latest":
        if workflow is None:
            raise UsageError("':latest' needs a workflow name", "Write it as `WORKFLOW:latest`.")
        run = latest_run(store, workflow, project, cache)
        if run is None:
            raise _no_latest(store, workflow, project, cache)
        return run
    found = load_tag(store, tag)
    if workflow is not None and found.workflow != workflow:
        raise NotFoundError(
            f"{workflow}:{tag}: tag {tag!r} belongs to workflow {found.workflow!r}, "
            f"not {workflow!r}", f"Use `:{tag}` or `{found.workflow}:{tag}`.")
    run = load_run(store, found.run)
    if workflow is not None and run.project != project:
        raise NotFoundError(
            f"{workflow}:{tag}: tag {tag!r} is on run {run.name} of another project "
            f"({project_label(run.project)})",
            f"A tag can be shared across projects on purpose: use `:{tag}`.")
    return run
