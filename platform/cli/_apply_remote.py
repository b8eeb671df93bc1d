"""``apply``, ``diff`` and ``delete`` against a remote platform (``--server``).

The manifests are checked here first (validation is pure: a bad field is named in its
file before anything is sent; a relative path, which cannot resolve on the platform's
nodes, is refused by its field), then their text goes to ``POST /v1/manifests/apply``,
where the platform's own Controller applies it. Waiting is polling
``GET /v1/manifests/applied`` until each deployment applied is RUNNING; knowledge bases
are synced with ``POST /v1/knowledge/{kb}/sync``, as a local apply does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from qingliang.platform.cli import _remote
from qingliang.platform.cli._common import console, status_printer
from qingliang.platform.errors import ClusterError, QingliangError

log = logging.getLogger(__name__)

#: Statuses a deployment does not leave by waiting.
FAILED = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})


def manifest_text(files: Iterable[Path]) -> str:
    """The text of every manifest file named (folders: their ``*.yaml``), checked here
    first: a bad manifest raises ManifestError naming its file and field."""
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401  (every kind)
    from qingliang.platform.manifests.loader import load_paths, manifest_files

    paths = list(files)
    load_paths(paths)
    texts = []
    for f in (f for p in paths for f in manifest_files(p)):
        text = f.read_text(encoding="utf-8")
        relative = relative_paths(text)
        if relative:
            raise QingliangError(
                f"{f}: {', '.join(relative)}: a relative path cannot be read by a remote "
                "platform (it resolves on the platform's nodes, not next to this file); "
                "give the absolute path there"
            )
        texts.append(text)
    return "\n---\n".join(t.strip("\n") for t in texts) + "\n"


#: Fields that hold a file or folder path (anything not absolute is relative).
PATH_KEYS = frozenset({"path", "folder", "file", "database", "tokenizer"})
#: Fields that hold a path or a name (``packaged:…``, ``org/model``): relative only with
#: a leading ``.`` or ``~``.
SOURCE_KEYS = frozenset({"source", "adapters"})


def relative_paths(text: str) -> list[str]:
    """The fields of a manifest file's documents that hold a relative path, as
    ``spec.sources[0].path``."""
    import yaml

    found: list[str] = []

    def walk(node: object, where: str, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                child = f"{where}.{k}" if where else str(k)
                walk(v, child, "adapters" if key == "adapters" else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]", key)
        elif isinstance(node, str) and node:
            path = key in PATH_KEYS and not node.startswith(("/", "~")) and "://" not in node
            if path or (key in SOURCE_KEYS and node.startswith((".", "~"))):
                found.append(f"{where} {node!r}")

    for doc in yaml.safe_load_all(text):
        walk(doc, "", "")
    return found


def apply(files: list[Path], *, wait: bool, timeout_s: float, sync: bool) -> None:
    """``qingliang apply`` on the remote platform (see the module docstring)."""
    text = manifest_text(files)
    with _remote.connect() as api:
        changes = api.post("/v1/manifests/apply", {"yaml": text})["changes"]
        for c in changes:
            extra = f" ({', '.join(c['fields'])})" if c["fields"] else ""
            console.print(f"{c['kind']}/{c['name']}: {c['action']}{extra}", highlight=False)
        deployments = [c["name"] for c in changes if c["kind"] == "ModelDeployment"]
        if wait and deployments:
            wait_running(api, deployments, timeout_s)
        kbs = [c["name"] for c in changes if c["kind"] == "KnowledgeBase"]
        if sync and kbs:
            from qingliang.platform.cli.kb import print_sync

            for name in kbs:
                with console.status(f"syncing {name} on {api.url} ..."):
                    out = api.post(f"/v1/knowledge/{quote(name, safe='')}/sync", {})
                print_sync(out)


def wait_running(api: _remote.Remote, names: list[str], timeout_s: float) -> None:
    """Poll the applied deployments until ``names`` are RUNNING, printing each change.

    Raises:
        ClusterError: one failed, or they were not all RUNNING within ``timeout_s``.
    """
    on_status = status_printer()
    deadline = time.monotonic() + timeout_s
    while True:
        rows = {r["name"]: r for r in api.get("/v1/manifests/applied")["data"]}
        pending = []
        for name in names:
            row = rows.get(name) or {"status": "NOT_DEPLOYED", "message": ""}
            on_status(name, row["status"], row["message"])
            if row["status"] in FAILED:
                raise ClusterError(f"{name}: {row['status']}: {row['message'][:500]}")
            if row["status"] != "RUNNING":
                pending.append(name)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ClusterError(
                f"not RUNNING after {timeout_s:g} s on {api.url}: {', '.join(pending)}"
            )
        time.sleep(1.0)


def diff(files: list[Path]) -> None:
    """``qingliang diff`` against the remote platform's applied manifests."""
    text = manifest_text(files)
    with _remote.connect() as api:
        out = api.post("/v1/manifests/diff", {"yaml": text})
    if not out["ok"]:
        raise QingliangError(
            "; ".join(f"{e.get('path') or 'manifest'}: {e['message']}" for e in out["errors"])
        )
    for c in out["changes"]:
        extra = "".join(f"\n    ~ {f}" for f in c["fields"])
        console.print(f"{c['kind']}/{c['name']}: {c['action']}{extra}", highlight=False)


def delete(targets: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Delete each ``kind: [names]`` on the remote platform; what was deleted."""
    done = []
    with _remote.connect() as api:
        for kind, names in targets.items():
            for name in names:
                api.delete(f"/v1/deployments/{quote(kind, safe='')}/{quote(name, safe='')}")
                done.append((kind, name))
    return done
