"""What packaging never takes, and what it takes only when asked for.

Never, whatever the ignore rules say; recognised by these markers, wherever they sit:

- a dstack home: the one in use (`DSTACK_HOME`, default `~/.dstack`), or any folder holding
  `secrets/pulumi-passphrase` (every home has one from its first run on);
- a dstack store: a folder the caller names (the profile's store folder), or any folder
  holding `code/<sha256>.tar.gz`, or `runs/<run>/run.json` with `stack` and `backend` fields;
- Pulumi state: any `.pulumi/` folder (a file backend's state, or Pulumi's own home and its
  access token).

Credentials (`CREDENTIALS`) only when a `.dstackignore` negation names them (`!.env`,
`!.aws/`). Each kind left out gives one warning line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dstack.code.ignore_rules import IgnoreRules
from dstack.errors import UsageError
from dstack.home import dstack_home
from dstack.store.keys import CODE, CODE_ARCHIVE, RUN_FILE, RUNS

HOME, STORE, STATE = "a dstack home", "a dstack store", "Pulumi state"
HOME_MARKER = "secrets/pulumi-passphrase"
STATE_FOLDER = ".pulumi"
_RUNS_READ = 5  # run folders read to tell a store's `runs/` from a project's own


@dataclass(frozen=True)
class Credential:
    """A kind of credential file or folder, as the user reads it (`.aws/`, `*.pem`)."""

    kind: str
    patterns: tuple[str, ...]
    folder: bool

    @property
    def rules(self) -> IgnoreRules:
        return IgnoreRules.from_lines(self.patterns)


CREDENTIALS = (
    Credential(".ssh/", (".ssh",), folder=True),
    Credential(".aws/", (".aws",), folder=True),
    Credential(".config/gcloud/", ("**/.config/gcloud",), folder=True),
    Credential(".netrc", (".netrc", "_netrc"), folder=False),
    Credential(".git-credentials", (".git-credentials",), folder=False),
    Credential("*.pem", ("*.pem",), folder=False),
    Credential(".env", (".env", ".env.*"), folder=False),
    Credential(".docker/config.json", ("**/.docker/config.json",), folder=False),
    Credential(".kube/", (".kube",), folder=True),
)


class Guard:
    """Decides, for paths relative to a project's `root`, which ones are never packaged or
    are credentials not asked for; remembers what it left out, for `warnings`.

    `asks` are the `.dstackignore` rules (their `!` lines ask for credentials); `home` is
    the dstack home (default: the one in use) and `protect` names stores. Refuses
    (UsageError) a root that is, or is inside, a dstack home or store.
    """

    def __init__(self, root: Path, asks: IgnoreRules, protect: Iterable[Path] = (),
                 home: Path | None = None) -> None:
        self.root = root
        self._asks = asks
        self._creds = [(c, c.rules) for c in CREDENTIALS]
        self._folders: dict[str, bool] = {}
        self.found: dict[str, set[str]] = {}
        root_real = Path(os.path.realpath(root))
        self._named: dict[str, str] = {}
        for path, kind in [*((p, STORE) for p in protect), (home or dstack_home(), HOME)]:
            real = Path(os.path.realpath(path))
            if root_real.is_relative_to(real):
                raise _inside(root, kind, real)
            if real.is_relative_to(root_real):
                self._named[real.relative_to(root_real).as_posix()] = kind
        marked = self._marked(root)
        if marked is not None:
            raise _inside(root, marked, root)

    def excluded(self, relpath: str, is_dir: bool) -> bool:
        """Whether `relpath` (or a folder above it) is never packaged or a credential."""
        parts = relpath.split("/")
        for i in range(1, len(parts)):
            if self._folder_excluded("/".join(parts[:i])):
                return True
        return self._folder_excluded(relpath) if is_dir else self._file_excluded(relpath)

    def _folder_excluded(self, rel: str) -> bool:
        hit = self._folders.get(rel)
        if hit is None:
            hit = self._folders[rel] = self._check_folder(rel)
        return hit

    def _check_folder(self, rel: str) -> bool:
        kind = self._named.get(rel) or (STATE if rel.rsplit("/", 1)[-1] == STATE_FOLDER
                                        else self._marked(self.root / rel))
        if kind is None:
            kind = next((c.kind for c, rules in self._creds if c.folder and
                         rules.matches(rel, True) and not self._asks.negated(rel, True)), None)
        if kind is None:
            return False
        self.found.setdefault(kind, set()).add(rel + "/")
        return True

    def _file_excluded(self, rel: str) -> bool:
        for cred, rules in self._creds:
            if not cred.folder and rules.matches(rel) and not self._asks.negated(rel):
                self.found.setdefault(cred.kind, set()).add(rel)
                return True
        return False

    @staticmethod
    def _marked(folder: Path) -> str | None:
        """HOME or STORE when `folder` holds the markers of one."""
        if (folder / HOME_MARKER).is_file():
            return HOME
        if _holds_archive(folder / CODE) or _holds_run(folder / RUNS):
            return STORE
        return None

    def warnings(self) -> list[str]:
        """One line per kind left out: what, and (for credentials) how to include it."""
        lines = [f"not packaged: {_some(self.found[kind])} ({kind}; never packaged)"
                 for kind in (HOME, STORE, STATE) if kind in self.found]
        for cred in CREDENTIALS:
            paths = sorted(self.found.get(cred.kind, ()))
            if not paths:
                continue
            where = "" if paths == [cred.kind] else f": {_some(paths)}"
            how = (f'add "!{paths[0]}" to .dstackignore to include it' if len(paths) == 1 else
                   f'add a "!PATH" line per path to .dstackignore (e.g. "!{paths[0]}") to '
                   "include them")
            lines.append(f"not packaged: {cred.kind} (credentials{where}; {how})")
        return lines


def _inside(root: Path, kind: str, where: Path) -> UsageError:
    what = "is" if where == root else f"is inside {where}, which is"
    return UsageError(f"the project folder {root} {what} {kind}; dstack never packages it",
                      "Run dstack from your project folder, one that is not inside the dstack "
                      "home (DSTACK_HOME, default ~/.dstack) or a store.")


def _some(paths: Iterable[str], most: int = 3) -> str:
    """A few paths for a message: `a, b, c and 4 more`."""
    ordered = sorted(paths)
    shown = ", ".join(ordered[:most])
    return shown + (f" and {len(ordered) - most} more" if len(ordered) > most else "")


def _holds_archive(folder: Path) -> bool:
    """Whether `folder` (a `code/`) holds a store's `<sha256>.tar.gz`."""
    try:
        with os.scandir(folder) as it:
            return any(CODE_ARCHIVE.match(e.name) for e in it)
    except OSError:
        return False


def _holds_run(folder: Path) -> bool:
    """Whether `folder` (a `runs/`) holds a store's `<run>/run.json`."""
    try:
        with os.scandir(folder) as it:
            runs = [e.path for _, e in zip(range(_RUNS_READ), it, strict=False)]
    except OSError:
        return False
    for run in runs:
        try:
            with open(os.path.join(run, RUN_FILE), "rb") as f:
                doc = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "stack" in doc and "backend" in doc:
            return True
    return False
