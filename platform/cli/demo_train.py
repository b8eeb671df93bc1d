"""``qingliang demo up``'s training: each bundle's Pipeline (govern → fine-tune → evaluate →
approve → canary → promote) run on the platform, its domain adapter put behind the alias
the desks call (``qwen-coder:gov``).

Without ``--approve`` a run stops at its first approval gate, as any pipeline does, and
the command says how to approve it; with it, the person running ``demo up`` approves both
gates (recorded as theirs, with the reason ``demo up --approve``). ``demo down`` cancels
the runs still open (a live canary is rolled back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qingliang.platform.cli import pipelines as pl
from qingliang.platform.cli._common import console
from qingliang.platform.errors import QingliangError

#: What the operator's approval says in the run's history and the registry.
REASON = "approved by the operator with `qingliang demo up --approve`"


def train(bundles: list[Any], home: Path, *, approve: bool) -> list[Any]:
    """Run every bundle's training pipelines; returns the runs as they ended or wait."""
    from qingliang.platform.control import demos

    svc = pl._service(False)
    who = pl._actor()
    runs = []
    for b in bundles:
        for path in b.training:
            pipeline = pl._load_one(path, "Pipeline")
            console.print(
                f"\n[bold]{b.name}[/bold]: training its adapter ({pipeline.name}, quick "
                "profile; the manifest's comments say what a full run uses)",
                highlight=False,
            )
            new = svc.start(pipeline, base_dir=path.resolve().parent, actor=who)
            demos.record_run(home, b.name, new.id)
            run = _drive(svc, new.id, who, approve, b.name)
            _say_where(b.name, run)
            runs.append(run)
    return runs


def _drive(svc: Any, run_id: str, who: str, approve: bool, domain: str) -> Any:
    """Drive run ``run_id`` until it ends, or waits for a person (``approve``: the operator
    approves each gate as it comes)."""
    run = pl._drive_printing(svc, run_id, lambda: svc.drive(run_id))
    while approve and run.status == "waiting":
        step = run.step
        run = pl._drive_printing(
            svc, run_id, lambda: svc.approve(run_id, approve=True, by=who, reason=REASON)
        )
        console.print(f"{domain}: {step} approved by {who}", highlight=False)
    return run


def _say_where(domain: str, run: Any) -> None:
    if run.status == "succeeded":
        console.print(f"{domain}: run {run.id} succeeded; {_served(run)}", highlight=False)
    elif run.status == "waiting":
        console.print(
            f"{domain}: run {run.id} waits for your approval at {run.step!r} "
            f"(qingliang pipelines status {run.id} shows the evaluation): "
            f"qingliang pipelines approve {run.id} --reason …",
            highlight=False,
        )
    else:
        console.print(
            f"{domain}: run {run.id} {run.status}: {run.error or ''} — "
            f"see qingliang pipelines logs {run.id}",
            highlight=False,
        )


def _served(run: Any) -> str:
    canary = (run.outputs or {}).get("canary") or {}
    if not canary:
        return "its adapter is trained"
    where = f"{canary.get('deployment')}:{canary.get('alias')}"
    return f"{where} now answers with {canary.get('loaded_as')} ({canary.get('adapter')})"


def end_runs(run_ids: list[str]) -> None:
    """Cancel the demo's training runs that are still open (waiting, interrupted or
    failed); a live canary is rolled back first. Finished runs are left as history."""
    if not run_ids:
        return
    svc = pl._service(False)
    for run_id in run_ids:
        try:
            run = svc.runs.get(run_id)
            if run.status in ("waiting", "interrupted", "failed", "running"):
                svc.cancel(run_id, by=pl._actor(), reason="qingliang demo down")
                console.print(f"pipeline run {run_id} cancelled", highlight=False)
        except QingliangError as exc:
            console.print(f"pipeline run {run_id}: {exc}", highlight=False)
