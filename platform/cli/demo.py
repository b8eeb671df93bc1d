"""``qingliang demo``: the three domain demonstrations on the running platform.

$ qingliang demo list
$ qingliang demo up all            # gov, healthcare, manufacturing and the front desk
$ qingliang demo up gov --approve  # and its adapter trained, approved by you, served
$ qingliang demo down all          # removes what `demo up` created, nothing else

With ``--server`` (``QINGLIANG_URL``) ``up`` and ``down`` run as jobs on that platform
(``POST /v1/demos/{name}/up|down``), their output printed as it comes; ``list`` reads
``GET /v1/demos``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer

from qingliang.platform.cli import _common, _remote
from qingliang.platform.cli._common import console, fail, load_settings
from qingliang.platform.errors import QingliangError

demo_app = typer.Typer(
    help="The domain demonstrations (deploy/domains/): government services, healthcare, "
    "manufacturing, reachable together through one front desk.",
    no_args_is_help=True,
)

NamesArg = typer.Argument(None, help="gov, healthcare, manufacturing, or all (the default).")
DirOpt = typer.Option(
    None, "--dir", help="Where the bundles are (default: deploy/domains, or QINGLIANG_DEMOS_DIR)."
)


@demo_app.command("list")
def list_demos(
    root: Path = DirOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one document on stdout)."),
) -> None:
    """The demonstrations, and which are up on this platform."""
    from qingliang.platform.control import demos

    try:
        if _remote.target() is not None:
            with _remote.connect() as api:
                rows = [_row(d) for d in api.get("/v1/demos")["data"]]
        else:
            up = demos.Managed(load_settings().home / demos.RECORD).read()
            rows = [
                {"name": b.name, "title": b.spec.title, "state": "up" if b.name in up else "down"}
                for b in demos.select(["all"], root)
            ]
    except QingliangError as exc:
        fail(exc)
        return
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for r in rows:
        console.print(f"{r['name']:<14} {r['state']:<5} {r['title']}", highlight=False)


def _row(demo: dict[str, Any]) -> dict[str, Any]:
    return {"name": demo["name"], "title": demo["title"], "state": demo["state"]}


def _remote_job(action: str, names: list[str], body: dict[str, Any]) -> None:
    """Run ``demo ACTION`` on the remote platform as its jobs, one name after another,
    printing each job's output as it comes; QingliangError when one fails."""
    with _remote.connect() as api:
        for name in names:
            job = api.post(f"/v1/demos/{quote(name, safe='')}/{action}", body)
            console.print(f"{action} {name} on {api.url} (job {job['id']})", highlight=False)
            seen = 0
            while True:
                mine = [
                    d["job"] for d in api.get("/v1/demos")["data"]
                    if d.get("job") and d["job"]["id"] == job["id"]
                ]  # fmt: skip
                job = mine[0] if mine else job
                tail = job.get("log_tail") or []
                for line in tail[seen:]:
                    console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
                seen = max(seen, len(tail))
                if job["status"] != "running":
                    break
                time.sleep(1.0)
            if job["status"] != "succeeded":
                raise QingliangError(f"demo {action} {name} on {api.url}: {job['status']}")


@demo_app.command("up")
def up(
    names: list[str] = NamesArg,
    root: Path = DirOpt,
    train: bool = typer.Option(
        True,
        "--train/--no-train",
        help="Train each domain's adapter with its Pipeline (quick profile: minutes on 2 "
        "cores). --no-train: the desks answer with the base model.",
    ),
    approve: bool = typer.Option(
        False,
        "--approve",
        help="Approve the training pipelines' gates yourself (recorded as yours), so the "
        "adapters go live; without it each run waits for `qingliang pipelines approve`.",
    ),
) -> None:
    """Prepare each bundle's data, apply its manifests, sync its knowledge bases, train its
    adapter, and say what to try. With all three up, the front desk routes between them."""
    from qingliang.platform.cli.demo_train import train as train_adapters
    from qingliang.platform.cli.kb import sync_after_apply
    from qingliang.platform.control import demos

    try:
        if _remote.target() is not None:
            _remote_job("up", names or ["all"], {"train": train, "approve": approve})
            return
        settings = load_settings()
        bundles = demos.select(names or ["all"], root)
        ctl = _common.controller(settings)
        demos.up(bundles, ctl, settings.home, sync=sync_after_apply, say=_say)
        if train:
            train_adapters(bundles, settings.home, approve=approve)
        for b in bundles:
            console.print(f"\n[bold]{b.name}[/bold] — {b.spec.title}", highlight=False)
            if b.spec.summary:
                console.print(b.spec.summary.strip(), highlight=False)
            console.print(f"Walkthrough: {b.root / 'README.md'}", highlight=False)
            for line in b.spec.try_:
                console.print(f"  {line}", highlight=False, soft_wrap=True)
            for path in b.training if not train else []:
                console.print(
                    f"  train its adapter: qingliang pipelines run -f {path}", highlight=False
                )
    except QingliangError as exc:
        fail(exc)


@demo_app.command("down")
def down(names: list[str] = NamesArg) -> None:
    """Remove what `demo up` created (graphs, knowledge bases, datasets, the adapter aliases
    and the adapters behind them; open training runs are cancelled); objects you made
    yourself are never touched."""
    from qingliang.platform.cli.demo_train import end_runs
    from qingliang.platform.control import demos

    try:
        if _remote.target() is not None:
            _remote_job("down", names or ["all"], {})
            return
        settings = load_settings()
        end_runs(demos.runs_of(settings.home, names or ["all"]))
        removed = demos.down(
            names or ["all"], _common.controller(settings), settings.home, say=_say
        )
        if not removed:
            console.print("nothing to remove")
    except QingliangError as exc:
        fail(exc)


def _say(line: str) -> None:
    console.print(line, highlight=False)
