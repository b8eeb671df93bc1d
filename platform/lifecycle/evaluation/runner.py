"""Ask a target on the running platform every question of a file, over its HTTP API.

The target is an AgentGraph (``POST /v1/agents/{graph}/runs``, the finished run with its
events) or a KnowledgeBase (``POST /v1/knowledge/{kb}/search``); :func:`detect_kind` asks
the platform which (``GET /v1/agents``, ``GET /v1/knowledge``). Only HTTP is used, with the
caller's key, so a remote platform is evaluated the same way as the local one.

Each question becomes one output line (:func:`ask_graph`, :func:`ask_kb`)::

    {"id", "answer", "citations": [{"doc_id", "source", "text", "record", "title", "kb",
     "score"}], "route", "fields", "latency_s"}  (+ "run_id", "status" for a graph,
                                                  + "error" when the question failed)

A citation also carries ``context`` when the hit had one (a knowledge base with
``spec.retrieval.context.neighbours``: the cited chunk with its neighbours, what an agent's
prompt is given).

A failed question gets ``error`` and the run goes on. :func:`run` asks ``concurrency``
questions at a time and writes the lines in input order as soon as each is known, so a
long run can be followed with ``tail -f``.

Example:
    >>> api = PlatformApi("http://127.0.0.1:8000", "sk-…")  # doctest: +SKIP
    >>> qs = read_questions(Path("gold.jsonl"))  # doctest: +SKIP
    >>> outs = run(api, "gov-policy", qs, Path("out.jsonl"), k=5)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from qingliang.platform.errors import ApiError, NotFound, QingliangError, from_status
from qingliang.platform.lifecycle.evaluation.questions import IMAGE_TYPES, Question

log = logging.getLogger(__name__)

KINDS = ("graph", "kb")
#: The citation fields an output line keeps (the contract in docs/eval.md).
CITATION_FIELDS = ("doc_id", "source", "text", "record", "title", "kb", "score")
#: Run statuses that mean the graph gave no answer.
FAILED = frozenset({"failed", "stopped"})


class PlatformApi:
    """The platform's HTTP API at ``base_url`` (``http://host:port``, no ``/v1``).

    Args:
        base_url: Where the gateway listens.
        api_key: Sent as ``Authorization: Bearer``; None when auth is off.
        client: An ``httpx.Client`` to use instead (tests pass the app's TestClient).
        timeout_s: Per request; an agent run may take minutes on CPU.
    """

    def __init__(
        self,
        base_url: str = "",
        api_key: str | None = None,
        *,
        client: Any = None,
        timeout_s: float = 900,
    ) -> None:
        import httpx

        self.base_url = base_url or str(getattr(client, "base_url", ""))
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own = client is None
        self._http = client or httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(timeout_s, connect=10)
        )

    def close(self) -> None:
        if self._own:
            self._http.close()

    def request(self, verb: str, path: str, body: dict | None = None) -> Any:
        """The JSON answer; an ``ApiError`` for an HTTP error, ``QingliangError`` unreachable."""
        import httpx

        try:
            response = self._http.request(verb, path, json=body, headers=self._headers)
        except httpx.TransportError as exc:
            raise QingliangError(f"cannot reach the platform at {self.base_url} ({exc})") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code < 400:
            return data
        error = data.get("error") if isinstance(data, dict) else None
        error = error if isinstance(error, dict) else {}
        message = error.get("message") or response.text[:500] or f"HTTP {response.status_code}"
        raise from_status(response.status_code, str(message), param=error.get("param"))

    def names(self, kind: str) -> list[str]:
        """The applied graphs (``graph``) or knowledge bases (``kb``) the key can see."""
        path = "/v1/agents" if kind == "graph" else "/v1/knowledge"
        try:
            data = self.request("GET", path)
        except ApiError as exc:
            if isinstance(exc, NotFound) or exc.status_code == 501:
                return []  # a platform without that area
            raise
        return [str(item["id"]) for item in (data or {}).get("data") or []]


def detect_kind(api: PlatformApi, target: str, kind: str | None = None) -> str:
    """``graph`` or ``kb``: what ``target`` is on the platform (``kind`` when it is both).

    Raises:
        QingliangError: an unknown kind, a target that is neither (the known ones listed),
            one that is both without ``kind``, or ``kind`` naming what it is not.
    """
    if kind is not None and kind not in KINDS:
        raise QingliangError(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    known = {k: api.names(k) for k in ((kind,) if kind else KINDS)}
    found = [k for k in known if target in known[k]]
    if kind is not None:
        if kind not in found:
            listed = ", ".join(known[kind]) or "none"
            what = "agent graph" if kind == "graph" else "knowledge base"
            raise QingliangError(f"no {what} {target!r} on the platform; known: {listed}")
        return kind
    if not found:
        graphs, kbs = ", ".join(known["graph"]) or "none", ", ".join(known["kb"]) or "none"
        raise QingliangError(
            f"{target!r} is neither an agent graph nor a knowledge base on the platform "
            f"(graphs: {graphs}; knowledge bases: {kbs})"
        )
    if len(found) > 1:
        raise QingliangError(
            f"{target!r} is both an agent graph and a knowledge base: say which with --kind"
        )
    return found[0]


def _citation(c: dict[str, Any]) -> dict[str, Any]:
    out = {key: c.get(key) for key in CITATION_FIELDS}
    if c.get("context") is not None:
        out["context"] = c["context"]
    return out


def _data_url(path: Path) -> str:
    mime = IMAGE_TYPES[path.suffix.lower()]
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _output(q: Question, started: float) -> dict[str, Any]:
    return {
        "id": q.id,
        "answer": None,
        "citations": [],
        "route": None,
        "fields": {},
        "latency_s": round(time.monotonic() - started, 3),
    }


def ask_kb(api: PlatformApi, kb: str, q: Question, k: int = 5) -> dict[str, Any]:
    """Search ``kb`` with the question (and its image): the top ``k`` hits as citations."""
    started = time.monotonic()
    body: dict[str, Any] = {"query": q.question, "limit": k}
    if q.image is not None:
        body["image"] = _data_url(q.image)
    data = api.request("POST", f"/v1/knowledge/{quote(kb, safe='')}/search", body)
    out = _output(q, started)
    out["citations"] = [_citation(c) for c in (data or {}).get("citations") or []]
    return out


def form_values(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The values a run's form tools hold, flattened (``{"department": "民政局", …}``).

    Read from the run's events: each successful form-tool call (its result starts
    ``Form '<tool>':``) adds its arguments; the final status event's ``forms`` (what the
    forms hold), a node's ``results`` with form ``values`` and the forms a waiting run
    shows (``pending.forms``, already checked) come last.
    """
    fields: dict[str, Any] = {}
    for e in events:
        kind = e.get("type")
        if kind == "tool" and not e.get("error") and isinstance(e.get("arguments"), dict):
            if str(e.get("result") or "").startswith(f"Form {str(e.get('tool'))!r}:"):
                fields.update(e["arguments"])
        elif kind == "status":
            for values in (e.get("forms") or {}).values():  # what the run's forms hold
                if isinstance(values, dict):
                    fields.update(values)
            for data in (e.get("results") or {}).values():
                if isinstance(data, dict) and isinstance(data.get("values"), dict):
                    fields.update(data["values"])
            for values in ((e.get("pending") or {}).get("forms") or {}).values():
                if isinstance(values, dict):
                    fields.update(values)
    return fields


def ask_graph(api: PlatformApi, graph: str, q: Question) -> dict[str, Any]:
    """Run ``graph`` on the question (its image as an attachment) to its end or approval."""
    started = time.monotonic()
    body: dict[str, Any] = {"input": q.question, "stream": False}
    if q.domain is not None:
        body["domain"] = q.domain
    if q.image is not None:
        data = base64.b64encode(q.image.read_bytes()).decode("ascii")
        body["attachments"] = [{"name": q.image.name, "data": data}]
    run = api.request("POST", f"/v1/agents/{quote(graph, safe='')}/runs", body) or {}
    out = _output(q, started)
    events = list(run.get("events") or [])
    citations: list[dict[str, Any]] = []
    for e in events:
        if e.get("type") == "citations":
            citations += [_citation(c) for c in e.get("citations") or []]
        elif e.get("type") == "route" and out["route"] is None:
            out["route"] = e.get("arm")
    out.update(
        answer=run.get("answer"),
        citations=citations,
        fields=form_values(events),
        run_id=run.get("id"),
        status=run.get("status"),
    )
    if run.get("status") in FAILED:
        out["error"] = f"run {run.get('status')}: {run.get('reason') or 'no reason given'}"
    return out


def ask(api: PlatformApi, target: str, kind: str, q: Question, k: int) -> dict[str, Any]:
    """One question's output line; a failure becomes its ``error`` (never raised)."""
    started = time.monotonic()
    try:
        return ask_graph(api, target, q) if kind == "graph" else ask_kb(api, target, q, k)
    except (QingliangError, OSError) as exc:
        log.debug("question %s failed: %s", q.id, exc)
        out = _output(q, started)
        status = f"HTTP {exc.status_code}: " if isinstance(exc, ApiError) else ""
        out["error"] = f"{status}{exc}"
        return out


class _OrderedWriter:
    """Writes outputs in input order, each as soon as all before it are written."""

    def __init__(self, path: Path, total: int) -> None:
        self._file = path.open("w", encoding="utf-8")
        self._waiting: dict[int, dict[str, Any]] = {}
        self._next = 0
        self._lock = threading.Lock()
        self.outputs: list[dict[str, Any] | None] = [None] * total

    def put(self, index: int, out: dict[str, Any]) -> None:
        with self._lock:
            self.outputs[index] = out
            self._waiting[index] = out
            while self._next in self._waiting:
                line = json.dumps(self._waiting.pop(self._next), ensure_ascii=False)
                self._file.write(line + "\n")
                self._next += 1
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def run(
    api: PlatformApi,
    target: str,
    questions: Sequence[Question],
    out_path: Path,
    *,
    kind: str,
    k: int = 5,
    concurrency: int = 1,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Ask every question, write ``out_path`` (JSONL, input order); the outputs.

    Args:
        api: The platform.
        target: The graph or knowledge base (``kind`` says which: :func:`detect_kind`).
        questions: From :func:`~.questions.read_questions`.
        out_path: Written as answers arrive (its folder is created).
        kind: ``graph`` or ``kb``.
        k: How many hits a knowledge-base search returns.
        concurrency: Questions in flight at once (at least 1).
        on_done: Called with each output as it arrives (a progress bar).
    """
    if concurrency < 1:
        raise QingliangError(f"--concurrency must be at least 1, not {concurrency}")
    if kind not in KINDS:
        raise QingliangError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = _OrderedWriter(out_path, len(questions))

    def one(index: int) -> None:
        out = ask(api, target, kind, questions[index], k)
        writer.put(index, out)
        if on_done is not None:
            on_done(out)

    try:
        if concurrency == 1:
            for i in range(len(questions)):
                one(i)
        else:
            with ThreadPoolExecutor(concurrency, thread_name_prefix="eval") as pool:
                list(pool.map(one, range(len(questions))))
    finally:
        writer.close()
    return [o for o in writer.outputs if o is not None]
