"""Fault injection on the running platform (issue 13): real Ray, real SIGKILLs.

Each test breaks one part of the session's platform (see conftest.py) while it works and
checks what a client sees — a complete answer or a clear error, never a hang (every call
has a client timeout, every wait a deadline) — and that the part comes back whole:

1. the model replica dies mid-stream;
2. the knowledge replica dies mid-sync (no document lost or duplicated afterwards);
3. the agents replica dies while a run waits for approval, and again while the run's
   ``submit`` tool writes its row (the row is written exactly once);
4. the gateway replica dies under concurrent load (and, xfail'd, a request in flight on
   it gets Ray Serve's proxy's bare 500 rather than a retryable 503);
5. another process holds ``state.sqlite``'s write lock for seconds.

Each test prints one ``FAULT ...`` line with its request and error counts (``-s`` shows
them; bench/RESULTS.md's Reliability section quotes them).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _platform import Platform

from qingliang.platform.gateway.services import HELPERS
from qingliang.platform.storage.keys import KeyStore

pytestmark = pytest.mark.integration

GATEWAY_APP = "qingliang-gateway"
HI = [{"role": "user", "content": "hello there, how are you"}]
#: No byte for this long on an open response counts as a hang.
READ_TIMEOUT_S = 30.0
#: How long Serve may take to replace a killed replica (vLLM's engine start included).
REPLACE_S = 240.0


# --------------------------------------------------------------------------- helpers


def _replica(p: Platform, app: str, deployment: str) -> dict:
    """The one running replica of ``deployment`` in ``app`` (its pid, replica_id ...)."""
    reps = p.serve_status()[app]["deployments"][deployment]["replicas"]
    running = [r for r in reps if r.get("state") == "RUNNING"]
    assert len(running) == 1, reps
    return running[0]


def _kill(replica: dict) -> float:
    os.kill(int(replica["pid"]), signal.SIGKILL)
    return time.monotonic()


def _wait_replaced(p: Platform, app: str, deployment: str, old: dict, timeout_s: float) -> dict:
    """The new running replica once Serve has replaced ``old`` and reports it healthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            dep = p.serve_status()[app]["deployments"][deployment]
            new = [
                r
                for r in dep["replicas"]
                if r.get("state") == "RUNNING" and r["replica_id"] != old["replica_id"]
            ]
            if dep["status"] == "HEALTHY" and new:
                return new[0]
        except (KeyError, ValueError, httpx.HTTPError):
            pass  # the dashboard may answer without the app for a moment
        assert time.monotonic() < deadline, f"{app}/{deployment} not replaced in {timeout_s} s"
        time.sleep(0.5)


def _client(p: Platform, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=p.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(60.0, read=READ_TIMEOUT_S),
    )


class Sse:
    """What one streamed response said: its events, ``[DONE]``, or how it was cut."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.done = False
        self.cut: str | None = None  # the transport error that ended it, if one did

    @property
    def errors(self) -> list[dict]:
        return [e for e in self.events if "error" in e]

    def read(self, response: httpx.Response, on_event: Callable[[dict], None] | None = None) -> Sse:
        """Read ``response`` to its end; a read timeout (a hang) is raised, not recorded."""
        try:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    self.done = True
                    continue
                event = json.loads(data)
                self.events.append(event)
                if on_event is not None:
                    on_event(event)
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as exc:  # the connection ended mid-response
            self.cut = type(exc).__name__
        return self


def _finished(events: list[dict]) -> bool:
    return any(c.get("finish_reason") for e in events for c in e.get("choices") or ())


def _report(fault: str, **counts: Any) -> None:
    print(f"\nFAULT {fault}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


@pytest.fixture(scope="module")
def approver(platform: Platform) -> str:
    """A second admin key: the key that starts a run may not approve it, and runs started
    by an admin key belong to no tenant, which only an admin key reaches."""
    return KeyStore(platform.settings.state_db).create("it-faults-approver", scopes=["admin"])[1]


# ------------------------------------------------------------------ 1. model replica


def test_model_replica_killed_mid_stream_ends_the_stream_clearly(
    platform: Platform, http: httpx.Client
) -> None:
    replica = _replica(platform, "tiny", "ModelServer")
    body = {
        "model": "tiny",
        "messages": HI,
        "max_tokens": 200,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    killed: list[float] = []

    def kill_on_second_chunk(_event: dict) -> None:
        if not killed and len(sse.events) >= 2:
            killed.append(_kill(replica))

    def unstreamed() -> tuple[httpx.Response, float]:
        # Waiting for its whole answer when the replica dies: the gateway retries it once.
        with _client(platform, platform.key) as c:
            r = c.post("/v1/chat/completions", json={**body, "stream": False}, timeout=REPLACE_S)
            return r, time.monotonic()

    sse = Sse()
    timeout = httpx.Timeout(60.0, read=READ_TIMEOUT_S)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(unstreamed)
        with http.stream("POST", "/v1/chat/completions", json=body, timeout=timeout) as r:
            assert r.status_code == 200, r.read()
            sse.read(r, kill_on_second_chunk)
        ended_s = time.monotonic() - killed[0]
        other, answered_at = waiting.result(timeout=REPLACE_S + 10)
    # The unstreamed request is answered (retried on the new replica), or told to retry.
    assert other.status_code == 200 or (
        other.status_code == 503 and "retry-after" in other.headers
    ), other.text
    assert not _finished(sse.events), "the answer ended before the kill landed: inconclusive"
    # A clear end: an error event, then [DONE]; or the connection closed. Never silence.
    assert (sse.errors and sse.done) or sse.cut, (sse.events[-3:], sse.done)
    if sse.errors:
        err = sse.errors[0]["error"]
        assert err["message"] and err["type"], err
    assert ended_s < READ_TIMEOUT_S

    # The next requests are answered once Serve has replaced the replica.
    sent, statuses = 0, Counter()
    deadline = time.monotonic() + REPLACE_S
    while True:
        sent += 1
        try:
            r = http.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": HI, "max_tokens": 8, "temperature": 0},
                timeout=REPLACE_S,
            )
            statuses[r.status_code] += 1
            if r.status_code == 200:
                assert r.json()["choices"][0]["message"]["content"]
                break
            assert r.status_code == 503 and "retry-after" in r.headers, r.text
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as exc:
            statuses[type(exc).__name__] += 1
        assert time.monotonic() < deadline, statuses
        time.sleep(1)
    recovered_s = time.monotonic() - killed[0]
    new = _wait_replaced(platform, "tiny", "ModelServer", replica, REPLACE_S)
    assert new["pid"] != replica["pid"]
    _report(
        "model-replica-mid-stream",
        streamed_chunks=len(sse.events),
        stream_end="error event + [DONE]" if sse.errors else f"connection closed ({sse.cut})",
        error=sse.errors[0]["error"]["message"] if sse.errors else None,
        stream_ended_after_kill_s=round(ended_s, 2),
        unstreamed_in_flight=other.status_code,
        unstreamed_answered_after_kill_s=round(answered_at - killed[0], 1),
        requests_after=sent,
        statuses_after=dict(statuses),
        answered_after_kill_s=round(recovered_s, 1),
    )


# -------------------------------------------------------------- 2. knowledge replica

KB = "it-faults-kb"
KB_FILES = 400


def _kb_folder(root: Path) -> Path:
    """Many small Markdown files: a sync that takes seconds, one chunk-sized text each."""
    folder = root / "docs"
    folder.mkdir()
    for i in range(KB_FILES):
        (folder / f"notice-{i:04d}.md").write_text(
            f"# 第{i}号通知\n\n## 办理时间\n\n第{i}街道社区服务中心自下周一起延长开放时间至晚上"
            f"{i % 4 + 7}点，居民可办理居住证、社保卡和第{i}类证明。\n",
            encoding="utf-8",
        )
    return folder


def _expected(body: dict, folder: Path) -> dict[str, int]:
    """Chunks per document a clean sync writes: the same ingest, run here."""
    from qingliang.knowledge.ingest import IngestOptions, ingest_paths
    from qingliang.knowledge.manifest import KnowledgeBase

    spec = KnowledgeBase.model_validate(body).spec
    report = ingest_paths(sorted(folder.iterdir()), IngestOptions.from_spec(spec))
    assert not report.errors, report.errors[:3]
    per_doc: Counter[str] = Counter()
    for chunk in report.chunks:
        per_doc[Path(chunk.location.source).name] += 1
    return dict(per_doc)


def test_knowledge_replica_killed_mid_sync_loses_and_duplicates_nothing(
    platform: Platform, tmp_path: Path
) -> None:
    folder = _kb_folder(tmp_path)
    body = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": KB},
        "spec": {
            "sources": [{"folder": str(folder)}],
            "labels": {"domain": "gov"},
            "store": {"collection": KB, "path": f"knowledge/{KB}"},
        },
    }
    platform.ctl.apply(
        [platform.manifest(KB, yaml.safe_dump(body, allow_unicode=True))],
        wait=False,
        progress=False,
    )
    expected = _expected(body, folder)
    assert len(expected) == KB_FILES
    replica = _replica(platform, GATEWAY_APP, HELPERS)
    outcome: dict[str, Any] = {}

    def first_sync() -> None:
        with _client(platform, platform.key) as c:
            try:
                r = c.post(f"/v1/knowledge/{KB}/sync", json={}, timeout=REPLACE_S)
                outcome["status"], outcome["body"] = r.status_code, r.json()
            except httpx.TransportError as exc:
                outcome["error"] = type(exc).__name__

    syncing = threading.Thread(target=first_sync)
    syncing.start()
    partial, polls = 0, 0
    with _client(platform, platform.key) as c:
        deadline = time.monotonic() + 120
        # Kill once part of the KB is written: some batches in the store, not all.
        while partial < KB_FILES // 4:
            assert time.monotonic() < deadline, "the sync wrote nothing in 120 s"
            assert syncing.is_alive(), f"the sync ended before it could be killed: {outcome}"
            polls += 1
            r = c.get(f"/v1/knowledge/{KB}", timeout=10)
            if r.status_code == 200:
                partial = r.json()["chunks"]
            time.sleep(0.1)
        killed = _kill(replica)
        syncing.join(timeout=READ_TIMEOUT_S)
        assert not syncing.is_alive(), "the interrupted sync request hangs"
        ended_s = time.monotonic() - killed
        assert partial < sum(expected.values()), "the sync finished before the kill"
        # The client is told: 503 (the deployment is temporarily unavailable) or a cut.
        assert outcome.get("status") == 503 or "error" in outcome, outcome
        if "status" in outcome:
            assert "unavailable" in outcome["body"]["error"]["message"], outcome

        _wait_replaced(platform, GATEWAY_APP, HELPERS, replica, 120)
        # What the killed sync left: at least what was seen written (SIGKILL loses no
        # acknowledged write), not all of it.
        kept = c.get(f"/v1/knowledge/{KB}", timeout=60).json()["chunks"]
        assert partial <= kept < sum(expected.values()), (partial, kept)
        r = c.post(f"/v1/knowledge/{KB}/sync", json={}, timeout=REPLACE_S)
        assert r.status_code == 200, r.text
        resync = r.json()
        stats = c.get(f"/v1/knowledge/{KB}", timeout=60).json()
        docs = c.get(f"/v1/knowledge/{KB}/documents", timeout=60).json()["data"]
        again = c.post(f"/v1/knowledge/{KB}/sync", json={}, timeout=REPLACE_S).json()
    # Exactly what a clean sync of the folder writes: every document, each chunk once.
    assert stats["documents"] == KB_FILES, stats
    assert stats["chunks"] == sum(expected.values()), (stats["chunks"], kept)
    assert {Path(d["source"]).name: d["chunks"] for d in docs} == expected
    # The resync wrote what the killed one had not; the points it had written were kept
    # (their vectors were not embedded again), and a further sync changes nothing.
    assert resync["added"] == sum(expected.values()) - kept, (resync, kept)
    assert resync["updated"] == resync["deleted"] == 0, resync
    assert again["added"] == again["updated"] == again["deleted"] == again["embedded"] == 0
    _report(
        "knowledge-replica-mid-sync",
        documents=KB_FILES,
        chunks=stats["chunks"],
        chunks_seen_before_kill=partial,
        chunks_kept_after_kill=kept,
        stats_polls=polls,
        interrupted_sync=outcome.get("status", outcome.get("error")),
        ended_after_kill_s=round(ended_s, 2),
        resync_added=resync["added"],
        lost=0,
        duplicated=0,
    )


# ----------------------------------------------------------------- 3. agents replica

DESK = """apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {{name: it-faults-desk}}
spec:
  agents:
    - {{name: clerk, model: tiny, max_tokens: 4}}
  tools:
    - {{name: intake, kind: form, fields: [{{name: applicant}}]}}
    - {{name: file, kind: submit, form: intake, database: {db}}}
  nodes:
    - {{name: answer, type: agent, agent: clerk, next: review}}
    - {{name: review, type: approval, prompt: "File this request?", next: submit}}
    - {{name: submit, type: tool, tool: file}}
"""


def _rows(db: Path) -> list[dict]:
    with sqlite3.connect(db, timeout=10) as c:
        return [json.loads(v) for (v,) in c.execute("SELECT values_json FROM submissions")]


def test_agents_replica_killed_waiting_and_mid_submit_files_once(
    platform: Platform, approver: str, tmp_path: Path
) -> None:
    db = tmp_path / "requests.sqlite"
    platform.ctl.apply(
        [platform.manifest("it-faults-desk", DESK.format(db=db))], wait=False, progress=False
    )
    with _client(platform, platform.key) as starter, _client(platform, approver) as boss:
        r = starter.post(
            "/v1/agents/it-faults-desk/runs", json={"input": "办居住证", "stream": False}
        )
        assert r.status_code == 200, r.text
        run_id = r.json()["id"]
        assert r.json()["status"] == "waiting", r.json()

        # Kill 1: the run waits for a human; the replica holding it dies.
        replica = _replica(platform, GATEWAY_APP, HELPERS)
        _kill(replica)
        replica = _wait_replaced(platform, GATEWAY_APP, HELPERS, replica, 120)
        inbox = boss.get("/v1/agents/approvals").json()["data"]
        assert run_id in [a["run_id"] for a in inbox]

        # Kill 2: the approved run's `submit` tool is writing its row. Another writer holds
        # the requests database, so the tool waits inside its INSERT when the replica dies.
        lock = sqlite3.connect(db, isolation_level=None, timeout=1)
        lock.execute("BEGIN IMMEDIATE")
        resumed = Sse()
        submitting = threading.Event()

        def approve() -> None:
            body = {"action": "edit", "forms": {"intake": {"applicant": "李雷"}}, "stream": True}
            with boss.stream("POST", f"/v1/agents/runs/{run_id}/resume", json=body) as r:
                assert r.status_code == 200, r.read()
                resumed.read(r, lambda e: e.get("node") == "submit" and submitting.set())

        with ThreadPoolExecutor(1) as pool:
            approving = pool.submit(approve)
            try:
                assert submitting.wait(60), resumed.events
                time.sleep(0.5)  # into the tool's INSERT, which waits on the lock
                killed = _kill(replica)
                approving.result(timeout=READ_TIMEOUT_S)
            finally:
                lock.execute("ROLLBACK")
                lock.close()
        ended_s = time.monotonic() - killed
        # The approver's stream says the run was cut off: an error event, or a cut.
        assert (resumed.errors and resumed.done) or resumed.cut, resumed.events[-3:]
        assert not [e for e in resumed.events if e.get("type") == "tool"], resumed.events

        # The next replica continues the run from its checkpoint and files the form once.
        _wait_replaced(platform, GATEWAY_APP, HELPERS, replica, 120)
        deadline = time.monotonic() + 60
        while (run := boss.get(f"/v1/agents/runs/{run_id}").json())["status"] == "running":
            assert time.monotonic() < deadline, run
            time.sleep(0.5)
        assert run["status"] == "done", run
        kinds = [e["type"] for e in run["events"]]
        assert "recovered" in kinds, kinds
        again = boss.post(f"/v1/agents/runs/{run_id}/resume", json={"action": "approve"})
        assert again.status_code == 409, again.text
    assert _rows(db) == [{"applicant": "李雷"}]
    _report(
        "agents-replica-waiting-and-mid-submit",
        kills=2,
        resume_stream_end="error event + [DONE]"
        if resumed.errors
        else f"connection closed ({resumed.cut})",
        error=resumed.errors[0]["error"]["message"] if resumed.errors else None,
        ended_after_kill_s=round(ended_s, 2),
        run_status=run["status"],
        rows=len(_rows(db)),
    )


# ---------------------------------------------------------------- 4. gateway replica

CLIENTS = 4
PER_CLIENT = 6


def _one_chat(c: httpx.Client, stream: bool, bodies: list[str] | None = None) -> str:
    """``ok``, ``http <status>``, ``error event``, ``cut <error>`` or ``TIMEOUT`` (a hang);
    the start of a non-200 answer's body goes to ``bodies``."""
    body = {"model": "tiny", "messages": HI, "max_tokens": 24, "temperature": 0}

    def refused(r: httpx.Response) -> str:
        if bodies is not None:
            bodies.append(f"{r.status_code} {r.headers.get('content-type')}: {r.text[:200]}")
        return f"http {r.status_code}"

    try:
        if not stream:
            r = c.post("/v1/chat/completions", json=body)
            if r.status_code != 200:
                return refused(r)
            assert r.json()["choices"][0]["message"]["content"] is not None
            return "ok"
        with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            if r.status_code != 200:
                r.read()
                return refused(r)
            sse = Sse().read(r)
        if sse.cut:
            return f"cut {sse.cut}"
        if sse.errors:
            return "error event" if sse.done else "error event without [DONE]"
        return "ok" if sse.done and _finished(sse.events) else "ended silently"
    except httpx.TimeoutException:
        return "TIMEOUT"
    except httpx.TransportError as exc:
        return f"cut {type(exc).__name__}"


def test_gateway_replica_killed_under_load_never_hangs_a_client(platform: Platform) -> None:
    replica = _replica(platform, GATEWAY_APP, "Gateway")
    answered = threading.Semaphore(0)
    refusals: list[str] = []

    def client(i: int) -> list[str]:
        out = []
        with _client(platform, platform.key) as c:
            for j in range(PER_CLIENT):
                out.append(_one_chat(c, stream=(i + j) % 2 == 1, bodies=refusals))
                answered.release()
        return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, i) for i in range(CLIENTS)]
        for _ in range(CLIENTS):  # some answers in, the rest in flight or to come
            assert answered.acquire(timeout=120)
        killed = _kill(replica)
        results = [f.result(timeout=REPLACE_S) for f in futures]
    took_s = time.monotonic() - killed
    outcomes = Counter(o for per_client in results for o in per_client)
    assert sum(outcomes.values()) == CLIENTS * PER_CLIENT
    assert "TIMEOUT" not in outcomes, outcomes
    assert "ended silently" not in outcomes, outcomes
    assert "error event without [DONE]" not in outcomes, outcomes
    assert outcomes["ok"] >= CLIENTS, outcomes

    _wait_replaced(platform, GATEWAY_APP, "Gateway", replica, 120)
    with _client(platform, platform.key) as c:
        after = Counter(_one_chat(c, stream=s) for s in (False, True, False, True))
    assert after == {"ok": 4}, after
    _report(
        "gateway-replica-under-load",
        clients=CLIENTS,
        requests=CLIENTS * PER_CLIENT,
        outcomes=dict(outcomes),
        all_done_after_kill_s=round(took_s, 1),
        refusals=refusals,
        after_replacement=dict(after),
    )


@pytest.mark.xfail(
    strict=True,
    reason="Ray Serve's HTTP proxy answers 500 text/plain 'Internal Server Error' (not our "
    "OpenAI error JSON, no Retry-After) to a request in flight on a gateway replica that "
    "dies, where 503 with Retry-After (retryable) is due; the mapping is the proxy's "
    "(ray/serve/_private/http_util.py: RayActorError -> 500), ahead of the gateway",
)
def test_a_request_in_flight_on_a_dying_gateway_replica_gets_a_retryable_answer(
    platform: Platform,
) -> None:
    replica = _replica(platform, GATEWAY_APP, "Gateway")
    body = {"model": "tiny", "messages": HI, "max_tokens": 220, "ignore_eos": True}
    with _client(platform, platform.key) as c, ThreadPoolExecutor(1) as pool:
        sent = time.monotonic()
        answer = pool.submit(c.post, "/v1/chat/completions", json=body)
        time.sleep(0.3)  # the gateway is waiting for the model's answer
        if answer.done():
            pytest.skip(f"answered in {time.monotonic() - sent:.2f} s, before the kill")
        _kill(replica)
        try:
            r = answer.result(timeout=READ_TIMEOUT_S + 10)
            outcome = f"{r.status_code} {r.headers.get('retry-after')} {r.text[:200]}"
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as exc:
            r, outcome = None, f"cut {type(exc).__name__}"
    _wait_replaced(platform, GATEWAY_APP, "Gateway", replica, 120)
    _report("gateway-replica-request-in-flight", outcome=outcome)
    # A connection cut is clear too; a status must say "retry" (503 + Retry-After).
    assert r is None or (r.status_code == 503 and "retry-after" in r.headers), outcome


# ------------------------------------------------------------ 5. state.sqlite locked

LOCK_HOLD_S = 5.0


def test_state_db_write_locked_by_another_process_keeps_serving(platform: Platform) -> None:
    fresh = KeyStore(platform.settings.state_db).create("it-faults-fresh", scopes=["inference"])[1]
    lock = sqlite3.connect(platform.settings.state_db, isolation_level=None, timeout=5)
    requests: list[tuple[str, Callable[[httpx.Client], httpx.Response]]] = [
        ("models", lambda c: c.get("/v1/models")),
        (
            "chat",
            lambda c: c.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": HI, "max_tokens": 4, "temperature": 0},
            ),
        ),
        ("agents", lambda c: c.get("/v1/agents")),
        ("knowledge", lambda c: c.get("/v1/knowledge")),
        ("readyz", lambda c: c.get("/readyz")),
    ]
    statuses: Counter[str] = Counter()
    slowest = 0.0
    with _client(platform, platform.key) as admin, _client(platform, fresh) as new_key:
        lock.execute("BEGIN IMMEDIATE")
        lock.execute("UPDATE api_keys SET last_used_at = NULL")  # a real pending write
        held = time.monotonic()
        try:
            while time.monotonic() - held < LOCK_HOLD_S:
                for name, call in [
                    *requests,
                    ("first use of a key", lambda c: c.get("/v1/models")),
                ]:
                    c = new_key if name == "first use of a key" else admin
                    t = time.monotonic()
                    r = call(c)
                    slowest = max(slowest, time.monotonic() - t)
                    statuses[f"{name} {r.status_code}"] += 1
                    assert r.status_code in (200, 503), (name, r.status_code, r.text)
                    if r.status_code == 503:
                        assert int(r.headers["retry-after"]) >= 1, r.headers
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        for name, call in requests:
            r = call(admin)
            assert r.status_code == 200, (name, r.text)
        # Writes wait for no lock now: a new key is created and used at once.
        later = KeyStore(platform.settings.state_db).create("it-faults-later", scopes=["inference"])
        r = httpx.get(
            platform.base_url + "/models",
            headers={"Authorization": f"Bearer {later[1]}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    sent = sum(statuses.values())
    assert slowest < LOCK_HOLD_S, slowest  # no request waited for the lock to go
    _report(
        "state-db-write-locked",
        hold_s=LOCK_HOLD_S,
        requests=sent,
        statuses=dict(statuses),
        slowest_s=round(slowest, 2),
    )
