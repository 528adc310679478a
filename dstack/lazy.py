"""The one lazy loader behind dstack's registries (providers, backends, stores, credential
checks): each maps a lowercase name to a `"module:attribute"` target, imported on first use
so that a command imports only what it uses. Each registry says itself what is wrong with a
name it does not know."""

from __future__ import annotations

import importlib
from typing import TypeVar

T = TypeVar("T")


def load_target(target: str) -> object:
    """The attribute a `"module:attribute"` target names (imported now)."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"a registry target is 'module:attribute', not {target!r}")
    return getattr(importlib.import_module(module_name), attribute)


def load_class(target: str, base: type[T]) -> type[T]:
    """The class `target` names, checked to be `base` or a subclass of it."""
    found = load_target(target)
    if not (isinstance(found, type) and issubclass(found, base)):
        raise TypeError(f"{target} is not a subclass of {base.__qualname__}")
    return found
