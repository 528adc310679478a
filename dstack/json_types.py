"""The one type of JSON whose shape is only known at run time.

mypy runs with `disallow_any_explicit`: the `Any` of JSON is said once, here, with its reason.
Code that only passes JSON values on takes `object` (or `Mapping[str, object]`), and where the
shape of a document is dstack's own and cheap to spell it is a `TypedDict`
(`dstack.run.listing.RunSummary`, `dstack.run.audit.AuditEntry`, ...).
"""

from __future__ import annotations

from typing import Any

# Read back from JSON or YAML, a document's fields have the shapes its schema (`RunRecord`,
# `Tag`, a backend's settings) gives them, which mypy cannot see: they are read by key.
JsonDoc = dict[str, Any]  # type: ignore[explicit-any]  # JSON: field types known at run time only
"""A JSON object: a document of the store (`runs/<run>/run.json`, a tag, a stack's record), the
listing cache, a profile's settings, a workflow's fields, a pydantic dump or a JSON Schema."""
