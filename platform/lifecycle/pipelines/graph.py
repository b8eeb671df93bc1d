"""The LangGraph of one pipeline run: one node per step, each run as a task.

:class:`RunGraph` compiles a ``Pipeline`` manifest into a ``StateGraph`` (one node per
step, in order, ending early on a gate, a rejection or a rollback) with a checkpointer
(SQLite under ``<home>/pipelines``, or PostgreSQL), and runs every step through the
:class:`~qingliang.platform.lifecycle.pipelines.executor.Executor` it was given,
streaming the step's events into the run's log. Approval and promote steps are LangGraph
interrupts. :class:`~qingliang.platform.lifecycle.pipelines.service.PipelineService`
drives it.

Example:
    >>> graph = RunGraph(home, executor, runs)                    # doctest: +SKIP
    >>> with graph.checkpointer(pipeline) as saver:               # doctest: +SKIP
    ...     compiled = graph.compile(pipeline, run, saver)
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

from qingliang.platform import metrics
from qingliang.platform.errors import BadRequest, Conflict, QingliangError, ResolveError
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
from qingliang.platform.lifecycle.pipelines.runs import Run, RunStore

logger = logging.getLogger(__name__)

PIPELINES_DIR = "pipelines"
CHECKPOINTS = "checkpoints.sqlite"


def _merge(a: dict | None, b: dict | None) -> dict:
    return {**(a or {}), **(b or {})}


class State(TypedDict, total=False):
    outputs: Annotated[dict[str, Any], _merge]
    outcome: Annotated[str, operator.add]


class RunGraph:
    """Builds and runs the steps of pipeline runs of one data directory.

    Args:
        home: the data directory (datasets, registry, adapters, pipeline runs).
        executor: where steps run (``RayExecutor`` in production).
        runs: the run store each step's events and outputs go to.
    """

    def __init__(self, home: Path, executor: Executor, runs: RunStore) -> None:
        self.home = Path(home)
        self.executor = executor
        self.runs = runs

    @contextlib.contextmanager
    def checkpointer(self, pipeline: Pipeline) -> Iterator[Any]:
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

        conn = sqlite3.connect(
            self.home / PIPELINES_DIR / CHECKPOINTS, check_same_thread=False, timeout=30
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            yield SqliteSaver(conn)
        finally:
            conn.close()

    def compile(self, pipeline: Pipeline, run: Run, saver: Any) -> Any:
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
            with metrics.pipeline_step(step.type) as measured:
                result, outcome = self._run_step(step, run, outputs)
                measured["outcome"] = outcome or "ok"
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

    def run_task(
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
            return self.run_task(run, step.name, impl.govern_step, kwargs), ""
        if isinstance(step, FinetuneStep):
            return self._finetune(step, run, outputs), ""
        trained = output_of(outputs, "finetune", run)
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
            return self.run_task(run, step.name, impl.merge_step, kwargs), ""
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
                "alias": step.alias,
            }
            if stash is None:
                ctl = impl.controller(home)
                state = impl.deployment_state(ctl, step.deployment, step.alias)
                kwargs["before"] = state["traffic"]
                self.runs.update(run.id, outputs={**outputs, before_key: state["traffic"]})
            return self.run_task(run, step.name, impl.canary_step, kwargs, cpus=0), ""
        if isinstance(step, PromoteStep):
            return self._promote(step, run, trained, outputs)
        raise BadRequest(f"unknown step type {step.type!r}")

    def _finetune(self, step: FinetuneStep, run: Run, outputs: dict[str, Any]) -> Any:
        import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
        from qingliang.platform.lifecycle.finetune.job import run_job
        from qingliang.platform.lifecycle.finetune.manifest import FineTuneJob
        from qingliang.platform.manifests.loader import load_paths

        path = Path(run.base_dir) / step.job
        items = [i for i in load_paths([path]) if isinstance(i.manifest, FineTuneJob)]
        if len(items) != 1:
            raise ResolveError(f"finetune: {path} must hold exactly one FineTuneJob")
        job = items[0].manifest
        assert isinstance(job, FineTuneJob)
        governed = output_of(outputs, "govern", run, required=False)
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
        return self.run_task(
            run, step.name, run_job, kwargs, cpus=cpus, gpus=job.spec.resources.gpus
        )

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
        result = self.run_task(run, step.name, run_evaluation, kwargs)
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
        import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
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

        evaluation = output_of(outputs, "evaluate", run, required=False)
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

        canary = output_of(outputs, "canary", run)
        assert canary is not None
        common = {"home": str(self.home), "canary": canary, "base_model": trained["base_model"]}
        if step.mode == "approval":
            # The question keeps the canary, so that a read shows its figures as they are
            # then, not as they were when it was asked (see _current).
            message, figures = promote_question(self.home, trained["adapter"], canary)
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
                return self.run_task(
                    run, step.name, impl.rollback_step, kwargs, cpus=0
                ), "rolled_back"
            return self.run_task(run, step.name, impl.promote_step, common, cpus=0), ""
        watch = {
            "home": str(self.home),
            "canary": canary,
            "hold_s": step.hold_s,
            "analysis": step.analysis.model_dump(mode="json"),
        }
        verdict = self.run_task(run, step.name, impl.analyse_canary_step, watch, cpus=0)
        self.runs.event(run.id, step.name, "analysis", verdict)
        if not verdict["healthy"]:
            kwargs = {**common, "reason": f"canary analysis: {verdict['reason']}"}
            out = self.run_task(run, step.name, impl.rollback_step, kwargs, cpus=0)
            return {**out, "analysis": verdict}, "rolled_back"
        out = self.run_task(run, step.name, impl.promote_step, common, cpus=0)
        return {**out, "analysis": verdict}, ""


def promote_question(
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


def output_of(
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
