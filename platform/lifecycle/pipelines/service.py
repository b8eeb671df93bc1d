"""Pipelines as durable LangGraph graphs: start, drive, approve, inspect.

:meth:`PipelineService.start` records a run of a ``Pipeline`` manifest;
:meth:`PipelineService.drive` compiles the manifest into a LangGraph ``StateGraph`` (one
node per step, in order, ending early on a gate, a rejection or a rollback) with a
checkpointer, and streams it. Every node runs its step as a Ray task through the
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
import contextlib
import logging
import operator
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from qingliang.platform.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    QingliangError,
    ResolveError,
)
from qingliang.platform.lifecycle.pipelines.executor import Executor, Resources, run_to_result
from qingliang.platform.lifecycle.pipelines.manifest import (
    ApprovalStep,
    CanaryStep,
    EvaluateStep,
    FinetuneStep,
    GovernStep,
    MergeStep,
    Pipeline,
    PromoteStep,
)
from qingliang.platform.lifecycle.pipelines.runs import FINAL, Run, RunStore

logger = logging.getLogger(__name__)

PIPELINES_DIR = "pipelines"
CHECKPOINTS = "checkpoints.sqlite"
#: Registry job statuses of a fine-tune job that has not ended.
OPEN_JOB = ("pending", "running", "interrupted")
#: How long a driver waits for a run's lock held for a moment by a status read.
LOCK_WAIT_S = 5.0


def _merge(a: dict | None, b: dict | None) -> dict:
    return {**(a or {}), **(b or {})}


class State(TypedDict, total=False):
    outputs: Annotated[dict[str, Any], _merge]
    outcome: Annotated[str, operator.add]


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

        message, figures = _promote_question(self.home, str(waiting.get("adapter")), canary)
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
            canary = _output_of(outputs, "canary", run, required=False)
            promoted = _output_of(outputs, "promote", run, required=False)
            if canary is not None and promoted is None:
                trained = _output_of(outputs, "finetune", run)
                assert trained is not None
                kwargs = {
                    "home": str(self.home),
                    "canary": canary,
                    "base_model": trained["base_model"],
                    "reason": why,
                }
                self._exec(run, "cancel", impl.rollback_step, kwargs, cpus=0)
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
            with self._checkpointer(pipeline) as saver:
                graph = self._compile(pipeline, run, saver)
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

    @contextlib.contextmanager
    def _checkpointer(self, pipeline: Pipeline) -> Iterator[Any]:
        spec = pipeline.spec.checkpointer
        if spec.kind == "postgres":
            from langgraph.checkpoint.postgres import PostgresSaver

            assert spec.dsn_env is not None
            dsn = os.environ.get(spec.dsn_env)
            if not dsn:
                raise ResolveError(
                    f"pipeline {pipeline.name}: spec.checkpointer.dsn_env: environment "
                    f"variable {spec.dsn_env} is not set"
                )
            try:
                with PostgresSaver.from_conn_string(dsn) as saver:
                    saver.setup()
                    yield saver
            except QingliangError:
                raise
            except Exception as exc:
                raise ResolveError(
                    f"pipeline {pipeline.name}: cannot use the PostgreSQL checkpointer in "
                    f"{spec.dsn_env}: {type(exc).__name__}"
                ) from None
            return
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(self.root / CHECKPOINTS, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            yield SqliteSaver(conn)
        finally:
            conn.close()

    def _compile(self, pipeline: Pipeline, run: Run, saver: Any) -> Any:
        from langgraph.graph import END, START, StateGraph

        graph = StateGraph(State)
        steps = pipeline.spec.steps
        for step in steps:
            graph.add_node(step.name, self._node(step, run))  # type: ignore[call-overload]
        graph.add_edge(START, steps[0].name)
        for i, step in enumerate(steps):
            nxt = steps[i + 1].name if i + 1 < len(steps) else END

            def route(state: State, nxt: str = nxt) -> str:
                return END if state.get("outcome") else nxt

            graph.add_conditional_edges(step.name, route, [nxt] if nxt == END else [nxt, END])
        return graph.compile(checkpointer=saver)

    def _node(self, step: Any, run: Run) -> Callable[[State], dict]:
        def node(state: State) -> dict:
            outputs = dict(state.get("outputs") or {})
            self.runs.update(run.id, step=step.name)
            self.runs.event(run.id, step.name, "started", {"type": step.type})
            started = time.monotonic()
            result, outcome = self._run_step(step, run, outputs)
            self.runs.event(
                run.id,
                step.name,
                "finished",
                {"seconds": round(time.monotonic() - started, 3), "outcome": outcome or "ok"},
            )
            outputs[step.name] = result
            self.runs.update(run.id, outputs=outputs)
            return {"outputs": {step.name: result}, "outcome": outcome}

        return node

    def _emit(self, run: Run, step: str) -> Callable[[dict[str, Any]], None]:
        def emit(event: dict[str, Any]) -> None:
            data = {k: v for k, v in event.items() if k != "kind"}
            self.runs.event(run.id, step, str(event.get("kind", "log")), data)

        return emit

    def _exec(
        self, run: Run, step: str, fn: Any, kwargs: dict, cpus: float = 1.0, gpus: float = 0.0
    ) -> Any:
        """Run one step function as a task. Control-plane steps (canary, promote, roll
        back: REST calls to Ray Serve) reserve no CPU, so they never queue behind replicas."""
        return run_to_result(
            self.executor,
            fn,
            kwargs,
            Resources(cpus=cpus, gpus=gpus),
            on_event=self._emit(run, step),
        )

    def _run_step(self, step: Any, run: Run, outputs: dict[str, Any]) -> tuple[Any, str]:
        from qingliang.platform.lifecycle.pipelines import steps as impl

        home = str(self.home)
        base = Path(run.base_dir)
        if isinstance(step, GovernStep):
            kwargs = {"home": home, "dataset_file": str(base / step.dataset), "actor": run.id}
            return self._exec(run, step.name, impl.govern_step, kwargs), ""
        if isinstance(step, FinetuneStep):
            return self._finetune(step, run, outputs), ""
        trained = _output_of(outputs, "finetune", run)
        assert trained is not None
        if isinstance(step, EvaluateStep):
            return self._evaluate(step, run, trained)
        if isinstance(step, MergeStep):
            kwargs = {
                "home": home,
                "adapter": trained["adapter"],
                "adapter_path": trained["adapter_path"],
                "base_model": trained["base_model"],
                "base_model_path": trained["base_model_path"],
                "quantize": step.quantize,
            }
            return self._exec(run, step.name, impl.merge_step, kwargs), ""
        if isinstance(step, ApprovalStep):
            return self._approval(step, run, trained, outputs)
        if isinstance(step, CanaryStep):
            before_key = f"{step.name}:before"
            stash = self.runs.get(run.id).outputs.get(before_key)
            kwargs = {
                "home": home,
                "deployment": step.deployment,
                "adapter": trained["adapter"],
                "adapter_path": trained["adapter_path"],
                "base_model": trained["base_model"],
                "share": step.share,
                "before": stash,
            }
            if stash is None:
                state = impl.deployment_state(impl.controller(home), step.deployment)
                kwargs["before"] = state["traffic"]
                self.runs.update(run.id, outputs={**outputs, before_key: state["traffic"]})
            return self._exec(run, step.name, impl.canary_step, kwargs, cpus=0), ""
        if isinstance(step, PromoteStep):
            return self._promote(step, run, trained, outputs)
        raise BadRequest(f"unknown step type {step.type!r}")

    def _finetune(self, step: FinetuneStep, run: Run, outputs: dict[str, Any]) -> Any:
        from qingliang.platform.lifecycle.finetune.job import run_job
        from qingliang.platform.lifecycle.finetune.manifest import FineTuneJob
        from qingliang.platform.manifests.loader import load_paths

        path = Path(run.base_dir) / step.job
        items = [i for i in load_paths([path]) if isinstance(i.manifest, FineTuneJob)]
        if len(items) != 1:
            raise ResolveError(f"finetune: {path} must hold exactly one FineTuneJob")
        job = items[0].manifest
        assert isinstance(job, FineTuneJob)
        governed = _output_of(outputs, "govern", run, required=False)
        version = None
        if governed is not None:
            if governed["dataset"] != job.spec.data.dataset:
                raise BadRequest(
                    f"finetune: job {job.name} trains on dataset {job.spec.data.dataset!r} but "
                    f"the govern step cut {governed['dataset']!r}",
                    param="spec.data.dataset",
                )
            version = governed["version"]
        kwargs = {
            "job": job.model_dump(mode="json", by_alias=True),
            "home": str(self.home),
            "base_dir": str(path.resolve().parent),
            "job_name": self._job_name(f"{run.id}-{step.name}"),
            "dataset_version": version,
        }
        cpus = step.cpus or job.spec.resources.cpus
        return self._exec(run, step.name, run_job, kwargs, cpus=cpus, gpus=job.spec.resources.gpus)

    def _job_name(self, base: str) -> str:
        """``base``, or ``base-r<n>`` after failed attempts (a failed job stays failed)."""
        from qingliang.platform.errors import NotFound
        from qingliang.platform.lifecycle.registry import Registry

        with Registry(home=self.home) as reg:
            for attempt in range(1, 100):
                name = base if attempt == 1 else f"{base}-r{attempt}"
                try:
                    job = reg.get_job(name)
                except NotFound:
                    return name
                if job.status not in ("failed", "cancelled"):
                    return name
        raise Conflict(f"{base}: too many failed attempts")

    def _evaluate(self, step: EvaluateStep, run: Run, trained: dict) -> tuple[Any, str]:
        from qingliang.platform.lifecycle.finetune.job import run_evaluation
        from qingliang.platform.lifecycle.finetune.manifest import FineTuneJob

        data_ref = trained["train"][0]
        dataset, _, version = data_ref.partition("@")
        manifest = self._job_manifest(run)
        rules = FineTuneJob.model_validate(manifest).spec.evaluate if manifest else None
        kwargs = {
            "home": str(self.home),
            "adapter": trained["adapter"],
            "base_model_path": trained["base_model_path"],
            "dataset": dataset,
            "version": version,
            "max_records": step.max_records,
            "max_new_tokens": step.max_new_tokens,
            "must_match": list(rules.must_match) if rules else [],
            "must_not_match": list(rules.must_not_match) if rules else [],
        }
        result = self._exec(run, step.name, run_evaluation, kwargs)
        metrics = result["metrics"]
        failures = []
        for metric, minimum in step.thresholds.items():
            got = (metrics.get(metric) or {}).get("adapter")
            if got is None:
                failures.append(f"{metric}: not measured (no rules configured?)")
            elif got < minimum:
                failures.append(f"{metric} {got:.3f} < threshold {minimum:.3f}")
        for metric in step.beat_base:
            pair = metrics.get(metric) or {}
            if pair.get("adapter", 0) < pair.get("base", 0):
                failures.append(
                    f"{metric}: adapter {pair.get('adapter')} < base {pair.get('base')}"
                )
        result = {**result, "passed": not failures, "failures": failures}
        if failures:
            self.runs.event(run.id, step.name, "gate", {"failures": failures})
        return result, "" if not failures else "gated"

    def _job_manifest(self, run: Run) -> dict | None:
        from qingliang.platform.lifecycle.finetune.manifest import FineTuneJob
        from qingliang.platform.manifests.loader import load_paths

        pipeline = Pipeline.model_validate(run.manifest)
        for s in pipeline.spec.steps:
            if isinstance(s, FinetuneStep):
                for item in load_paths([Path(run.base_dir) / s.job]):
                    if isinstance(item.manifest, FineTuneJob):
                        return item.manifest.model_dump(mode="json", by_alias=True)
        return None

    def _approval(
        self, step: ApprovalStep, run: Run, trained: dict, outputs: dict
    ) -> tuple[Any, str]:
        from langgraph.types import interrupt

        from qingliang.platform.lifecycle.registry import Registry

        evaluation = _output_of(outputs, "evaluate", run, required=False)
        decision = interrupt(
            {
                "step": step.name,
                "kind": "approval",
                "message": step.message or f"approve {trained['adapter']} for serving?",
                "adapter": trained["adapter"],
                "metrics": (evaluation or {}).get("metrics"),
            }
        )
        approve, by, reason = _decision(decision)
        with Registry(home=self.home) as reg:
            status = reg.get_adapter(trained["adapter"]).status
            if approve and status in ("registered", "evaluated"):
                if status == "registered":
                    reg.set_status(trained["adapter"], "evaluated", "approved without evaluation")
                reg.set_status(trained["adapter"], "approved", f"{by}: {reason}".strip(": "))
            elif not approve and status in ("registered", "evaluated"):
                reg.set_status(trained["adapter"], "retired", f"rejected by {by}: {reason}")
        result = {"approved": approve, "by": by, "reason": reason}
        return result, "" if approve else "rejected"

    def _promote(
        self, step: PromoteStep, run: Run, trained: dict, outputs: dict
    ) -> tuple[Any, str]:
        from langgraph.types import interrupt

        from qingliang.platform.lifecycle.pipelines import steps as impl

        canary = _output_of(outputs, "canary", run)
        assert canary is not None
        common = {"home": str(self.home), "canary": canary, "base_model": trained["base_model"]}
        if step.mode == "approval":
            # The question keeps the canary, so that a read shows its figures as they are
            # then, not as they were when it was asked (see _current).
            message, figures = _promote_question(self.home, trained["adapter"], canary)
            decision = interrupt(
                {
                    "step": step.name,
                    "kind": "promote",
                    "message": message,
                    "adapter": trained["adapter"],
                    "canary": canary,
                    "figures": figures,
                }
            )
            approve, by, reason = _decision(decision)
            if not approve:
                kwargs = {**common, "reason": f"{by}: {reason}"}
                return self._exec(run, step.name, impl.rollback_step, kwargs, cpus=0), "rolled_back"
            return self._exec(run, step.name, impl.promote_step, common, cpus=0), ""
        watch = {
            "home": str(self.home),
            "canary": canary,
            "hold_s": step.hold_s,
            "analysis": step.analysis.model_dump(mode="json"),
        }
        verdict = self._exec(run, step.name, impl.analyse_canary_step, watch, cpus=0)
        self.runs.event(run.id, step.name, "analysis", verdict)
        if not verdict["healthy"]:
            kwargs = {**common, "reason": f"canary analysis: {verdict['reason']}"}
            out = self._exec(run, step.name, impl.rollback_step, kwargs, cpus=0)
            return {**out, "analysis": verdict}, "rolled_back"
        out = self._exec(run, step.name, impl.promote_step, common, cpus=0)
        return {**out, "analysis": verdict}, ""


def _unfinished(run_status: str) -> tuple[str, ...]:
    """The job statuses a run's job may not keep once the run is ``run_status``."""
    return ("pending", "running") if run_status == "interrupted" else OPEN_JOB


def _promote_question(
    home: Path, adapter: str, canary: dict[str, Any]
) -> tuple[str, dict[str, Any] | None]:
    """What a promote approval asks, with the canary's figures as of now, and the figures
    (``{"canary", "baseline", "at"}``, None when they cannot be read)."""
    from qingliang.platform.lifecycle.pipelines import steps as impl

    share = (canary.get("traffic") or {}).get(canary.get("loaded_as"), 0.0)
    ask = (
        f"promote {adapter} on {canary.get('deployment')} (canary share {share:.0%})? "
        "Reject rolls the canary back."
    )
    try:
        figures = impl.canary_figures(str(home), canary)
    except Exception as exc:  # the figures help the approver; they never block
        return f"{ask} (canary figures unavailable: {exc})", None
    c, b = figures["canary"], figures["baseline"]
    so_far = f" So far the canary had {c.describe()}; its baseline ({b.arm}) {b.describe()}."
    return ask + so_far, {"canary": c.to_dict(), "baseline": b.to_dict(), "at": time.time()}


def _decision(value: Any) -> tuple[bool, str, str]:
    if not isinstance(value, dict) or not isinstance(value.get("approve"), bool):
        raise BadRequest("an approval needs {'approve': true|false, 'by': ..., 'reason': ...}")
    return value["approve"], str(value.get("by") or "unknown"), str(value.get("reason") or "")


def _allows_self_approval(manifest: dict, step_name: str | None) -> bool:
    """Whether the waiting step of a stored run lets the run's starter approve it."""
    steps = (manifest.get("spec") or {}).get("steps") or []
    for step in steps:
        if isinstance(step, dict) and (step.get("name") or step.get("type")) == step_name:
            return bool(step.get("allow_self_approval", False))
    return False


def _output_of(
    outputs: dict[str, Any], kind: str, run: Run, *, required: bool = True
) -> dict[str, Any] | None:
    """The output of the run's step of type ``kind`` (None if it has not run)."""
    pipeline = Pipeline.model_validate(run.manifest)
    for s in pipeline.spec.steps:
        if s.type == kind and isinstance(outputs.get(s.name), dict):
            return dict(outputs[s.name])
    if required:
        raise BadRequest(f"pipeline {pipeline.name}: no output of a {kind} step yet")
    return None
