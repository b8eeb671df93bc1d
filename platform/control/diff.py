"""What changed between a stored manifest body and a new one, and what kind of update it is.

A change to a deployment's adapters, canary shares or registry refs only is a lightweight
update: adapters reload through Serve's ``user_config``; traffic and refs are read by the
gateway and never reach the replicas. Anything else restarts the replicas.

Example:
    >>> old = {"spec": {"lora": {"adapters": {}}}}
    >>> changed_paths(old, {"spec": {"lora": {"adapters": {"a": "/x"}}}})
    ['spec.lora.adapters.a']
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qingliang.platform.manifests.loader import Loaded
from qingliang.serving.traffic import entry_of_body


@dataclass(frozen=True)
class Change:
    """What `diff` / `apply` found for one manifest."""

    kind: str
    name: str
    action: str  # create | update | adapters | unchanged
    fields: tuple[str, ...] = ()
    source: str = ""


def normal(item: Loaded) -> dict:
    """A manifest as it is stored: its JSON form, keys by alias."""
    return item.manifest.model_dump(mode="json", by_alias=True)


def deep_copy(body: dict) -> dict:
    """A copy of a stored (JSON) body that shares nothing with it."""
    return json.loads(json.dumps(body))


def lora_active(body: dict) -> bool:
    """``LoraOptions.active`` on a stored body: whether the replicas run with LoRA."""
    return entry_of_body("", body).lora_enabled


#: Fields whose change is a lightweight update: adapters reload through user_config;
#: traffic and refs are read by the gateway and never reach the replicas.
LIGHTWEIGHT = ("spec.lora.adapters", "spec.lora.traffic", "spec.lora.refs", "spec.lora.aliases")


def adapters_only(old: dict, new: dict, changed: Iterable[str]) -> bool:
    """Whether a change is a lightweight update: adapters, traffic and refs only, LoRA
    staying on or off."""
    paths = list(changed)
    return (
        bool(paths)
        and all(
            p == "spec.lora.enabled" or any(p == f or p.startswith(f + ".") for f in LIGHTWEIGHT)
            for p in paths
        )
        and lora_active(old) == lora_active(new)
    )


#: Fields that map names a user chose to mappings: an added empty entry is a change.
NAMED_MAPPINGS = ("spec.lora.aliases",)


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted paths of the leaves that differ between ``old`` and ``new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                # A field added to the schema since a body was stored reads as its empty
                # default there: not a change. (A key of a name → mapping field, such as an
                # alias with no adapter yet, is data, not a schema field.)
                value = old.get(key) if key in old else new.get(key)
                if value != {} or prefix in NAMED_MAPPINGS:
                    out.append(path)
            else:
                out.extend(changed_paths(old[key], new[key], path))
        return out
    return [] if old == new else [prefix]
