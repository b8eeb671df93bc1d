"""Agent runs: start, stream, pause for approval, resume, recover after a crash.

:class:`AgentService` is the plain class behind ``/v1/agents`` (hosted by the ``Agents``
Ray Serve deployment, used directly by tests and the CLI's local mode). A run executes in
a background task, so a client that disconnects does not stop it; its events go to the
run store (``GET /v1/agents/runs/{id}``) and to whoever streams it.

A run's life: :meth:`start` → events … → ``done`` | ``waiting`` (an approval node called
``interrupt()``; the run is in the approvals inbox) → :meth:`resume` with approve / edit /
reject → … Resuming claims the run with a conditional update, so a second resume of the
same approval gets :class:`~qingliang.platform.errors.Conflict` and changes nothing.
:meth:`recover` continues runs left ``running`` by a process that died, from their last
checkpoint; the journal keeps their side effects from happening twice.

Example:
    >>> async with AgentService(home, chat=chat, catalog=catalog) as agents:  # doctest: +SKIP
    ...     run_id, events = await agents.start("desk", {"input": "hi"}, tenant=None, actor="me")
    ...     async for event in events:
    ...         print(event["type"])
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from qingliang.agents._approvals import (
    MAX_INPUT_CHARS,
    RESUME_KEYS,
    RUN_KEYS,
    check_keys,
    checked_decision,
)
from qingliang.agents.checkpoint import Checkpointers
from qingliang.agents.runs import FINAL, Run, RunStore, new_run_id
from qingliang.agents.runtime import (
    APPROVAL_VALUE,
    GraphCompiler,
    GraphDef,
    RunStopped,
    Services,
    router_config,
    router_key,
    teach_router,
)
from qingliang.knowledge.vision import IMAGE_SUFFIXES
from qingliang.platform import metrics
from qingliang.platform.errors import BadRequest, Conflict, NotFound

log = logging.getLogger(__name__)

MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_DONE = object()
#: Stored events are flushed at least this often while a run is going.
EVENT_FLUSH_S = 0.25


class GraphCatalog(Protocol):
    def get(self, name: str) -> GraphDef:
        """The applied graph ``name``; raises NotFound naming it."""
        ...

    def names(self) -> list[str]: ...


class AgentService:
    """Runs of every applied AgentGraph, with their checkpoints, events and approvals."""

    def __init__(
        self,
        home: Path,
        *,
        chat: Any,
        catalog: GraphCatalog,
        router: Any = None,
        knowledge: Any = None,
        embed: Any = None,
        tools_for: Callable[[GraphDef], dict] | None = None,
        store: RunStore | None = None,
    ) -> None:
        self.home = Path(home)
        self.store = store or RunStore(self.home / "agents.sqlite")
        self._uploads_root = self.home / "agents" / "uploads"
        self.catalog = catalog
        self.router = router
        self._services = Services(
            chat=chat,
            store=self.store,
            router=router,
            knowledge=knowledge,
            embed=embed,
            graphs=catalog.get,
        )
        self._compiler = GraphCompiler(self._services, tools_for or default_tools)
        self._checkpointers = Checkpointers(self.home)
        self._compiled: dict[str, Any] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._listeners: dict[str, list[asyncio.Queue]] = {}
        self._unsaved: dict[str, list[dict]] = {}
        self._flushed: dict[str, float] = {}

    async def __aenter__(self) -> AgentService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            # Cancelled: the run stays `running` and is recovered by the next service.
            with contextlib.suppress(BaseException):
                await task
        for run_id, events in list(self._unsaved.items()):
            if events:
                self.store.add_events(run_id, events)
        self._unsaved.clear()
        await self._checkpointers.close()
        self.store.close()

    # queries ----------------------------------------------------------------------------

    def get(self, run_id: str, tenant: str | None = None, all_tenants: bool = False) -> Run:
        run = self.store.get(run_id)
        if run is None or (not all_tenants and run.tenant != tenant):
            raise NotFound(f"run {run_id!r} not found", param="run_id")
        return run

    def runs(self, *, tenant: str | None, all_tenants: bool = False, **kw: Any) -> list[Run]:
        return self.store.list(tenant=tenant, all_tenants=all_tenants, **kw)

    def approvals(self, *, tenant: str | None, all_tenants: bool = False) -> list[Run]:
        return self.store.list(tenant=tenant, all_tenants=all_tenants, status="waiting")

    def events(self, run_id: str, tenant: str | None = None, all_tenants: bool = False) -> list:
        self.get(run_id, tenant, all_tenants)
        return self.store.events(run_id)

    # start / resume ---------------------------------------------------------------------

    async def start(
        self, graph: str, body: dict, *, tenant: str | None, actor: str
    ) -> tuple[str, AsyncIterator[dict]]:
        """Start a run of ``graph``; returns its id and its live event stream."""
        check_keys(body, RUN_KEYS, "run")
        gdef = self.catalog.get(graph)
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("`input` is required: the request text", param="input")
        if len(text) > MAX_INPUT_CHARS:
            raise BadRequest(f"`input` is longer than {MAX_INPUT_CHARS} characters", param="input")
        domain = body.get("domain", gdef.manifest.metadata.labels.get("domain"))
        if domain is not None and not isinstance(domain, str):
            raise BadRequest("`domain` must be a string", param="domain")
        files = _attachments(body.get("attachments"))
        payload = {"input": text, "domain": domain, "attachments": sorted(files)}
        run_id = new_run_id()
        first = {"type": "run", "run_id": run_id, "graph": graph}
        # The run row and its first event in one transaction.
        await self.store.acreate(
            graph, payload, tenant=tenant, actor=actor, run_id=run_id, events=[first]
        )
        self._flushed[run_id] = time.monotonic()
        folder = self._uploads(run_id)
        for name, data in files.items():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        state = {
            "input": text,
            "domain": domain,
            "modality": _modality(files),
            "attachments": sorted(files),
        }
        stream = self._subscribe(run_id)
        self._notify(run_id, [first])
        self._launch(run_id, gdef, state, tenant, 0.0)
        metrics.AGENT_RUNS_STARTED.inc(1, graph=graph)
        return run_id, stream

    async def resume(
        self, run_id: str, body: dict, *, tenant: str | None, actor: str, all_tenants: bool = False
    ) -> tuple[str, AsyncIterator[dict]]:
        """Answer the approval a run waits for (approve, edit or reject) and continue it."""
        check_keys(body, RESUME_KEYS, "resume")
        run = self.get(run_id, tenant, all_tenants)
        action = body.get("action")
        if action not in APPROVAL_VALUE:
            raise BadRequest("`action` must be approve, edit or reject", param="action")
        if run.status != "waiting" or not run.pending:
            raise Conflict(f"run {run_id!r} is {run.status}, not waiting for an approval")
        gdef = self.catalog.get(run.graph)
        decision = checked_decision(gdef, run, body, action=action, actor=actor)
        # The claim: only one resume of this approval can move the run out of `waiting`.
        if not self.store.set_status(run_id, "running", expect="waiting"):
            raise Conflict(f"run {run_id!r} was resumed already")
        from langgraph.types import Command

        interrupt_id = run.pending.get("interrupt_id")
        value = {interrupt_id: decision} if interrupt_id else decision
        stream = self._subscribe(run_id)
        # Flushed at once: the approval is the audit record of who decided what.
        self._publish(run_id, [{"type": "approval", "run_id": run_id, **decision}], flush=True)
        self._launch(run_id, gdef, Command(resume=value), run.tenant, run.active_s)
        return run_id, stream

    async def feedback(
        self,
        run_id: str,
        score: object,
        *,
        comment: object = None,
        tenant: str | None,
        actor: str,
        all_tenants: bool = False,
    ) -> dict:
        """Explicit feedback on a run (-1..1): stored, and a reward for its routes."""
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise BadRequest("`score` must be a number from -1 to 1", param="score")
        if not -1.0 <= float(score) <= 1.0:
            raise BadRequest(f"`score` {score} is outside -1..1", param="score")
        if comment is not None and not isinstance(comment, str):
            raise BadRequest("`comment` must be a string", param="comment")
        run = self.get(run_id, tenant, all_tenants)
        reached = 0
        if self.router is not None:
            # The router first: feedback it refuses (Conflict: this run's decisions have
            # feedback already) is not stored either.
            try:
                reached = await self.router.feedback(run.id, float(score))
            except NotFound:
                reached = 0  # a run without routing decisions: feedback is kept, not learned
        self.store.add_feedback(run.id, float(score), comment, actor)
        return {"run_id": run.id, "score": float(score), "decisions": reached}

    async def wait(self, run_id: str, timeout_s: float | None = None) -> Run:
        """Wait until the run's current segment ends (done, waiting, stopped ...)."""
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        run = self.store.get(run_id)
        assert run is not None
        return run

    async def recover(self) -> list[str]:
        """Continue every run another process left ``running`` (it died mid-run)."""
        resumed = []
        for run in self.store.list(all_tenants=True, status="running", limit=10_000):
            if run.id in self._tasks:
                continue
            try:
                gdef = self.catalog.get(run.graph)
            except NotFound:
                self.store.set_status(
                    run.id, "failed", expect="running", reason=f"graph {run.graph!r} was deleted"
                )
                continue
            log.info("recovering run %s of %s from its last checkpoint", run.id, run.graph)
            self._publish(run.id, [{"type": "recovered", "run_id": run.id}])
            self._launch(run.id, gdef, None, run.tenant, run.active_s)
            resumed.append(run.id)
        return resumed

    # the background driver --------------------------------------------------------------

    def _launch(
        self, run_id: str, gdef: GraphDef, inp: Any, tenant: str | None, active_s: float
    ) -> None:
        """Drive the run in a background task; ``active_s``: its active time so far."""
        task = asyncio.create_task(
            self._drive(run_id, gdef, inp, tenant, active_s), name=f"agent-run-{run_id}"
        )
        self._tasks[run_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(run_id, None))

    async def _graph(self, gdef: GraphDef) -> Any:
        key = f"{gdef.name}@{gdef.version}"
        if key not in self._compiled:
            saver = await self._checkpointers.get(gdef.manifest.spec.checkpointer)
            if self.router is not None:
                # Register before the first decision: a changed manifest updates the
                # router's settings; its learned statistics carry over (same arms). The
                # graphs it nests decide inside its runs: theirs too. Then its examples
                # not taught yet (a warm start: once, never on top of a restart).
                for g in self._with_nested(gdef):
                    for node in g.manifest.spec.nodes:
                        if node.type == "router":
                            key_ = router_key(g.name, node.name)
                            await self.router.register(key_, router_config(g.manifest, node))
                            await teach_router(self._services, g, node)
            self._compiled[key] = self._compiler.compile(gdef, saver)
        return self._compiled[key]

    def _with_nested(self, gdef: GraphDef) -> list[GraphDef]:
        """``gdef`` and every graph it nests (graph nodes, call_agent tools), transitively;
        one that is not applied is left out (its run fails, naming it)."""
        found, todo = {gdef.name: gdef}, [gdef]
        while todo:
            spec = todo.pop().manifest.spec
            names = [n.graph for n in spec.nodes if n.type == "graph" and n.graph]
            names += [getattr(t, "graph", None) for t in spec.tools if t.kind == "call_agent"]
            for name in names:
                if not name or name in found:
                    continue
                try:
                    found[name] = self.catalog.get(name)
                except NotFound:
                    continue
                todo.append(found[name])
        return list(found.values())

    @staticmethod
    def _may_interrupt(gdef: GraphDef) -> bool:
        """Whether a run of the graph can stop at an approval (its own or a nested one)."""
        spec = gdef.manifest.spec
        return any(n.type in ("approval", "graph") for n in spec.nodes) or any(
            t.kind == "call_agent" for t in spec.tools
        )

    def _sink(self, run_id: str) -> Callable[[dict], None]:
        """The run's event sink (``configurable.run["events"]``), for its nodes and those
        of the graphs it nests."""
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def sink(event: dict) -> None:
            if threading.get_ident() == loop_thread:
                self._publish(run_id, [event])
            else:  # a node's worker thread
                loop.call_soon_threadsafe(self._publish, run_id, [event])

        return sink

    async def _drive(
        self, run_id: str, gdef: GraphDef, inp: Any, tenant: str | None, active_s: float
    ) -> None:
        from langgraph.errors import GraphRecursionError

        limits = gdef.manifest.spec.limits
        cfg = {
            "configurable": {
                "thread_id": run_id,
                "run": {
                    "run_id": run_id,
                    "tenant": tenant,
                    "attachments_dir": str(self._uploads(run_id)),
                    "graph": gdef.name,
                    "events": self._sink(run_id),
                },
            },
            "recursion_limit": limits.max_steps,
        }
        started = time.monotonic()
        status, reason = "done", None
        final: dict | None = None
        interrupted = False
        try:
            graph = await self._graph(gdef)
            async with asyncio.timeout(max(0.001, limits.timeout_s - active_s)):
                async for chunk in graph.astream(
                    inp, cfg, stream_mode="values", version="v2", durability="sync"
                ):
                    # Events come through the run's sink; this is the state after each
                    # step, with the interrupts raised in it.
                    final = chunk["data"]
                    interrupted = interrupted or bool(chunk["interrupts"])
        except RunStopped as exc:
            status, reason = "stopped", str(exc)
        except GraphRecursionError:
            status, reason = "stopped", f"max_steps ({limits.max_steps}) reached"
        except TimeoutError:
            status, reason = "stopped", f"timeout_s ({limits.timeout_s:g} s) reached"
        except asyncio.CancelledError:
            raise  # the process is shutting down: the run stays `running`, recoverable
        except Exception as exc:
            log.exception("run %s failed", run_id)
            status, reason = "failed", f"{type(exc).__name__}: {exc}"
        active = time.monotonic() - started
        try:
            if status != "done" or interrupted or self._may_interrupt(gdef):
                final = None  # the checkpoint has the authoritative pending interrupts
            await self._settle(run_id, gdef, cfg, status, reason, active, active_s + active, final)
        except Exception as exc:
            log.exception("run %s could not be settled", run_id)
            why = f"settling the run failed: {type(exc).__name__}: {exc}"
            event = {"type": "status", "run_id": run_id, "status": "failed", "reason": why}
            events = self._unsaved_with(run_id, event)
            self.store.set_status(run_id, "failed", expect="running", reason=why, events=events)
            self._saved(run_id, events)
            self._notify(run_id, [event])
        finally:
            self._close_listeners(run_id)

    async def _settle(
        self,
        run_id: str,
        gdef: GraphDef,
        cfg: dict,
        status: str,
        reason: str | None,
        active: float,
        active_total: float,
        final: dict | None = None,
    ) -> None:
        """Store how the run's segment ended. ``final``: its state, as the graph streamed
        it, when the run ended without an interrupt (None: read the checkpoint)."""
        interrupts: Any = ()
        if final is not None:
            values = dict(final)
        else:
            try:
                graph = await self._graph(gdef)
                snap = await graph.aget_state(cfg)
                values, interrupts = dict(snap.values or {}), snap.interrupts
            except Exception:
                if status == "done":
                    raise
                # The run already failed or stopped, often for this very reason (a
                # checkpointer that cannot be opened): report that, not a second failure.
                log.warning("run %s: its state cannot be read (%s)", run_id, reason)
                values = {}
        tokens = int(values.get("tokens") or 0)
        pending = None
        if status == "done" and interrupts:
            first = interrupts[0]
            pending = {"interrupt_id": first.id, **dict(first.value)}
            status = "waiting"
        elif status == "done" and values.get("outcome") == "rejected":
            status, reason = "rejected", "rejected at approval"
        answer = values.get("last") if status in ("done", "waiting", "rejected") else None
        event: dict[str, Any] = {"type": "status", "run_id": run_id, "status": status}
        if answer is not None:
            event["answer"] = answer
        if reason:
            event["reason"] = reason
        if pending:
            event["pending"] = pending
        if values.get("results"):
            event["results"] = values["results"]
        if values.get("forms"):  # what the run's form tools hold: its structured output
            event["forms"] = values["forms"]
        # The new status and the events not stored yet, the status event last, in one
        # transaction.
        events = self._unsaved_with(run_id, event)
        await self.store.aset_status(
            run_id,
            status,
            expect="running",
            answer=answer,
            reason=reason,
            pending=pending,
            tokens=tokens,
            active_s=active,
            events=events,
        )
        self._saved(run_id, events)
        self._notify(run_id, [event])
        metrics.agent_run_ended(gdef.name, status, active)
        if status in FINAL and values.get("routes") and self.router is not None:
            approvals = values.get("approvals") or []
            approval = APPROVAL_VALUE.get(approvals[-1]["action"]) if approvals else None
            try:
                await self.router.finish_run(
                    run_id,
                    success=status == "done",
                    latency_s=active_total,
                    tokens=tokens,
                    approval=approval,
                )
            except Exception:  # learning must never fail a finished run
                log.exception("router could not learn from run %s", run_id)

    # events -----------------------------------------------------------------------------

    def _publish(self, run_id: str, events: list[dict], flush: bool = False) -> None:
        """Send ``events`` to the run's listeners and (tokens excepted) to the store.

        Stored events are written in batches — at least every ``EVENT_FLUSH_S`` and when
        the run settles — so a step does not pay a transaction per event.
        """
        buffer = self._unsaved.setdefault(run_id, [])
        # Stored events carry when they happened (the batch is written later): a run's
        # timeline shows where its time went. Streamed events stay as they were.
        wall = round(time.time(), 3)
        buffer.extend({"at": wall, **e} for e in events if e.get("type") != "token")
        now = time.monotonic()
        if buffer and (flush or now - self._flushed.get(run_id, 0.0) >= EVENT_FLUSH_S):
            self.store.add_events(run_id, buffer)
            self._unsaved.pop(run_id, None)
            self._flushed[run_id] = now
        if flush:
            self._flushed.pop(run_id, None)
        self._notify(run_id, events)

    def _unsaved_with(self, run_id: str, event: dict) -> list[dict]:
        """The run's events not stored yet, then ``event``: to store with a status change."""
        return [*self._unsaved.get(run_id, ()), {"at": round(time.time(), 3), **event}]

    def _saved(self, run_id: str, events: list[dict]) -> None:
        """``events``, from :meth:`_unsaved_with`, were stored (with a status change)."""
        rest = self._unsaved.pop(run_id, [])[len(events) - 1 :]
        if rest:  # published meanwhile
            self._unsaved[run_id] = rest
        else:
            self._flushed.pop(run_id, None)

    def _notify(self, run_id: str, events: list[dict]) -> None:
        for q in self._listeners.get(run_id, ()):
            for e in events:
                q.put_nowait(e)

    def _subscribe(self, run_id: str) -> AsyncIterator[dict]:
        q: asyncio.Queue = asyncio.Queue()
        self._listeners.setdefault(run_id, []).append(q)

        async def events() -> AsyncIterator[dict]:
            try:
                while True:
                    item = await q.get()
                    if item is _DONE:
                        return
                    yield item
            finally:
                listeners = self._listeners.get(run_id, [])
                if q in listeners:
                    listeners.remove(q)

        return events()

    def _close_listeners(self, run_id: str) -> None:
        for q in self._listeners.pop(run_id, []):
            q.put_nowait(_DONE)

    def _uploads(self, run_id: str) -> Path:
        return self._uploads_root / run_id


def _attachments(value: object) -> dict[str, bytes]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise BadRequest("`attachments` must be a list of {name, data}", param="attachments")
    files: dict[str, bytes] = {}
    for i, item in enumerate(value):
        where = f"attachments[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "data"}:
            raise BadRequest(f"{where} must be an object with name and data", param=where)
        name, data = item.get("name"), item.get("data")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise BadRequest(f"{where}.name {name!r} is not a plain file name", param=where)
        if name in files:
            raise BadRequest(f"{where}.name {name!r} appears twice", param=where)
        if not isinstance(data, str):
            raise BadRequest(f"{where}.data must be base64 text", param=where)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}.data is not valid base64", param=where) from None
        if len(raw) > MAX_ATTACHMENT_BYTES:
            raise BadRequest(f"{where} is larger than {MAX_ATTACHMENT_BYTES} bytes", param=where)
        files[name] = raw
    return files


def _modality(files: dict[str, bytes]) -> str:
    kinds = set()
    for name in files:
        suffix = name.rsplit(".", 1)[-1].lower()
        if suffix in IMAGE_SUFFIXES:
            kinds.add("image")
        elif suffix in ("csv", "tsv", "xlsx"):
            kinds.add("table")
    if not kinds:
        return "text"
    return kinds.pop() if len(kinds) == 1 else "mixed"


def default_tools(gdef: GraphDef) -> dict:
    """The graph's tools: built from the manifest, plus ``call_agent`` as nested graphs."""
    from qingliang.agents._agent_node import NestedAgentTool
    from qingliang.agents.toolbox import build_tools

    tools: dict[str, Any] = dict(build_tools(gdef.manifest.spec, gdef.base_dir))
    for t in gdef.manifest.spec.tools:
        if t.kind == "call_agent":
            tools[t.name] = NestedAgentTool(
                t.name, t.description or f"Ask the {t.graph} agents; returns their answer.", t.graph
            )
    return tools
