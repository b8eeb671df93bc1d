"""``qingliang pipelines …`` and ``qingliang finetune …``: run, watch and approve.

Steps run as Ray tasks on the cluster of ``qingliang up`` (``--inline`` runs them in
this process instead, e.g. on a machine without Ray). A run is driven by the process
that starts it; it stops at an approval (``waiting``) and the process exits. Another
command continues it: ``approve`` with the decision, ``resume`` after a crash or a fixed
failure. Nothing is lost when the driving process dies: LangGraph checkpointed every
finished step, and the unfinished one is idempotent.

Example:
    $ qingliang pipelines run -f deploy/examples/pipeline-gov.yaml
    $ qingliang pipelines status
    $ qingliang pipelines logs pl-mf3k2a1-4be0c1 --follow
    $ qingliang pipelines approve pl-mf3k2a1-4be0c1 --reason "eval looks good"
    $ qingliang finetune run -f deploy/examples/finetune-gov.yaml

With ``--server`` (``QINGLIANG_URL``) the ``pipelines`` commands call that platform's
``/v1/pipelines`` routes (its gateway drives the runs; :mod:`._pipelines_remote`), and
``--json`` prints the same records; ``finetune run`` trains on this machine only.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from qingliang.platform.cli import _pipelines_remote, _remote
from qingliang.platform.errors import QingliangError
from qingliang.platform.settings import Settings

pipelines_app = typer.Typer(
    help="Pipelines: govern → fine-tune → evaluate → approve → canary → promote.",
    no_args_is_help=True,
)
finetune_app = typer.Typer(
    help="Fine-tuning jobs (LoRA / QLoRA) as Ray tasks.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)

FileOpt = typer.Option(..., "-f", "--file", help="The manifest file.")
InlineOpt = typer.Option(
    False, "--inline", help="Run the steps in this process instead of as Ray tasks."
)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")
RUNNING_EXIT = {"succeeded": 0, "waiting": 0}


def _fail(exc: BaseException) -> None:
    err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _out(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def _executor(inline: bool) -> Any:
    from qingliang.platform.lifecycle.pipelines.executor import InlineExecutor, RayExecutor

    return InlineExecutor() if inline else RayExecutor(Settings())


def _service(inline: bool) -> Any:
    from qingliang.platform.lifecycle.pipelines.service import PipelineService

    return PipelineService(Settings().home, _executor(inline))


def _load_one(path: Path, kind: str) -> Any:
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.platform.manifests.loader import load_paths

    items = [i for i in load_paths([path]) if i.kind == kind]
    if len(items) != 1:
        raise QingliangError(f"{path}: expected exactly one {kind}, found {len(items)}")
    return items[0].manifest


def _describe(event: dict[str, Any]) -> str:
    """One line for a pipeline or job event."""
    kind = event.get("kind", "")
    step = event.get("step") or "-"
    if kind == "progress":
        where = f"[{step}] step {event.get('train_step')}/{event.get('total_steps')}"
        if event.get("phase") == "eval":
            return f"{where} eval loss {event.get('eval_loss', float('nan')):.4f}"
        return f"{where} loss {event.get('loss', float('nan')):.4f}"
    if kind == "log":
        return f"[{step}] {event.get('message', '')}"
    if kind == "eval":
        parts = [
            f"{k} {v['base']:.3f}→{v['adapter']:.3f}"
            for k, v in event.items()
            if isinstance(v, dict) and "base" in v
        ]
        return f"[{step}] evaluation: " + ", ".join(parts)
    if kind == "waiting":
        return f"[{step}] waiting: {event.get('message', '')}"
    if kind == "failed":
        return f"[{step}] failed: {event.get('error', '')}"
    if kind == "gate":
        return f"[{step}] gate not passed: " + "; ".join(event.get("failures") or [])
    extra = {k: v for k, v in event.items() if k not in ("seq", "at", "step", "kind")}
    return f"[{step}] {kind}" + (f" {json.dumps(extra, ensure_ascii=False)}" if extra else "")


def _print_events(svc: Any, run_id: str, after: int) -> int:
    for ev in svc.runs.events(run_id, after=after):
        _out(_describe(ev.to_dict()))
        after = ev.seq
    return after


def _drive_printing(svc: Any, run_id: str, fn: Any) -> Any:
    """Run ``fn()`` (which drives the run) while printing the run's events."""
    import threading

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["run"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    after = max((e.seq for e in svc.runs.events(run_id)), default=0)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        after = _print_events(svc, run_id, after)
    _print_events(svc, run_id, after)
    if "error" in box:
        raise box["error"]
    return box["run"]


def _remote_follow(out: dict[str, Any], after: int) -> None:
    """Follow a run on the remote platform until it ends or waits, then :func:`_finish`."""
    from types import SimpleNamespace

    run = _pipelines_remote.follow(
        out["id"], lambda e: _out(_describe(e)), until_end=True, after=after
    )
    _finish(SimpleNamespace(**run))


def _finish(run: Any) -> None:
    if run.status == "waiting":
        _out(
            f"run {run.id} waits for approval at step {run.step!r}: "
            f"qingliang pipelines approve {run.id} [--reject] --reason …"
        )
    elif run.status == "failed":
        _out(
            f"run {run.id} failed: {run.error}\n"
            f"fix the cause, then: qingliang pipelines resume {run.id}"
        )
    else:
        _out(f"run {run.id}: {run.status}")
    raise typer.Exit(RUNNING_EXIT.get(run.status, 1))


def _detach(args: list[str]) -> None:
    """Continue in a background process whose output goes to the run's log file."""
    log = Settings().home / "pipelines" / "driver.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        subprocess.Popen(
            [sys.executable, "-m", "qingliang.platform.cli.main", "pipelines", *args],
            stdout=fh,
            stderr=fh,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


@pipelines_app.command("run")
def run(
    file: Path = FileOpt,
    inline: bool = InlineOpt,
    detach: bool = typer.Option(
        False, "--detach", help="Start the run and return; watch it with `pipelines logs`."
    ),
) -> None:
    """Start a run of a Pipeline manifest and drive it until it ends or waits for approval.

    With --server the platform drives it; the files the steps name are read there, in the
    manifest's folder (the same path on the platform's host).
    """
    try:
        pipeline = _load_one(file, "Pipeline")
        if _remote.target() is not None:
            new, after = _pipelines_remote.start(file, pipeline, None)
            _out(f"run {new['id']} of pipeline {new['pipeline']} started")
            if not detach:
                _remote_follow(new, after)
            return
        svc = _service(inline)
        new = svc.start(pipeline, base_dir=file.resolve().parent, actor=_actor())
        _out(f"run {new.id} of pipeline {pipeline.name} started")
        if detach:
            _detach(["resume", new.id, *(["--inline"] if inline else [])])
            return
        _finish(_drive_printing(svc, new.id, lambda: svc.drive(new.id)))
    except QingliangError as exc:
        _fail(exc)


@pipelines_app.command("resume")
def resume(
    run_id: str = typer.Argument(..., help="Run id (pl-…)."),
    inline: bool = InlineOpt,
) -> None:
    """Continue an interrupted or failed run from its last finished step."""
    try:
        if _remote.target() is not None:
            _remote_follow(*_pipelines_remote.act(run_id, "resume", {}))
            return
        svc = _service(inline)
        _finish(_drive_printing(svc, run_id, lambda: svc.drive(run_id)))
    except QingliangError as exc:
        _fail(exc)


@pipelines_app.command("approve")
def approve(
    run_id: str = typer.Argument(..., help="Run id (pl-…)."),
    reject: bool = typer.Option(False, "--reject", help="Refuse (a canary is rolled back)."),
    reason: str = typer.Option("", "--reason", help="Why; kept in the log and the registry."),
    by: str = typer.Option(None, "--by", help="Who decides (default: your user name)."),
    inline: bool = InlineOpt,
) -> None:
    """Approve (or --reject) what a waiting run asks, then drive it on (with --server,
    the decision is recorded as the key's name)."""
    try:
        if _remote.target() is not None:
            body = {"approve": not reject, "reason": reason}
            _remote_follow(*_pipelines_remote.act(run_id, "approve", body))
            return
        svc = _service(inline)
        who = by or _actor()
        _finish(
            _drive_printing(
                svc,
                run_id,
                lambda: svc.approve(run_id, approve=not reject, by=who, reason=reason),
            )
        )
    except QingliangError as exc:
        _fail(exc)


@pipelines_app.command("cancel")
def cancel(
    run_id: str = typer.Argument(..., help="Run id (pl-…)."),
    reason: str = typer.Option("", "--reason", help="Why; kept in the log."),
    by: str = typer.Option(None, "--by", help="Who cancels (default: your user name)."),
    inline: bool = InlineOpt,
) -> None:
    """End a waiting, interrupted or failed run (a live canary is rolled back first)."""
    try:
        if _remote.target() is not None:
            out, _after = _pipelines_remote.act(run_id, "cancel", {"reason": reason})
            _out(f"run {out['id']}: {out['status']} ({out['error']})")
            return
        run = _service(inline).cancel(run_id, by=by or _actor(), reason=reason)
        _out(f"run {run.id}: {run.status} ({run.error})")
    except QingliangError as exc:
        _fail(exc)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


@pipelines_app.command("status")
def status(
    run_id: str = typer.Argument(None, help="One run (default: the latest runs)."),
    pipeline: str = typer.Option(None, "--pipeline", help="Only runs of this pipeline."),
    as_json: bool = JsonOpt,
) -> None:
    """List runs, or show one run's steps and outputs."""
    from qingliang.platform.lifecycle.pipelines.manifest import Pipeline

    try:
        if _remote.target() is not None:
            _remote_status(run_id, pipeline, as_json)
            return
        svc = _service(True)
        if run_id is None:
            runs = svc.list(pipeline)
            if as_json:
                print(_pipelines_remote.dumps([r.to_dict() for r in runs]))
                return
            if not runs:
                _out("no pipeline runs")
                return
            for r in runs:
                _out(
                    f"{r.id}  {r.pipeline:<20} {r.status:<12} {r.step or '-':<12} "
                    f"{_when(r.created)}"
                )
            return
        r = svc.get(run_id)
        if as_json:
            print(_pipelines_remote.dumps(r.to_dict()))
            return
        _out(f"run {r.id} of {r.pipeline}: {r.status} (started {_when(r.created)} by {r.actor})")
        if r.error:
            _out(f"error: {r.error}")
        finished = {e.step for e in svc.runs.events(r.id) if e.kind == "finished"}
        for step in Pipeline.model_validate(r.manifest).spec.steps:
            state = "done" if step.name in finished else ("at" if step.name == r.step else "")
            if state == "at":
                state = r.status
            out = r.outputs.get(step.name)
            summary = _summary(step.type, out) if isinstance(out, dict) else ""
            _out(f"  {step.name:<12} {step.type:<9} {state or 'pending':<12} {summary}")
        if r.waiting:
            _out(f"waiting: {r.waiting.get('message', '')}")
    except QingliangError as exc:
        _fail(exc)


def _remote_status(run_id: str | None, pipeline: str | None, as_json: bool) -> None:
    """``pipelines status`` of the remote platform's runs (the same records)."""
    if run_id is None:
        rows = _pipelines_remote.runs(pipeline)
        if as_json:
            print(_pipelines_remote.dumps(rows))
            return
        for r in rows:
            _out(
                f"{r['id']}  {r['pipeline']:<20} {r['status']:<12} {r['step'] or '-':<12} "
                f"{_when(r['created'])}"
            )
        if not rows:
            _out("no pipeline runs")
        return
    r = _pipelines_remote.run(run_id)
    if as_json:
        print(_pipelines_remote.dumps(r))
        return
    _out(f"run {r['id']} of {r['pipeline']}: {r['status']} (started {_when(r['created'])} by "
         f"{r['actor']})")  # fmt: skip
    if r["error"]:
        _out(f"error: {r['error']}")
    for step, out in (r["outputs"] or {}).items():
        _out(f"  {step:<12} done         {json.dumps(out, ensure_ascii=False)[:200]}")
    if r["step"] and r["step"] not in (r["outputs"] or {}):
        _out(f"  {r['step']:<12} {r['status']}")
    if r["waiting"]:
        _out(f"waiting: {r['waiting'].get('message', '')}")


def _summary(kind: str, out: dict[str, Any]) -> str:
    if kind == "govern":
        warned = "; ".join(f"warning: {w}" for w in out.get("warnings") or [])
        counts = f"{out.get('ref')} ({out.get('train')} train / {out.get('eval')} eval)"
        return counts + (f"; {warned}" if warned else "")
    if kind == "finetune":
        return f"{out.get('adapter')} (job {out.get('job')})"
    if kind == "evaluate":
        m = out.get("metrics") or {}
        parts = [f"{k} {v['adapter']:.3f}" for k, v in m.items() if isinstance(v, dict)]
        return ("passed " if out.get("passed") else "failed ") + ", ".join(parts)
    if kind == "merge":
        q = out.get("quantized") or {}
        return f"{out.get('model')}" + (f" + {q.get('name')}" if q else "")
    if kind == "approval":
        return f"{'approved' if out.get('approved') else 'rejected'} by {out.get('by')}"
    if kind in ("canary", "promote"):
        return json.dumps(out.get("traffic"), ensure_ascii=False)
    return ""


@pipelines_app.command("logs")
def logs(
    run_id: str = typer.Argument(..., help="Run id (pl-…)."),
    follow: bool = typer.Option(False, "--follow", "-F", help="Keep printing new events."),
    as_json: bool = JsonOpt,
) -> None:
    """Print a run's event log (steps, training progress, evaluations, approvals)."""
    from qingliang.platform.lifecycle.pipelines.runs import FINAL

    try:
        if _remote.target() is not None:

            def say(ev: dict[str, Any]) -> None:
                line = json.dumps(ev, ensure_ascii=False)
                _out(line if as_json else f"{_when(ev['at'])} {_describe(ev)}")

            _pipelines_remote.follow(run_id, say, until_end=follow)
            return
        svc = _service(True)
        after = 0
        while True:
            events = svc.runs.events(run_id, after=after)
            for ev in events:
                if as_json:
                    _out(json.dumps(ev.to_dict(), ensure_ascii=False))
                else:
                    _out(f"{_when(ev.at)} {_describe(ev.to_dict())}")
                after = ev.seq
            if not follow:
                return
            state = svc.get(run_id).status
            if state in FINAL or state in ("waiting", "interrupted"):
                return
            time.sleep(1.0)
    except QingliangError as exc:
        _fail(exc)


@finetune_app.command("run")
def finetune_run(
    file: Path = FileOpt,
    inline: bool = InlineOpt,
    name: str = typer.Option(
        None,
        "--name",
        help="Registry job name (default: <metadata.name>-<n>); a killed job "
        "given the same name resumes from its last checkpoint.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Train the adapter of a FineTuneJob manifest and register it (a Ray task on this
    machine; on a remote platform, run a Pipeline with a finetune step instead)."""
    from qingliang.platform.lifecycle.finetune.job import run_job
    from qingliang.platform.lifecycle.pipelines.executor import run_to_result

    try:
        _remote.local_only(
            "finetune run",
            "it trains on this machine's Ray; on a remote platform run a Pipeline with a "
            "finetune step: `qingliang --server URL pipelines run -f PIPELINE.yaml`",
        )
        job = _load_one(file, "FineTuneJob")
        kwargs = {
            "job": job.model_dump(mode="json", by_alias=True),
            "home": str(Settings().home),
            "base_dir": str(file.resolve().parent),
            "job_name": name,
        }

        def show(event: dict[str, Any]) -> None:
            if as_json:
                return
            _out(_describe({**event, "step": file.stem}))

        from qingliang.platform.lifecycle.pipelines.executor import Resources

        res = Resources(cpus=job.spec.resources.cpus, gpus=job.spec.resources.gpus)
        out = run_to_result(_executor(inline), run_job, kwargs, res, on_event=show)
        if as_json:
            _out(json.dumps(out, indent=2, ensure_ascii=False))
        else:
            m = out.get("metrics") or {}
            _out(
                f"{out['adapter']} registered (job {out['job']}, {m.get('steps')} steps, "
                f"loss {m.get('first_train_loss')} → {m.get('final_train_loss')}): "
                f"{out['adapter_path']}"
            )
    except QingliangError as exc:
        _fail(exc)
