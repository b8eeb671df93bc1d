"""``qingliang agents …``: run agent graphs, follow their runs, answer their approvals.

Every command talks to the running platform's ``/v1/agents`` API (start it with
``qingliang up``), at the address ``up`` recorded, with the key in ``$QINGLIANG_API_KEY``
or else the operator key ``up`` wrote to ``$QINGLIANG_HOME/api-key``. A key limited to a
tenant sees and resumes only that tenant's runs.

``run`` streams what the run does — node transitions, the route the router chose with its
propensity, the answer as it is generated, tool calls, citations — and ends with the run's
status. A run that stops at an approval node prints the commands that resume it.

Example:
    $ qingliang agents list
    $ qingliang agents run desk "返岗人员需要隔离多久?" --domain gov
    $ qingliang agents approvals
    $ qingliang agents approve run_3c05… --edit-answer "居家观察七天。" --comment "new rule"
    $ qingliang agents feedback run_3c05… 1
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table

from qingliang.platform.errors import (
    ApiError,
    QingliangError,
    from_status,
)
from qingliang.platform.settings import Settings

log = logging.getLogger(__name__)

agents_app = typer.Typer(
    help="Agent graphs: run them (streamed), list runs, approve or reject what waits, "
    "give feedback. Needs the running platform (`qingliang up`).",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

KEY_FILE = "api-key"
KEY_ENV = "QINGLIANG_API_KEY"
NOT_RUNNING = "the platform is not running: start it with `qingliang up`"
#: Statuses after which ``run``, ``approve`` and ``reject`` exit 1.
FAILED = frozenset({"stopped", "failed"})


def _api_error(status: int, body: object, text: str = "", where: str = "") -> ApiError:
    if status in (401, 403):  # worded by the remote client: it names QINGLIANG_API_KEY
        from qingliang.platform.cli._remote import error_of

        return error_of(status, body, text, where or "the platform")
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    message = error.get("message") or text[:500] or f"HTTP {status}"
    return from_status(status, str(message), param=error.get("param"))


class AgentsApi:
    """The ``/v1/agents`` API over HTTP (what every command here calls)."""

    def __init__(self, base_url: str, api_key: str | None, transport: Any = None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url
        self._http = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(3600, connect=10),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        import httpx

        try:
            yield
        except httpx.TransportError as exc:
            raise QingliangError(
                f"cannot reach the platform at {self.base_url} ({exc}); "
                "is it running? start it with `qingliang up`"
            ) from None

    def get(self, path: str, params: dict | None = None) -> Any:
        with self._reaching():
            return self._check(self._http.get(path, params=params))

    def post(self, path: str, body: dict) -> Any:
        with self._reaching():
            return self._check(self._http.post(path, json=body))

    def events(self, path: str, body: dict) -> Iterator[dict]:
        """POST ``body`` (streamed) and yield the server-sent events as they arrive."""
        with self._reaching(), self._http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event and "type" not in event:
                    raise _api_error(500, event)
                yield event

    @staticmethod
    def _check(response: Any) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code < 400:
            return body
        where = f"{response.request.method} {response.request.url}"
        raise _api_error(response.status_code, body, response.text, where)


def connect(settings: Settings) -> AgentsApi:
    """The platform of ``--server`` / ``QINGLIANG_URL`` when one is chosen, else the one
    running here; QingliangError when none is running."""
    from qingliang.platform.cli import _remote
    from qingliang.platform.control import cluster

    chosen = _remote.target()
    if chosen is not None:
        return AgentsApi(chosen.url, chosen.key, transport=_remote.transport)
    info = cluster.running(settings)
    if info is None:
        raise QingliangError(NOT_RUNNING)
    key = os.environ.get(KEY_ENV) or None
    key_file = settings.home / KEY_FILE
    if key is None and key_file.is_file():
        key = key_file.read_text().strip() or None
    base = f"http://{settings.host}:{info.http_port}"
    log.debug("agents calls go to %s", base)
    return AgentsApi(base, key)


def _fail(exc: BaseException) -> NoReturn:
    err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def _api() -> Iterator[AgentsApi]:
    try:
        api = connect(Settings())
    except QingliangError as exc:
        _fail(exc)
    try:
        yield api
    except QingliangError as exc:
        _fail(exc)
    finally:
        api.close()


def _say(text: str, style: str | None = None, end: str = "\n") -> None:
    """Print text as it is (model output may hold ``[brackets]``)."""
    console.print(text, style=style, end=end, markup=False, highlight=False, soft_wrap=True)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _short(text: object, width: int = 60) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class EventPrinter:
    """Renders a run's events for a person: one line per step, the answer as it streams."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.run_id: str | None = None
        self._mid_line = False
        self._node: str | None = None
        self._streamed = ""

    def _end_line(self) -> None:
        if self._mid_line:
            _say("")
            self._mid_line = False

    def __call__(self, e: dict) -> None:
        kind = e.get("type")
        if kind == "token":
            if e.get("node") != self._node or not self._mid_line:
                self._end_line()
                self._node, self._streamed = e.get("node"), ""
            delta = str(e.get("delta") or "")
            self._streamed += delta
            _say(delta, end="")
            self._mid_line = True
            return
        self._end_line()
        if kind == "run":
            self.run_id = e.get("run_id")
            _say(f"run {self.run_id} ({e.get('graph')})", style="dim")
        elif kind == "node":
            extra = "".join(f" ({k} {e[k]})" for k in ("agent", "tool", "graph") if e.get(k))
            _say(f"▸ {e.get('node')}{extra}", style="cyan")
        elif kind == "route":
            _say(
                f"  route → {e.get('arm')} (propensity {float(e.get('propensity') or 0):.2f}, "
                f"router {e.get('router')})"
            )
        elif kind == "model":
            served = e.get("adapter") or "base model"
            ref = f" ({e['adapter_ref']})" if e.get("adapter_ref") else ""
            _say(f"  model {e.get('model')} → {served}{ref}", style="dim")
        elif kind == "tool":
            args = json.dumps(e.get("arguments") or {}, ensure_ascii=False)
            result = _short(e.get("result"), 120)
            outcome = f"error: {e['error']}" if e.get("error") else result
            again = " (replayed)" if e.get("replayed") else ""
            _say(f"  tool {e.get('tool')}({_short(args, 120)}){again} → {outcome}")
        elif kind == "citations":
            for i, c in enumerate(e.get("citations") or [], 1):
                where = " ".join(str(c[k]) for k in ("locator", "page") if c.get(k))
                kb = f"{c['kb']}: " if c.get("kb") else ""
                _say(f"  [{i}] {kb}{c.get('source') or c.get('doc_id') or '?'} {where}".rstrip())
        elif kind == "approval":
            by = f" by {e['actor']}" if e.get("actor") else ""
            note = f": {e['comment']}" if e.get("comment") else ""
            _say(f"  {e.get('action')}{by}{note}", style="magenta")
        elif kind == "recovered":
            _say("  recovered from its last checkpoint after a restart", style="yellow")
        elif kind == "status":
            self._final(e)

    def _final(self, e: dict) -> None:
        self.status = status = str(e.get("status"))
        self.run_id = e.get("run_id") or self.run_id
        answer = e.get("answer")
        if answer is not None and answer != self._streamed:
            _say(str(answer))
        if status == "done":
            _say("done", style="green")
        elif status == "waiting":
            pending = e.get("pending") or {}
            _say(
                f"waiting for approval at node {pending.get('node')}: {pending.get('prompt')}",
                style="yellow",
            )
            if pending.get("forms"):
                _say(f"  forms: {json.dumps(pending['forms'], ensure_ascii=False)}")
            _say(
                f"run {self.run_id} waits for a person; resume it with one of (with "
                "$QINGLIANG_API_KEY set to an `approve` key other than the one that "
                "started it, unless the graph allows self-approval):"
            )
            _say(f"  qingliang agents approve {self.run_id}")
            _say(f'  qingliang agents approve {self.run_id} --edit-answer "..."')
            _say(f"  qingliang agents reject {self.run_id}")
        else:
            reason = f": {e['reason']}" if e.get("reason") else ""
            _say(f"{status}{reason}", style="red" if status in FAILED else "yellow")
        self._node, self._streamed = None, ""


def _follow(events: Iterator[dict], as_json: bool) -> str | None:
    """Print a stream of events; the run's last status."""
    printer = EventPrinter()
    status = None
    for event in events:
        if as_json:
            print(json.dumps(event, ensure_ascii=False), flush=True)
            if event.get("type") == "status":
                status = event.get("status")
        else:
            printer(event)
    return status if as_json else printer.status


def _exit_for(status: str | None) -> None:
    if status in FAILED:
        raise typer.Exit(1)


def _attachments(files: list[Path]) -> list[dict]:
    out = []
    for f in files:
        if not f.is_file():
            raise QingliangError(f"no such file: {f}")
        out.append({"name": f.name, "data": base64.b64encode(f.read_bytes()).decode("ascii")})
    return out


@agents_app.command("list")
def list_graphs(
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """The applied agent graphs: nodes, agents and their models, router nodes."""
    with _api() as api:
        data = api.get("/v1/agents")["data"]
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return
    if not data:
        _say("no agent graphs are applied (apply an AgentGraph manifest with `qingliang apply`)")
        return
    table = Table("GRAPH", "DESCRIPTION", "NODES", "AGENTS", "ROUTERS")
    for g in data:
        nodes = ", ".join(f"{n['name']} ({n['type']})" for n in g["nodes"])
        agents = ", ".join(f"{a['name']}={a['model']}" for a in g["agents"])
        routers = "; ".join(f"{r['node']}: {' | '.join(r['arms'])}" for r in g["routers"])
        table.add_row(g["id"], g["description"], nodes, agents, routers or "-")
    console.print(table)


@agents_app.command("run")
def run(
    graph: str = typer.Argument(
        ..., metavar="GRAPH", help="The agent graph (see `qingliang agents list`)."
    ),
    text: str = typer.Argument(..., metavar="TEXT", help="The request."),
    domain: str = typer.Option(None, help="Domain label for the router (gov, healthcare, ...)."),
    attach: list[Path] = typer.Option(
        None, "--attach", "-a", help="A file sent with the request (repeatable)."
    ),
    stream: bool = typer.Option(True, help="Stream events as they happen (--no-stream: wait)."),
    as_json: bool = typer.Option(
        False, "--json", help="JSON: one event per line, or the run with --no-stream."
    ),
) -> None:
    """Start a run of GRAPH on TEXT and follow it to its end or to an approval.

    Exits 1 when the run is refused, or stops at a limit or fails.
    """
    with _api() as api:
        body: dict[str, Any] = {"input": text, "stream": stream}
        if domain is not None:
            body["domain"] = domain
        if attach:
            body["attachments"] = _attachments(attach)
        path = f"/v1/agents/{quote(graph, safe='')}/runs"
        if stream:
            status = _follow(api.events(path, body), as_json)
        else:
            out = api.post(path, body)
            status = out["status"]
            if as_json:
                print(json.dumps(out, ensure_ascii=False, indent=2))
            else:
                _follow(iter(out["events"]), False)
    _exit_for(status)


@agents_app.command("runs")
def runs(
    status: str = typer.Option(
        None, help="Only runs in this status (running, waiting, done, rejected, stopped, failed)."
    ),
    graph: str = typer.Option(None, help="Only runs of this graph."),
    limit: int = typer.Option(20, help="How many (newest first, 1-500)."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """Recent runs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if graph:
        params["graph"] = graph
    with _api() as api:
        data = api.get("/v1/agents/runs", params=params)["data"]
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return
    if not data:
        _say("no runs")
        return
    table = Table("RUN", "GRAPH", "STATUS", "TENANT", "STARTED", "INPUT", "ANSWER / REASON")
    for r in data:
        result = r["answer"] if r["answer"] is not None else r["reason"]
        table.add_row(
            r["id"],
            r["graph"],
            r["status"],
            r["tenant"] or "-",
            _when(r["created"]),
            _short(r["input"].get("input"), 40),
            _short(result, 50),
        )
    console.print(table)


@agents_app.command("show")
def show(
    run_id: str = typer.Argument(..., metavar="RUN", help="Run id (run_…)."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """One run: its status, input, answer, and every event it recorded."""
    with _api() as api:
        out = api.get(f"/v1/agents/runs/{quote(run_id, safe='')}")
    if as_json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return
    _say(f"{out['id']}  {out['graph']}  {out['status']}", style="bold")
    _say(f"  tenant {out['tenant'] or '-'}, by {out['actor']}, started {_when(out['created'])}")
    _say(f"  {out['tokens']} tokens, {out['active_s']:.2f} s active")
    _say(f"  input: {out['input'].get('input')}")
    if out["input"].get("attachments"):
        _say(f"  attachments: {', '.join(out['input']['attachments'])}")
    _say("events:", style="bold")
    printer = EventPrinter()
    for event in out["events"]:
        printer(event)


@agents_app.command("approvals")
def approvals(
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """The inbox: runs waiting for a person to approve, edit or reject their answer."""
    with _api() as api:
        data = api.get("/v1/agents/approvals")["data"]
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return
    if not data:
        _say("no runs are waiting for approval")
        return
    table = Table("RUN", "GRAPH", "NODE", "WAITING SINCE", "REQUEST", "PROMPT", "DRAFT ANSWER")
    for a in data:
        table.add_row(
            a["run_id"],
            a["graph"],
            a["node"] or "-",
            _when(a["waiting_since"]),
            _short(a["input"], 40),
            _short(a["prompt"], 40),
            _short(a["answer"], 60),
        )
    console.print(table)
    _say("resume one with `qingliang agents approve RUN [--edit-answer TEXT]` or `... reject RUN`")


def _resume(run_id: str, body: dict) -> None:
    with _api() as api:
        path = f"/v1/agents/runs/{quote(run_id, safe='')}/resume"
        status = _follow(api.events(path, body), False)
    _exit_for(status)


@agents_app.command("approve")
def approve(
    run_id: str = typer.Argument(..., metavar="RUN", help="A run waiting for approval."),
    edit_answer: str = typer.Option(
        None, "--edit-answer", help="Replace the draft answer with this text (action edit)."
    ),
    comment: str = typer.Option(None, help="A note kept with the decision."),
) -> None:
    """Approve the answer RUN waits on (or edit it) and follow the run to its end."""
    body: dict[str, Any] = {"action": "approve" if edit_answer is None else "edit"}
    if edit_answer is not None:
        body["answer"] = edit_answer
    if comment is not None:
        body["comment"] = comment
    _resume(run_id, body)


@agents_app.command("reject")
def reject(
    run_id: str = typer.Argument(..., metavar="RUN", help="A run waiting for approval."),
    comment: str = typer.Option(None, help="Why (kept with the decision)."),
) -> None:
    """Reject the answer RUN waits on; the run ends (or goes to its on_reject node)."""
    body: dict[str, Any] = {"action": "reject"}
    if comment is not None:
        body["comment"] = comment
    _resume(run_id, body)


# ignore_unknown_options: a negative SCORE (-1) is an argument, not an unknown option.
@agents_app.command("feedback", context_settings={"ignore_unknown_options": True})
def feedback(
    run_id: str = typer.Argument(..., metavar="RUN", help="The run."),
    score: float = typer.Argument(..., metavar="SCORE", help="From -1 (bad) to 1 (good)."),
    comment: str = typer.Option(None, help="What was good or bad."),
) -> None:
    """Rate a run's answer; the router learns from it for the routes that run took."""
    body: dict[str, Any] = {"run_id": run_id, "score": score}
    if comment is not None:
        body["comment"] = comment
    with _api() as api:
        out = api.post("/v1/feedback", body)
    _say(
        f"feedback {out['score']:g} recorded for {out['run_id']} "
        f"({out['decisions']} routing decision{'s' if out['decisions'] != 1 else ''} updated)"
    )


@agents_app.command("router")
def router(
    graph: str = typer.Argument(..., metavar="GRAPH", help="The agent graph."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """How GRAPH's learned routers are doing: decisions, mean reward per arm, the reward
    over rounds and the estimated regret against the best single arm."""
    from urllib.parse import quote

    with _api() as api:
        out = api.get(f"/v1/agents/{quote(graph, safe='')}/routers")
    if as_json:
        console.print_json(json.dumps(out, ensure_ascii=False))
        return
    if not out["data"]:
        _say(f"{graph} has no router node")
    for r in out["data"]:
        learn = r.get("learning") or {}
        _say(
            f"{r['router']}: {r.get('decisions', 0)} decisions, {r.get('closed', 0)} closed"
            + (f", taught {r['taught']} labelled examples" if r.get("taught") else "")
            + (
                f", mean reward {learn['mean_reward']:g}"
                if learn.get("mean_reward") is not None
                else ""
            )
        )
        for arm, a in (r.get("arms") or {}).items():
            mean = a.get("mean_reward")
            _say(f"  {arm:<20} {a.get('count', 0):>6} taken   mean reward "
                 + ("-" if mean is None else f"{mean:.3f}"))  # fmt: skip
        if learn.get("estimated_regret") is not None:
            _say(
                f"  estimated regret {learn['estimated_regret']:g} against always "
                f"{learn['best_arm']!r} (IPS), over {learn['closed']} closed decisions"
            )
            curve = " ".join(f"{v:.2f}" for v in learn["reward_by_window"])
            _say(f"  reward per {learn['window']} decisions, oldest first: {curve}")
