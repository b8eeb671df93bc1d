"""Pipelines as durable LangGraph graphs: start, drive, approve, inspect.

:meth:`PipelineService.start` records a run of a ``Pipeline`` manifest;
:meth:`PipelineService.drive` compiles the manifest into a LangGraph ``StateGraph`` (one
node per step, in order, ending early on a gate, a rejection or a rollback) with a
checkpointer (:class:`~qingliang.platform.lifecycle.pipelines.graph.RunGraph`), and
streams it. Every node runs its step as a Ray task through the
:class:`~qingliang.platform.lifecycle.pipelines.executor.Executor` it was given and streams
the step's events into the run's log. LangGraph checkpoints after every node
(``durability="sync"``), so:

* a driver killed mid-step (``kill -9``) leaves the run ``interrupted``; ``drive`` again
  (``qingliang pipelines resume``) re-runs only the unfinished step, which is idempotent
  (fine-tuning continues the same job from its last training checkpoint);
* a step that failed leaves the earlier steps' artifacts and outputs as they were; after
  the cause is fixed, ``drive`` retries that step (a failed fine-tune job under a new name,
  ``<job>-r2``);
* approval steps are LangGraph interrupts: the run waits, with no process, until
  :meth:`approve` resumes it with the decision.

The registry says what the run says: once a run is found failed or interrupted (by
:meth:`get`, :meth:`list` or :meth:`drive`), its unfinished fine-tune job is marked
``failed`` or ``interrupted`` there too. A promote question is rendered on each read, with
the canary's figures as they are then.

Example:
    >>> svc = PipelineService(home, executor=RayExecutor(settings))  # doctest: +SKIP
    >>> run = svc.start(pipeline, base_dir=Path("deploy/examples"), actor="alice")
    >>> svc.drive(run.id).status  # doctest: +SKIP
    'waiting'
    >>> svc.approve(run.id, approve=True, by="bob", reason="metrics ok").status  # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import logging
import secrets
import time
from pathlib import Path
from typing import Any, Literal

from qingliang.platform.errors import Conflict, Forbidden, QingliangError, ResolveError
from qingliang.platform.lifecycle.pipelines.executor import Executor
from qingliang.platform.lifecycle.pipelines.graph import (
    PIPELINES_DIR,
    RunGraph,
    output_of,
    promote_question,
)
from qingliang.platform.lifecycle.pipelines.manifest import Pipeline
from qingliang.platform.lifecycle.pipelines.runs import FINAL, Run, RunStore

logger = logging.getLogger(__name__)

#: Registry job statuses of a fine-tune job that has not ended.
OPEN_JOB = ("pending", "running", "interrupted")
#: How long a driver waits for a run's lock held for a moment by a status read.
LOCK_WAIT_S = 5.0


def new_run_id() -> str:
    """Time-ordered: ``pl-<ms since epoch, base 36>-<random>``."""
    ms = int(time.time() * 1000)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while ms:
        ms, r = divmod(ms, 36)
        out = digits[r] + out
    return f"pl-{out}-{secrets.token_hex(3)}"


class PipelineService:
    """Runs pipelines of one data directory.

    Args:
        home: the data directory (datasets, registry, adapters, pipeline runs).
        executor: where steps run (``RayExecutor`` in production).
    """

    def __init__(self, home: Path, executor: Executor) -> None:
        self.home = Path(home)
        self.executor = executor
        self.root = self.home / PIPELINES_DIR
        self.runs = RunStore(self.root)
        self.graph = RunGraph(self.home, executor, self.runs)

    # -- runs -------------------------------------------------------------------------
    def start(self, pipeline: Pipeline, *, base_dir: Path, actor: str) -> Run:
        """Record a new run (status ``queued``); files it names are checked now."""
        base = Path(base_dir).resolve()
        for step in pipeline.spec.steps:
            for attr in ("dataset", "job"):
                value = getattr(step, attr, None)
                if value is not None and not (base / value).is_file():
                    raise ResolveError(
                        f"pipeline {pipeline.name}: step {step.name!r}: {attr} file "
                        f"{base / value} does not exist"
                    )
        manifest = pipeline.model_dump(mode="json", by_alias=True)
        return self.runs.create(new_run_id(), pipeline.name, manifest, str(base), actor)

    def get(self, run_id: str) -> Run:
        """The run as it stands now (see :meth:`list`)."""
        run = self.runs.get(run_id)
        self._settle([run])
        return self._current(run)

    def list(self, pipeline: str | None = None, limit: int = 50) -> builtins.list[Run]:
        """Runs, newest first, as they stand now: the fine-tune jobs of a failed or
        interrupted run are marked so in the registry (unless a driver holds the run),
        and a promote question gives the canary's figures as of this read."""
        runs = self.runs.list(pipeline, limit)
        self._settle(runs)
        return [self._current(r) for r in runs]

    # -- what a read shows ------------------------------------------------------------
    def _settle(self, runs: builtins.list[Run]) -> None:
        """Bring the registry's jobs of failed and interrupted runs in line with them."""
        from qingliang.platform.lifecycle.registry import Registry

        ended = [r for r in runs if r.status in ("failed", "interrupted")]
        if not ended:
            return
        try:
            with Registry(home=self.home) as reg:
                jobs = [(j.name, j.status) for j in reg.list_jobs() if j.status in OPEN_JOB]
            for run in ended:
                unfinished = _unfinished(run.status)
                if not any(n.startswith(f"{run.id}-") and st in unfinished for n, st in jobs):
                    continue
                try:
                    with self.runs.lock(run.id):
                        current = self.runs.get(run.id, holder=True)
                        if current.status == "failed" or current.status == "interrupted":
                            self._settle_jobs(current.id, current.status, current.error)
                except Conflict:  # a driver took it meanwhile: the registry is its business
                    continue
        except QingliangError:  # a read still shows the runs; the next one settles them
            logger.warning("cannot bring the registry's jobs in line with the runs", exc_info=True)

    def _settle_jobs(
        self, run_id: str, status: Literal["failed", "interrupted"], error: str | None = None
    ) -> None:
        """Mark the run's unfinished fine-tune jobs ``status``: what the registry says then
        matches the run, and a resume retries a failed job under a new name
        (``<job>-r2``) but continues an interrupted one from its last checkpoint. Call it
        holding the run's lock."""
        from qingliang.platform.lifecycle.registry import Registry

        unfinished = _unfinished(status)
        why = None
        if status == "failed":
            why = (f"pipeline run {run_id} failed" + (f": {error}" if error else ""))[:2000]
        with Registry(home=self.home) as reg:
            for job in reg.list_jobs():
                if job.name.startswith(f"{run_id}-") and job.status in unfinished:
                    reg.set_job_status(job.name, status, error=why)
                    logger.info("pipeline run %s: job %s marked %s", run_id, job.name, status)

    def _current(self, run: Run) -> Run:
        """``run`` with a promote question's canary figures as they are now."""
        waiting = run.waiting
        if run.status != "waiting" or not waiting or waiting.get("kind") != "promote":
            return run
        canary = waiting.get("canary")
        if not isinstance(canary, dict):
            return run  # asked before the question kept its canary
        import dataclasses

        message, figures = promote_question(self.home, str(waiting.get("adapter")), canary)
        return dataclasses.replace(run, waiting={**waiting, "message": message, "figures": figures})

    def check_approval(self, run_id: str, *, approve: bool, by: str) -> Run:
        """The run, if ``by`` may answer the approval it waits for; else raise.

        Raises:
            Conflict: the run is not waiting for an approval.
            Forbidden: ``by`` started the run and its step does not allow self-approval.
        """
        run = self.runs.get(run_id)
        if run.status != "waiting" or not run.waiting:
            raise Conflict(
                f"pipeline run {run_id} is {run.status}, not waiting for an approval",
                param="run",
            )
        if approve and by == run.actor and not _allows_self_approval(run.manifest, run.step):
            raise Forbidden(
                f"pipeline run {run_id} was started by {by}; someone else must approve it "
                "(or its step may set allow_self_approval: true)",
                param="run",
                code="self_approval",
            )
        return run

    def approve(self, run_id: str, *, approve: bool, by: str, reason: str = "") -> Run:
        """Answer the approval the run waits for, then drive it on (see
        :meth:`check_approval` for who may)."""
        run = self.check_approval(run_id, approve=approve, by=by)
        decision = {"approve": bool(approve), "by": by, "reason": reason}
        self.runs.event(run_id, run.step, "decision", decision)
        return self.drive(run_id, decision=decision)

    def cancel(self, run_id: str, *, by: str, reason: str = "") -> Run:
        """End a run that is not being driven: waiting, interrupted or failed.

        A canary the run put in place is rolled back first (the deployment serves what it
        served before); a fine-tune job it left running is marked cancelled.
        """
        from qingliang.platform.lifecycle.pipelines import steps as impl
        from qingliang.platform.lifecycle.registry import Registry

        self.runs.get(run_id)  # an unknown run is a 404 before any lock file is made
        with self.runs.lock(run_id, wait_s=LOCK_WAIT_S):
            run = self.runs.get(run_id, holder=True)
            if run.status not in ("queued", "waiting", "interrupted", "failed"):
                raise Conflict(
                    f"pipeline run {run_id} is {run.status}; only waiting, interrupted or "
                    "failed runs can be cancelled",
                    param="run",
                )
            why = f"cancelled by {by}" + (f": {reason}" if reason else "")
            self.runs.event(run_id, run.step, "cancel", {"by": by, "reason": reason})
            outputs = run.outputs
            canary = output_of(outputs, "canary", run, required=False)
            promoted = output_of(outputs, "promote", run, required=False)
            if canary is not None and promoted is None:
                trained = output_of(outputs, "finetune", run)
                assert trained is not None
                kwargs = {
                    "home": str(self.home),
                    "canary": canary,
                    "base_model": trained["base_model"],
                    "reason": why,
                }
                self.graph.run_task(run, "cancel", impl.rollback_step, kwargs, cpus=0)
            with Registry(home=self.home) as reg:
                for job in reg.list_jobs():
                    if job.name.startswith(f"{run_id}-") and job.status in OPEN_JOB:
                        reg.set_job_status(job.name, "cancelled", error=why)
            self.runs.update(run_id, status="cancelled", waiting=None, error=why)
            self.runs.event(run_id, None, "cancelled", {"by": by, "reason": reason})
            return self.runs.get(run_id)

    # -- driving ----------------------------------------------------------------------
    def drive(self, run_id: str, *, decision: dict[str, Any] | None = None) -> Run:
        """Run (or resume) until the end, a failure or an approval; return the run."""
        with self.runs.lock(run_id, wait_s=LOCK_WAIT_S):
            run = self.runs.get(run_id, holder=True)
            if run.status in FINAL and run.status != "failed":
                return run
            if run.status == "waiting" and decision is None:
                return run
            if run.status == "failed" or run.status == "interrupted":
                # A failed job is retried under a new name, an interrupted one continued.
                self._settle_jobs(run_id, run.status, run.error)
            pipeline = Pipeline.model_validate(run.manifest)
            with self.graph.checkpointer(pipeline) as saver:
                graph = self.graph.compile(pipeline, run, saver)
                config: dict[str, Any] = {"configurable": {"thread_id": run_id}}
                snapshot = graph.get_state(config)
                if decision is not None:
                    from langgraph.types import Command

                    inp: Any = Command(resume=decision)
                elif snapshot.next:
                    inp = None  # resume after a crash or a failed step
                    self.runs.event(run_id, snapshot.next[0], "resumed", {})
                else:
                    inp = {"outputs": {}, "outcome": ""}
                self.runs.update(run_id, status="running", waiting=None, error=None)
                try:
                    for _ in graph.stream(inp, config, stream_mode="updates", durability="sync"):
                        pass
                except Exception as exc:
                    if not isinstance(exc, QingliangError):
                        logger.exception("pipeline run %s failed", run_id)
                    return self._failed(run_id, exc)
                snapshot = graph.get_state(config)
                values = snapshot.values or {}
                self.runs.update(run_id, outputs=values.get("outputs") or {})
                interrupts = [i for t in snapshot.tasks for i in t.interrupts]
                if interrupts:
                    waiting = dict(interrupts[0].value)
                    self.runs.update(run_id, status="waiting", waiting=waiting)
                    self.runs.event(run_id, waiting.get("step"), "waiting", waiting)
                else:
                    status = values.get("outcome") or "succeeded"
                    self.runs.update(run_id, status=status, step=None)
                    self.runs.event(run_id, None, status, {})
            return self.runs.get(run_id)

    def _failed(self, run_id: str, exc: Exception) -> Run:
        """End the run ``failed`` with ``exc``; a fine-tune job it left unfinished (its
        worker was killed, say) is marked failed too. Call it holding the run's lock."""
        message = str(exc) if isinstance(exc, QingliangError) else f"{type(exc).__name__}: {exc}"
        step = self.runs.get(run_id).step
        self.runs.event(run_id, step, "failed", {"error": message})
        self.runs.update(run_id, status="failed", error=message)
        try:
            self._settle_jobs(run_id, "failed", message)
        except QingliangError:  # the run's failure is recorded; a later read settles it
            logger.warning("pipeline run %s: cannot mark its jobs failed", run_id, exc_info=True)
        return self.runs.get(run_id)


def _unfinished(run_status: str) -> tuple[str, ...]:
    """The job statuses a run's job may not keep once the run is ``run_status``."""
    return ("pending", "running") if run_status == "interrupted" else OPEN_JOB


def _allows_self_approval(manifest: dict, step_name: str | None) -> bool:
    """Whether the waiting step of a stored run lets the run's starter approve it."""
    steps = (manifest.get("spec") or {}).get("steps") or []
    for step in steps:
        if isinstance(step, dict) and (step.get("name") or step.get("type")) == step_name:
            return bool(step.get("allow_self_approval", False))
    return False
