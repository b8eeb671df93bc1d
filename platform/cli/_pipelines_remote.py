"""``qingliang pipelines …`` against a remote platform (``--server``): its
``/v1/pipelines`` routes. The runs are driven by the platform's gateway (each step a Ray
task there); this process starts, approves, cancels or resumes them, and follows their
event log until they end or wait.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from qingliang.platform.cli import _remote

#: What a run's status ends following with (``waiting``: for a person's decision).
STOPS = frozenset({"succeeded", "failed", "cancelled", "rejected", "waiting", "interrupted"})


def _run_json(out: dict[str, Any]) -> dict[str, Any]:
    """A run as the API answers it, in ``qingliang pipelines status --json``'s shape."""
    return {k: v for k, v in out.items() if k != "object"}


def runs(pipeline: str | None) -> list[dict[str, Any]]:
    params = {"pipeline": pipeline} if pipeline else None
    with _remote.connect() as api:
        return [_run_json(r) for r in api.get("/v1/pipelines", params=params)["data"]]


def run(run_id: str) -> dict[str, Any]:
    with _remote.connect() as api:
        return _run_json(api.get(f"/v1/pipelines/{quote(run_id, safe='')}"))


def events(api: _remote.Remote, run_id: str, after: int) -> list[dict[str, Any]]:
    path = f"/v1/pipelines/{quote(run_id, safe='')}/events"
    return list(api.get(path, params={"after": after})["data"])


def follow(
    run_id: str, say: Callable[[dict[str, Any]], None], *, until_end: bool, after: int = 0
) -> dict[str, Any]:
    """Print the run's events as they come (``until_end``: until it ends or waits; else
    what is there now); the run as it is then."""
    with _remote.connect() as api:
        while True:
            for event in events(api, run_id, after):
                say(event)
                after = int(event["seq"])
            state = _run_json(api.get(f"/v1/pipelines/{quote(run_id, safe='')}"))
            if not until_end or state["status"] in STOPS:
                for event in events(api, run_id, after):
                    say(event)
                return state
            time.sleep(1.0)


def _last_seq(api: _remote.Remote, run_id: str) -> int:
    return max((int(e["seq"]) for e in events(api, run_id, 0)), default=0)


def start(file: Path, manifest: Any, base_dir: str | None) -> tuple[dict[str, Any], int]:
    """Start a run of ``manifest`` (a Pipeline) there; its files are read at ``base_dir``
    on the platform's host (default: this file's folder, the same path there)."""
    body = {
        "manifest": manifest.model_dump(mode="json", by_alias=True, exclude_none=True),
        "base_dir": base_dir or str(file.resolve().parent),
    }
    with _remote.connect() as api:
        return _run_json(api.post("/v1/pipelines", body)), 0


def act(run_id: str, action: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``approve``, ``resume`` or ``cancel`` a run there; the run and its last event's seq
    before (to follow what comes after)."""
    with _remote.connect() as api:
        after = _last_seq(api, run_id)
        out = api.post(f"/v1/pipelines/{quote(run_id, safe='')}/{action}", body)
    return _run_json(out), after


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
