"""The context every command works with: the dstack home, a profile, its backend and store
(a cloud profile's store is a pending view until its workspace exists)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from dstack.config.backends import Backend, load_backend
from dstack.config.profiles import Profile, get_profile, store_url, workspace_record
from dstack.home import dstack_home, private_dir
from dstack.interrupts import deferred_sigint
from dstack.store.base import Store, open_store

Say = Callable[[str], None]


def quiet(_msg: str) -> None:
    pass


def use_key_file(profile: Profile) -> None:
    """A gcp profile's service-account key (`--credentials`) becomes this process's
    application-default credentials, which its GCS store client (and the engine) read: the
    key the profile names, not whatever else the machine is logged in as. A context sets it
    when it is made."""
    key = profile.settings.get("credentials") if profile.backend == "gcp" else None
    if key:
        os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(key)


@dataclass
class Context:
    """What every command works with: the dstack home, a profile, its backend and store."""

    profile: Profile
    home: Path = field(default_factory=dstack_home)

    def __post_init__(self) -> None:
        use_key_file(self.profile)  # before anything of the profile's reads credentials

    @classmethod
    def open(cls, profile_name: str | None = None) -> Context:
        """The context of `profile_name` (or the default profile)."""
        home = private_dir(dstack_home())
        return cls(profile=get_profile(home, profile_name), home=home)

    @cached_property
    def backend(self) -> Backend:
        """The profile's backend (imports pulumi on first use)."""
        return load_backend(self.profile, self.home)

    @property
    def listing_cache(self) -> Path:
        """Where listings of this profile's runs and tags are cached."""
        return self.home / "cache" / f"listing-{self.profile.name}.json"

    @property
    def listing_rows(self) -> Path:
        """Where `dstack ps` keeps the rows of this profile's settled runs (`row_cache`)."""
        return self.home / "cache" / f"rows-{self.profile.name}.json"

    @cached_property
    def store(self) -> Store:
        """The profile's store (opening it does not load the backend).

        A cloud profile's bucket is created by its workspace stack on the first run; until
        then the store is an empty view that refuses writes (`PendingStore`), so reading
        commands and `--dry-run` create nothing.
        """
        store = open_store(store_url(self.profile, self.home))
        if self.profile.backend == "local" or \
                workspace_record(self.home, self.profile).exists() or store.available():
            return store
        from dstack.store.pending import PendingStore

        return PendingStore(store.url, self.profile.name)

    def ensure_workspace(self, say: Say = quiet) -> None:
        """Bring up the workspace stack when the profile's store does not exist yet (the
        first run of a cloud profile); the store is the real one afterwards."""
        from dstack.store.pending import PendingStore

        if not isinstance(self.store, PendingStore):
            return
        say(f"creating the workspace of profile {self.profile.name} (stack workspace-"
            f"{self.profile.name}: its bucket and the instances' identity); once per profile")
        with deferred_sigint(say, "Ctrl-C: dstack stops once the workspace stack is up") \
                as interrupted:
            self.backend.ensure_workspace()
        del self.__dict__["store"]
        if interrupted.count:
            raise KeyboardInterrupt
