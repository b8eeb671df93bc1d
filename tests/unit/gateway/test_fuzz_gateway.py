"""Fuzzing the gateway's whole OpenAPI document (issue 13, "then prove it").

schemathesis generates requests for every operation of ``/openapi.json`` — bodies, path
and query parameters that fit the schema, and ones that do not — and sends them to the
gateway app built with its real stores: API keys in SQLite (an admin key in the
``Authorization`` header), a KnowledgeService over embedded Qdrant with one synced KB (a
small hashing embedder at the narrow boundary), an AgentService with the ``desk`` and
``echo`` graphs of ``test_agents_api`` (a scripted chat model), a PipelineService whose
executor refuses to run steps, and the fake model backend of ``test_gateway``.

Properties, for every request:

* no 5xx, ever;
* every 4xx is OpenAI's error format, ``{"error": {"message", "type", "param", "code"}}``;
* no file outside the data directory is touched: a sentinel tree beside it (secrets, a
  decoy ``state.sqlite``), the KB's source folder (with a symlink out of it), the agent's
  SQL database and the data directory's own files other than databases and stores are
  hashed before and after each request.

Generation is deterministic (``derandomize``), bounded per operation and without an
example database, so CI sends the same requests every time: about 4,200 over the 35
operations, in about a minute on two cores. Path parameters and body ``model`` fields
are steered towards real names (the KB, the graphs, a run, the deployments, traversal
attempts at the sentinel) and hostile ones (past the file-name limit, a NUL byte), and
extension-less uploads get text or traversal names, so the fuzzer gets past the 404s
into the code behind them. ``pytest -s`` prints what was
sent and answered, by operation.

A 5xx found here is a bug, to be fixed where it is. Found so far and fixed: Starlette's
own refusals and unhandled exceptions outside OpenAI's format, and cancelling a pipeline
run whose id is longer than a file name or holds a NUL byte (a 500, found while reading
what the fuzzer left in the data directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from fastapi.testclient import TestClient
from schemathesis import GenerationMode
from schemathesis.core import NotSet
from schemathesis.generation.meta import TestPhase

from qingliang.agents.api import LocalAgents
from qingliang.knowledge.api import LocalKnowledge
from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.control.apply import Controller
from qingliang.platform.errors import ResolveError
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.gateway.operator.demo_jobs import DemoJobs
from qingliang.platform.gateway.operator.operations import Operations
from qingliang.platform.lifecycle.pipelines.executor import Resources, StepFailed
from qingliang.platform.lifecycle.pipelines.service import PipelineService
from qingliang.platform.settings import Settings
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.plan import HardwareProfile
from tests.unit.agents.test_agents_api import make_service
from tests.unit.gateway.test_gateway import EMBED_MODEL, ENTRIES, FakeBackend, FakeEmbedder
from tests.unit.knowledge.test_knowledge_service import BigramEmbedder, _manifest

#: Examples per operation in the fuzzing phase (schema-valid and schema-breaking ones mixed);
#: the coverage phase adds every boundary and wrong type the schema defines.
MAX_EXAMPLES = 50
KB = "policy"
#: Real values a generated path parameter is swapped for (the generated one is kept as
#: often as each of these is used), so requests get past the 404s.
REAL = {
    "kb": [KB],
    "name": ["desk", "echo"],
    "model_id": ["qwen", "qwen:sql", EMBED_MODEL],
    "doc": ["kept.md", "policy.md", "../../sentinel/secret.txt"],
}
#: Path segments no generator draws often: past the file-name limit, a NUL byte.
HOSTILE = ["x" * 300, "a" * 255, "\x00"]
#: Where HOSTILE is left out (none: the cancel route's lock-file bug is fixed).
KNOWN_BUGS: set[str] = set()
MODELS = {"/v1/chat/completions": "qwen", "/v1/completions": "tiny", "/v1/embeddings": EMBED_MODEL}
#: Files in the data directory that requests may write: databases, Qdrant's store, snapshots.
WRITABLE = ("knowledge", "snapshots", "uploads", "pipelines", "agents", "runs")
ERROR_KEYS = {"message", "type", "param", "code"}


class RefusingExecutor:
    """Pipeline steps never run here: a fake at the executor boundary."""

    def stream(
        self, fn: Any, kwargs: Mapping[str, Any], resources: Resources = Resources()
    ) -> Iterator[dict[str, Any]]:
        raise StepFailed("steps do not run in the fuzz test")


class _NoAuth:
    enabled = False

    def verify(self, token: str) -> None:
        return None


def _quiet_job(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A demo job's process that does nothing (the real one runs the CLI)."""
    return subprocess.Popen([sys.executable, "-c", "pass"], stdout=subprocess.PIPE, text=True)


def _document() -> dict[str, Any]:
    """The gateway's OpenAPI document, as built with every area mounted."""
    app = create_app(
        FakeBackend(list(ENTRIES)),
        FakeEmbedder(),
        _NoAuth(),
        knowledge=LocalKnowledge(None),
        agents=LocalAgents(None),
        pipelines=object(),
        ops=Operations(Path("."), serve_details=dict),
        demos=DemoJobs(Path(".")),
    )
    return app.openapi()


schema = schemathesis.openapi.from_dict(_document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=MAX_EXAMPLES,
    deterministic=True,
    database="none",
    with_security_parameters=False,
)
# Coverage: every boundary and wrong type the schema defines; fuzzing: MAX_EXAMPLES more.
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
#: Values known only once the stores exist (a run id), filled in by the ``env`` fixture.
KNOWN: dict[str, list[str]] = {}


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    if not isinstance(path_parameters, dict):
        return st.just(path_parameters)
    options = [path_parameters]
    hostile = [] if context.operation.path in KNOWN_BUGS else HOSTILE
    for name in path_parameters:
        for value in REAL.get(name, []) + KNOWN.get(name, []) + hostile:
            options.append({**path_parameters, name: value})
    return st.sampled_from(options) if len(options) > 1 else st.just(path_parameters)


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    model = MODELS.get(context.operation.path)
    if model is None or not isinstance(body, dict):
        return st.just(body)
    return st.sampled_from([body, {**body, "model": model}])


# --------------------------------------------------------------------------- the stores


@dataclass
class Env:
    client: TestClient
    home: Path
    outside: list[Path]
    protected: dict[str, str]
    #: Requests sent, by operation and by the status they got.
    calls: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)


def _tree(root: Path, skip: Any = lambda _path: False) -> dict[str, str]:
    """Every entry below ``root`` (files by content hash, links by target, folders) but
    those ``skip`` says to leave out (and what is below them)."""
    out: dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not skip(Path(folder, d))]
        for name in dirs + [f for f in files if not skip(Path(folder, f))]:
            path = Path(folder, name)
            key = str(path)
            if path.is_symlink():
                out[key] = "link:" + os.readlink(path)
            elif path.is_file():
                out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[key] = "dir"
    return out


def _own_files(home: Path) -> dict[str, str]:
    """The data directory's files that no request may change: not databases, not stores."""

    def writable(path: Path) -> bool:
        # (.deployments.lock: the admin's apply and delete take the Controller's lock)
        return (
            ".sqlite" in path.name
            or path.name.endswith(".lock")
            or path.relative_to(home).parts[0] in WRITABLE
        )

    return {k: v for k, v in _tree(home, writable).items() if v != "dir"}


def _outside(env: Env) -> dict[str, str]:
    out: dict[str, str] = {}
    for root in env.outside:
        out.update(_tree(root))
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("fuzz")
    home = root / "home"
    home.mkdir(mode=0o700)
    # Beside the data directory: what a path traversal would reach for.
    sentinel = root / "sentinel"
    (sentinel / "nested").mkdir(parents=True)
    (sentinel / "secret.txt").write_text("do not read, do not delete\n")
    (sentinel / "state.sqlite").write_bytes(b"SQLite format 3\x00 decoy")
    (sentinel / "nested" / "deep.md").write_text("# deep\n\nnothing to see\n")
    project = root / "project"
    docs = project / "docs"
    docs.mkdir(parents=True)
    (docs / "policy.md").write_text(
        "# Clinics\n\n## Hours\n\nClinics open at 8 and close at 17.\n\n"
        "## Masks\n\nMasks are sold at pharmacies.\n",
        encoding="utf-8",
    )
    (docs / "leak.md").symlink_to(sentinel / "secret.txt")  # sync must not follow it

    keys = KeyStore(home / "state.sqlite")
    admin = keys.create("fuzz", scopes=("admin",))[1]
    (home / "api-key").write_text(admin + "\n")
    (home / "api-key").chmod(0o600)

    knowledge = KnowledgeService(home, embedder_factory=lambda _m: BigramEmbedder())
    knowledge.register(_manifest(KB, docs, tenant="default"), base=docs)
    knowledge.sync(KB)
    knowledge.upload(KB, "kept.md", b"# Kept\n\nAn uploaded note.\n")
    agents, _router = make_service(home, project / "desk")
    pipelines = PipelineService(home, RefusingExecutor())
    app = create_app(
        FakeBackend(list(ENTRIES)),
        FakeEmbedder(),
        KeyAuth(home / "state.sqlite", True),
        knowledge=LocalKnowledge(knowledge),
        agents=LocalAgents(agents),
        pipelines=pipelines,
        # Serve's details and a demo job's process are the boundaries faked here.
        ops=Operations(
            home,
            serve_details=dict,
            settings=lambda: Settings(home=home),
            controller=_controller,
        ),
        demos=DemoJobs(home, launcher=_quiet_job, environ=dict),
    )
    assert app.openapi() == schema.raw_schema, "the fuzzed document is not the app's"
    with TestClient(app, headers={"Authorization": f"Bearer {admin}"}) as client:
        r = client.post("/v1/agents/echo/runs", json={"input": "hello", "stream": False})
        assert r.status_code == 200, r.text
        KNOWN["run_id"] = [r.json()["id"]]
        state = Env(client, home, [sentinel, project], _own_files(home))
        state.protected.update(_outside(state))
        yield state
        client.portal.call(agents.close)
    knowledge.close()
    _report(state)


class _Deployer:
    """Serve, at the admin routes' Controller: accepts any config, reports nothing."""

    def apply_config(self, config: dict) -> None:
        pass

    def statuses(self) -> dict[str, tuple[str, str]]:
        return {}


def _no_weights(source: Any, cache: Any, progress: Any) -> Path:
    raise ResolveError(f"fuzz: no weights for {source}")


def _controller(settings: Settings) -> Controller:
    """The admin's apply and delete, with Serve and the model download faked."""
    return Controller(
        settings,
        deployer=_Deployer(),
        profile=HardwareProfile(cpu_isa="avx2", vllm=True),
        resolver=_no_weights,
    )


def _report(env: Env) -> None:
    """What was sent, by operation and status (``pytest -s`` shows it)."""
    lines = [
        f"fuzzed {sum(env.calls.values())} requests over {len(env.calls)} operations; "
        f"{len(env.protected)} files and links checked unchanged after each"
    ]
    for operation, n in sorted(env.calls.items()):
        got = ", ".join(f"{s}: {c}" for s, c in sorted(env.statuses[operation].items()))
        lines.append(f"  {n:5d}  {operation}  ({got})")
    print("\n".join(lines))


# ---------------------------------------------------------------------- the properties


#: Names an upload without an extension is given instead (chosen by its bytes' CRC):
#: text the KB ingests, and names that try to climb out of the upload folder.
UPLOAD_NAMES = ("fuzz.txt", "notes.md", "../../../sentinel/secret.txt", "/tmp/../etc/x.md")


def _renamed(part: Any) -> Any:
    name, value = part
    if isinstance(value, tuple) and isinstance(value[0], str) and "." not in value[0]:
        data = value[1] if isinstance(value[1], bytes) else str(value[1]).encode()
        new = UPLOAD_NAMES[zlib.crc32(data) % len(UPLOAD_NAMES)]
        return name, (new, *value[1:])
    return part


def _send(client: TestClient, kwargs: dict[str, Any]) -> Any:
    """A request as schemathesis serialises it for ``requests``: prepared (encoded) by
    ``requests``, as it would go on the wire, then sent with the app's TestClient."""
    files = kwargs.get("files")
    if isinstance(files, list):
        files = [_renamed(part) for part in files]
    prepared = requests.Request(
        method=kwargs["method"],
        url=kwargs["url"],
        headers=kwargs.get("headers"),
        params=kwargs.get("params"),
        json=kwargs.get("json"),
        data=kwargs.get("data"),
        files=files,
    ).prepare()
    body = prepared.body
    headers = {k: v for k, v in prepared.headers.items() if k.lower() != "content-length"}
    return client.request(
        prepared.method or "GET",
        prepared.url or "/",
        headers=headers,
        content=body.encode() if isinstance(body, str) else body,
    )


def _described(case: Any, response: Any = None) -> str:
    body = case.body if not isinstance(case.body, NotSet) else None
    sent = json.dumps(body, default=repr)[:800] if body is not None else "(no body)"
    what = f"{case.method} {case.formatted_path} query={case.query} body={sent}"
    if response is not None:
        what += f"\n→ {response.status_code} {response.text[:800]}"
    return what


def _aim(case: Any) -> None:
    """In the coverage phase (which hooks do not reach), name a real model unless the case
    is about ``model`` itself, so each malformed field gets past the model lookup."""
    model = MODELS.get(case.operation.path)
    phase = case.meta.phase if case.meta is not None else None
    if model is None or phase is None or phase.name != TestPhase.COVERAGE:
        return
    target = getattr(phase.data, "location", None) or ""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str) and "/model" not in target:
        case.body = {**body, "model": model}


@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_fuzz_gateway(case: Any, env: Env) -> None:
    _aim(case)
    try:
        response = _send(env.client, case.as_transport_kwargs(base_url="http://testserver"))
    except Exception as exc:  # TestClient re-raises what the app did not handle: a 500
        raise AssertionError(f"server error ({type(exc).__name__}):\n{_described(case)}") from exc
    operation = case.operation.label  # unexpected methods count with the operation
    env.calls[operation] += 1
    env.statuses.setdefault(operation, Counter())[response.status_code] += 1
    what = _described(case, response)
    assert response.status_code < 500, f"server error:\n{what}"
    if 400 <= response.status_code < 500:
        answer = response.json()
        assert isinstance(answer, dict) and set(answer) == {"error"}, what
        error = answer["error"]
        assert set(error) == ERROR_KEYS, what
        assert isinstance(error["message"], str) and isinstance(error["type"], str), what
        assert error["param"] is None or isinstance(error["param"], str), what
    now = _own_files(env.home)
    now.update(_outside(env))
    changed = sorted(k for k in set(now) | set(env.protected) if now.get(k) != env.protected.get(k))
    assert changed == [], f"files outside the data directory touched: {changed}\n{what}"


def test_the_sentinels_are_where_a_traversal_would_reach(env: Env) -> None:
    """The fuzzer's path tricks are aimed at real files: a delete of ``../`` paths
    answers 404 and the sentinel stays."""
    for doc in ("../../sentinel/secret.txt", "%2E%2E/%2E%2E/sentinel/secret.txt", "leak.md"):
        r = env.client.delete(f"/v1/knowledge/{KB}/documents/{doc}")
        assert r.status_code == 404, r.text
    assert (env.home.parent / "sentinel" / "secret.txt").read_text().startswith("do not")
    with sqlite3.connect(env.home / "state.sqlite") as db:
        # The fuzzer's own key is still there and live (it may have made others through
        # POST /v1/keys, an admin's right; it never revokes its own: 409).
        live = "SELECT count(*) FROM api_keys WHERE name = 'fuzz' AND revoked_at IS NULL"
        assert db.execute(live).fetchone()[0] == 1


@pytest.mark.parametrize(
    "run_id",
    [
        pytest.param("x" * 300, id="300-chars"),
        pytest.param("a" * 255, id="255-chars"),
        pytest.param("%00", id="nul"),
        pytest.param("run_nope", id="plain"),
    ],
)
def test_cancelling_an_unknown_pipeline_run_is_404(env: Env, run_id: str) -> None:
    """Found after the fuzzer: cancel opened ``locks/<run_id>.lock`` before it looked the
    run up (a 500 for ids past the file-name limit or with a NUL, a lock file left behind
    for every other unknown id)."""
    locks = env.home / "pipelines" / "locks"
    before = sorted(locks.iterdir()) if locks.is_dir() else []
    r = env.client.post(f"/v1/pipelines/{run_id}/cancel", json={})
    assert r.status_code == 404, r.text
    assert (sorted(locks.iterdir()) if locks.is_dir() else []) == before
