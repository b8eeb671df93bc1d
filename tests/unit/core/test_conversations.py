"""The conversation log: the gateway records answered chat requests, the log exports
them as a Dataset's ``gateway_logs`` source, purges old ones, and the CLI drives it.

Real SQLite under tmp_path, the real FastAPI app through TestClient over a small fake
Backend, real API keys (one with a tenant scope), the real DatasetStore. No Ray.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from qingliang.platform.cli import _common as cli_common
from qingliang.platform.cli.main import app as cli_app
from qingliang.platform.control import cluster
from qingliang.platform.control.apply import Controller
from qingliang.platform.errors import ApiError, BadRequest
from qingliang.platform.gateway.app import create_app
from qingliang.platform.lifecycle.data.manifest import Dataset
from qingliang.platform.lifecycle.data.store import DatasetStore
from qingliang.platform.settings import Settings
from qingliang.platform.storage.conversations import Conversation, ConversationLog
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.engine import StreamChunk
from qingliang.serving.traffic import ModelEntry

DAY = 86_400.0
NOW = 1_750_000_000.0
runner = CliRunner()


def chat_answer(content: str, n: int = 1) -> dict:
    return {
        "id": "chatcmpl-42",
        "object": "chat.completion",
        "created": 1,
        "model": "qwen",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": variant(content, i)},
                "finish_reason": "stop" if i == 0 else "length",
            }
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4 * n, "total_tokens": 9 + 4 * n},
    }


def completion_answer(content: str, n: int = 1, prompt: str = "") -> dict:
    return {
        "id": "cmpl-9",
        "object": "text_completion",
        "created": 1,
        "model": "qwen",
        "choices": [
            {"index": i, "text": prompt + variant(content, i), "finish_reason": "stop"}
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n},
    }


def variant(content: str, i: int) -> str:
    """Choice ``i``'s answer: choice 0 says ``content``, the others add their number."""
    return content if i == 0 else f"{content}（{i}）"


def sse(content: str, finish: str | None = None, index: int = 0) -> StreamChunk:
    chunk = {
        "id": "chatcmpl-7",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "qwen",
        "choices": [{"index": index, "delta": {"content": content}, "finish_reason": finish}],
    }
    return StreamChunk.of(chunk)


def sse_text(content: str, finish: str | None = None, index: int = 0) -> StreamChunk:
    chunk = {
        "id": "cmpl-8",
        "object": "text_completion",
        "created": 1,
        "model": "qwen",
        "choices": [{"index": index, "text": content, "finish_reason": finish}],
    }
    return StreamChunk.of(chunk)


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> StreamChunk:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return StreamChunk.of({"id": "x", "choices": [], "usage": usage})


class FakeBackend:
    """Canned answers; ``error`` is raised before the answer, ``mid_error`` mid-stream.

    Answers have the request's ``n`` choices (interleaved when streamed) and the shape of
    the endpoint (chat or legacy completion).
    """

    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries = entries
        self.answer = "携带身份证到街道服务中心办理。"
        self.chunks = [sse("携带身份证"), sse("到街道服务中心办理。"), sse("", "stop")]
        self.error: ApiError | None = None
        self.mid_error: ApiError | None = None

    def models(self) -> list[ModelEntry]:
        return list(self.entries)

    async def generate(self, deployment: str, endpoint: str, body: dict, adapter: str | None):
        if self.error is not None:
            raise self.error
        n = int(body.get("n", 1))
        if endpoint == "completion":
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            echo = body["prompt"] if body.get("echo") else ""
            # A batch of text prompts gets n choices per prompt.
            per_batch = len(prompts) if all(isinstance(p, str) for p in prompts) else 1
            return completion_answer(self.answer, n * per_batch, echo)
        return chat_answer(self.answer, n)

    async def stream(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> AsyncIterator[StreamChunk]:
        if self.error is not None:
            raise self.error
        n = int(body.get("n", 1))
        chunks = self.chunks
        if endpoint == "completion":
            chunks = [
                sse_text("携带身份证"),
                sse_text("到街道服务中心办理。"),
                sse_text("", "stop"),
            ]
        if n > 1:
            event = sse if endpoint == "chat" else sse_text
            chunks = []
            for part, finish in (("携带身份证", None), ("到街道服务中心办理。", None)):
                chunks += [event(part, finish, i) for i in range(n)]
            chunks += [event("" if i == 0 else f"（{i}）", "stop", i) for i in range(n)]
            chunks.append(usage_chunk(9, 4 * n))
        for i, chunk in enumerate(chunks):
            if i == 1 and self.mid_error is not None:
                raise self.mid_error
            yield chunk

    async def ready(self) -> dict[str, str]:
        return {e.name: "ready" for e in self.entries}

    def rejected(self, deployment: str, adapter: str | None, endpoint: str) -> None:
        pass


class KeyAuth:
    """auth.keys.KeyAuth's shape: the verified key's record (with its scopes) or None."""

    def __init__(self, store: KeyStore, enabled: bool = True) -> None:
        self.enabled = enabled
        self._store = store

    def verify(self, token: str) -> Any:
        return self._store.verify(token)


ENTRIES = [
    ModelEntry("qwen", ("sql", "faq"), refs={"sql": "sql-desk@3"}),
    # Every bare request to "gov" goes to the canary adapter.
    ModelEntry("gov", ("desk",), traffic={"desk": 1.0}, refs={"desk": "gov-desk@2"}),
]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def log(home: Path) -> Iterator[ConversationLog]:
    log = ConversationLog.for_home(home, flush_interval_s=0.01)
    yield log
    log.close()


@pytest.fixture
def keys(home: Path) -> KeyStore:
    return KeyStore(home / "state.sqlite")


@pytest.fixture
def tenant_key(keys: KeyStore) -> str:
    return keys.create("city-a-app", scopes=("inference", "tenant:city-a"))[1]


@pytest.fixture
def operator_key(keys: KeyStore) -> str:
    return keys.create("ops", scopes=("admin",))[1]


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(list(ENTRIES))


@pytest.fixture
def client(backend: FakeBackend, keys: KeyStore, log: ConversationLog) -> Iterator[TestClient]:
    with TestClient(create_app(backend, None, KeyAuth(keys), conversations=log)) as c:
        yield c


def ask(
    client: TestClient, key: str, model: str, question: str = "居住证怎么办理？", **body: Any
) -> Any:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": question}], **body},
        headers={"Authorization": f"Bearer {key}"},
    )


def exported(log: ConversationLog, **filters: Any) -> list[dict]:
    out = io.StringIO()
    n = log.export(out, **filters)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert n == len(lines)
    return lines


def conversation(n: int, created: float, tenant: str | None = "city-a", **kw: Any) -> Conversation:
    fields: dict[str, Any] = {
        "id": f"chatcmpl-{n}",
        "created": created,
        "model": "qwen",
        "deployment": "qwen",
        "messages": [{"role": "user", "content": f"问题 {n}：社保卡丢了怎么补办？"}],
        "response": f"回答 {n}：先挂失，再到社保网点补办新卡。",
        "tenant": tenant,
        **kw,
    }
    return Conversation(**fields)


# ------------------------------------------------------------------------- gateway


def test_answered_request_is_logged_with_tenant_key_and_adapter(
    client: TestClient, log: ConversationLog, tenant_key: str
) -> None:
    r = ask(client, tenant_key, "qwen:sql")
    assert r.status_code == 200
    (row,) = exported(log)
    assert row["id"] == "chatcmpl-42"
    assert (row["tenant"], row["key_name"]) == ("city-a", "city-a-app")
    assert (row["model"], row["deployment"]) == ("qwen:sql", "qwen")
    assert (row["adapter"], row["adapter_ref"]) == ("sql", "sql-desk@3")
    assert row["messages"] == [{"role": "user", "content": "居住证怎么办理？"}]
    assert row["response"] == "携带身份证到街道服务中心办理。"
    assert row["finish_reason"] == "stop"
    assert row["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    assert isinstance(row["created"], int) and isinstance(row["latency_ms"], int)


def test_a_canary_routed_request_logs_the_adapter_that_answered(
    client: TestClient, log: ConversationLog, operator_key: str
) -> None:
    assert ask(client, operator_key, "gov").headers["X-Qingliang-Adapter"] == "desk"
    (row,) = exported(log)
    assert (row["model"], row["adapter"], row["adapter_ref"]) == ("gov", "desk", "gov-desk@2")
    # An operator key acts for every tenant: its conversations have none.
    assert (row["tenant"], row["key_name"]) == (None, "ops")


def test_streamed_answer_is_logged_with_the_full_text(
    client: TestClient, log: ConversationLog, tenant_key: str
) -> None:
    r = ask(client, tenant_key, "qwen:faq", stream=True)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    (row,) = exported(log)
    assert row["response"] == "携带身份证到街道服务中心办理。"
    assert (row["id"], row["finish_reason"], row["adapter"]) == ("chatcmpl-7", "stop", "faq")
    assert row["tenant"] == "city-a"


@pytest.mark.parametrize("stream", [False, True])
def test_errors_are_not_logged(
    client: TestClient,
    backend: FakeBackend,
    log: ConversationLog,
    tenant_key: str,
    stream: bool,
) -> None:
    assert ask(client, tenant_key, "nope", stream=stream).status_code == 404
    assert ask(client, tenant_key, "qwen:missing", stream=stream).status_code == 404
    backend.error = BadRequest("prompt too long")
    assert ask(client, tenant_key, "qwen", stream=stream).status_code == 400
    assert log.count() == 0


def test_a_stream_that_fails_midway_is_not_logged(
    client: TestClient, backend: FakeBackend, log: ConversationLog, tenant_key: str
) -> None:
    backend.mid_error = ApiError("engine died")
    r = ask(client, tenant_key, "qwen", stream=True)
    assert '"error"' in r.text
    assert log.count() == 0


def complete(client: TestClient, key: str, model: str, prompt: Any, **body: Any) -> Any:
    return client.post(
        "/v1/completions",
        json={"model": model, "prompt": prompt, **body},
        headers={"Authorization": f"Bearer {key}"},
    )


@pytest.mark.parametrize("stream", [False, True])
def test_every_choice_of_an_n_choice_answer_is_logged(
    client: TestClient, log: ConversationLog, tenant_key: str, stream: bool
) -> None:
    r = ask(client, tenant_key, "qwen:sql", n=2, stream=stream)
    assert r.status_code == 200
    rows = exported(log)
    assert [row["choice"] for row in rows] == [0, 1]
    assert [row["response"] for row in rows] == [
        "携带身份证到街道服务中心办理。",
        "携带身份证到街道服务中心办理。（1）",
    ]
    assert len({row["id"] for row in rows}) == 1
    assert rows[0]["id"] == ("chatcmpl-7" if stream else "chatcmpl-42")
    for row in rows:
        assert row["endpoint"] == "chat"
        assert row["messages"] == [{"role": "user", "content": "居住证怎么办理？"}]
        assert (row["adapter"], row["adapter_ref"], row["tenant"]) == (
            "sql",
            "sql-desk@3",
            "city-a",
        )
        # Usage is the whole response's, shared by its choices.
        assert row["usage"] == {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}
    if not stream:
        assert [row["finish_reason"] for row in rows] == ["stop", "length"]


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_completions_are_logged_with_the_prompt_as_a_user_message(
    client: TestClient, log: ConversationLog, tenant_key: str, stream: bool
) -> None:
    r = complete(client, tenant_key, "gov", "居住证怎么办理？", stream=stream)
    assert r.status_code == 200
    (row,) = exported(log)
    assert row["endpoint"] == "completion" and row["choice"] == 0
    assert row["id"] == ("cmpl-8" if stream else "cmpl-9")
    assert row["messages"] == [{"role": "user", "content": "居住证怎么办理？"}]
    assert row["response"] == "携带身份证到街道服务中心办理。"
    assert (row["model"], row["adapter"], row["adapter_ref"]) == ("gov", "desk", "gov-desk@2")
    assert row["finish_reason"] == "stop"


def test_legacy_completions_with_several_prompts_and_choices(
    client: TestClient, log: ConversationLog, tenant_key: str
) -> None:
    # Choices of a batch of prompts are numbered by prompt: index = prompt * n + k.
    assert complete(client, tenant_key, "qwen", ["问一", "问二"], n=2).status_code == 200
    rows = exported(log)
    assert [(r["choice"], r["messages"][0]["content"]) for r in rows] == [
        (0, "问一"),
        (1, "问一"),
        (2, "问二"),
        (3, "问二"),
    ]


def test_legacy_completions_with_echo_log_only_the_answer(
    client: TestClient, log: ConversationLog, tenant_key: str
) -> None:
    r = complete(client, tenant_key, "qwen", "居住证怎么办理？", echo=True)
    assert r.json()["choices"][0]["text"].startswith("居住证怎么办理？")
    (row,) = exported(log)
    assert row["response"] == "携带身份证到街道服务中心办理。"


def test_legacy_completions_of_token_ids_are_not_logged(
    client: TestClient, log: ConversationLog, tenant_key: str
) -> None:
    assert complete(client, tenant_key, "qwen", [101, 2023, 102]).status_code == 200
    assert complete(client, tenant_key, "qwen", [[101, 2023]]).status_code == 200
    assert log.count() == 0


def test_text_parts_are_exported_as_one_string(
    client: TestClient, log: ConversationLog, tenant_key: str
) -> None:
    parts = [{"type": "text", "text": "第一段"}, {"type": "text", "text": "第二段"}]
    ask(client, tenant_key, "qwen", question=parts)  # type: ignore[arg-type]
    (row,) = exported(log)
    assert row["messages"] == [{"role": "user", "content": "第一段\n第二段"}]


def test_nothing_is_recorded_when_the_log_is_off(
    backend: FakeBackend, keys: KeyStore, home: Path, tenant_key: str
) -> None:
    with TestClient(create_app(backend, None, KeyAuth(keys))) as c:
        assert ask(c, tenant_key, "qwen").status_code == 200
        assert ask(c, tenant_key, "qwen", stream=True).status_code == 200
    assert not (home / "conversations.sqlite").exists()
    assert ConversationLog.for_home(home).count() == 0


def test_without_auth_conversations_have_no_tenant(
    backend: FakeBackend, keys: KeyStore, log: ConversationLog
) -> None:
    with TestClient(create_app(backend, None, KeyAuth(keys, False), conversations=log)) as c:
        assert ask(c, "", "qwen").status_code == 200
    (row,) = exported(log)
    assert (row["tenant"], row["key_name"]) == (None, None)


# ------------------------------------------------------------------------- the store


def test_close_writes_what_is_queued(home: Path) -> None:
    # A long flush interval: nothing reaches the disk until close.
    log = ConversationLog.for_home(home, flush_interval_s=60)
    log.append(conversation(1, NOW))
    log.append(conversation(2, NOW))
    assert ConversationLog.for_home(home).count() == 0
    log.close()
    assert ConversationLog.for_home(home).count() == 2


def test_queued_rows_are_bounded_in_bytes(home: Path) -> None:
    # A long flush interval keeps every accepted row in memory, as a stuck disk would.
    bound = 4 * 1024 * 1024
    log = ConversationLog.for_home(home, flush_interval_s=60, max_pending_bytes=bound)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(200):  # 200 distinct prompts of 256 KiB: 50 MiB offered
            big = [{"role": "user", "content": f"{n}:" + "长" * (128 * 1024)}]
            log.append(conversation(n, NOW, messages=big))
            assert log.pending_bytes <= bound
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < bound + 1024 * 1024
    accepted = 200 - log.dropped
    assert 0 < accepted < 20 and log.pending_bytes > bound // 2
    log.close()
    assert log.pending_bytes == 0
    assert ConversationLog.for_home(home).count() == accepted


def test_a_row_that_is_not_json_is_dropped_alone(log: ConversationLog) -> None:
    log.append(conversation(1, NOW, messages=[{"role": "user", "content": object()}]))
    log.append(conversation(2, NOW))
    assert log.count() == 1 and log.dropped == 1


def test_the_file_is_owner_only_and_rows_cannot_be_changed(
    log: ConversationLog, home: Path
) -> None:
    log.append(conversation(1, NOW))
    assert log.count() == 1
    assert stat.S_IMODE(os.stat(home / "conversations.sqlite").st_mode) == 0o600
    db = sqlite3.connect(home / "conversations.sqlite")
    with closing(db), pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE conversations SET response = 'edited'")


def test_export_filters_by_time_tenant_and_model(log: ConversationLog) -> None:
    log.append(conversation(1, NOW - 3 * DAY, tenant="city-a"))
    log.append(conversation(2, NOW - 2 * DAY, tenant="city-b"))
    log.append(conversation(3, NOW - 1 * DAY, tenant=None, model="qwen:sql"))
    ids = lambda **f: [r["id"] for r in exported(log, **f)]  # noqa: E731
    assert ids() == ["chatcmpl-1", "chatcmpl-2", "chatcmpl-3"]
    assert ids(since=NOW - 2 * DAY) == ["chatcmpl-2", "chatcmpl-3"]
    assert ids(until=NOW - 2 * DAY) == ["chatcmpl-1"]
    assert ids(tenants=["city-b", "city-a"]) == ["chatcmpl-1", "chatcmpl-2"]
    assert ids(models=["qwen:sql"]) == ["chatcmpl-3"]


def test_purge_removes_only_old_conversations(home: Path) -> None:
    log = ConversationLog.for_home(home, flush_interval_s=0.01, clock=lambda: NOW)
    for n, age in enumerate([100, 40, 1]):
        log.append(conversation(n, NOW - age * DAY))
    assert log.purge(30 * DAY) == 2
    assert [r["id"] for r in exported(log)] == ["chatcmpl-2"]
    assert log.purge(30 * DAY) == 0
    log.close()


def test_reading_a_missing_log_creates_nothing(home: Path) -> None:
    log = ConversationLog.for_home(home)
    assert (log.count(), log.export(io.StringIO()), log.purge(0)) == (0, 0, 0)
    assert not home.exists()


OLD_SCHEMA = """
CREATE TABLE conversations (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL,
    created           REAL NOT NULL,
    tenant            TEXT,
    key_name          TEXT,
    model             TEXT NOT NULL,
    deployment        TEXT NOT NULL,
    adapter           TEXT,
    adapter_ref       TEXT,
    messages          TEXT NOT NULL,
    response          TEXT,
    finish_reason     TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    latency_ms        INTEGER
);
CREATE INDEX conversations_created ON conversations (created);
CREATE TRIGGER conversations_no_update BEFORE UPDATE ON conversations
BEGIN SELECT RAISE(ABORT, 'the conversation log is append-only'); END;
"""
OLD_INSERT = (
    "INSERT INTO conversations (id, created, tenant, key_name, model, deployment, adapter, "
    "adapter_ref, messages, response, finish_reason, prompt_tokens, completion_tokens, "
    "latency_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def old_row(n: int, created: float) -> tuple:
    messages = json.dumps([{"role": "user", "content": f"旧问题 {n}"}], ensure_ascii=False)
    head = (f"chatcmpl-old{n}", created, "city-a", "app", "qwen", "qwen", None, None)
    return (*head, messages, f"旧回答 {n}", "stop", 3, 2, 40)


@pytest.mark.parametrize("first", ["export", "append", "count"])
def test_a_log_written_by_the_old_schema_is_migrated_without_losing_rows(
    home: Path, first: str
) -> None:
    home.mkdir()
    path = home / "conversations.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(OLD_SCHEMA)
        db.executemany(OLD_INSERT, [old_row(1, NOW - 2), old_row(2, NOW - 1)])
        db.commit()
    log = ConversationLog.for_home(home, flush_interval_s=0.01)
    if first == "append":
        log.append(conversation(3, NOW, endpoint="completion", choice=1))
        log.flush()
    elif first == "count":
        assert log.count() == 2
    rows = exported(log)
    assert [r["id"] for r in rows][:2] == ["chatcmpl-old1", "chatcmpl-old2"]
    assert rows[0]["messages"] == [{"role": "user", "content": "旧问题 1"}]
    assert rows[0]["response"] == "旧回答 1"
    assert rows[0]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    # Old rows take the defaults: the only kind the old gateway recorded.
    assert [(r["choice"], r["endpoint"]) for r in rows[:2]] == [(0, "chat"), (0, "chat")]
    if first == "append":
        assert (rows[2]["choice"], rows[2]["endpoint"]) == (1, "completion")
    # An old gateway replica still writing to the file keeps working, and rows stay locked.
    with closing(sqlite3.connect(path)) as db:
        db.execute(OLD_INSERT, old_row(4, NOW + 1))
        db.commit()
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE conversations SET response = 'edited'")
    assert exported(log)[-1]["id"] == "chatcmpl-old4"
    log.close()
    # Opening it again changes nothing.
    again = ConversationLog.for_home(home)
    assert again.count() == (4 if first == "append" else 3)
    again.close()


# ------------------------------------------------------------ export → dataset


def test_exported_conversations_become_a_dataset_version(
    client: TestClient, log: ConversationLog, tenant_key: str, operator_key: str, tmp_path: Path
) -> None:
    ask(client, tenant_key, "qwen:sql", question="我的电话是13800138000，居住证怎么办理？")
    ask(client, tenant_key, "qwen", question="社保卡丢了怎么补办？", stream=True)
    ask(client, operator_key, "gov", question="公积金可以提前提取吗？")
    folder = tmp_path / "manifests"
    (folder / "exports").mkdir(parents=True)
    with (folder / "exports" / "all.jsonl").open("w", encoding="utf-8") as out:
        assert log.export(out) == 3

    manifest = Dataset.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "Dataset",
            "metadata": {"name": "city-a-sft"},
            "spec": {
                "format": "chat",
                "sources": [
                    {"path": "exports/all.jsonl", "kind": "gateway_logs", "tenants": ["city-a"]}
                ],
                "governance": [{"step": "schema"}, {"step": "pii"}],
                "split": {"eval_fraction": 0.0},
            },
        }
    )
    store = DatasetStore(tmp_path / "datasets", env={})
    v = store.cut(manifest, folder, actor="alice")
    assert (v.records, v.quarantined) == (2, 0)
    records = store.read("city-a-sft", v.version)
    questions = [r["messages"][0]["content"] for r in records]
    assert "社保卡丢了怎么补办？" in questions
    assert not any("13800138000" in q for q in questions)  # pii redacts at ingest
    for r in records:
        assert r["messages"][-1] == {
            "role": "assistant",
            "content": "携带身份证到街道服务中心办理。",
        }
        assert r["metadata"]["origin"] == "gateway"
        assert r["metadata"]["tenant"] == "city-a"
    assert {r["metadata"]["source_id"] for r in records} == {"chatcmpl-42", "chatcmpl-7"}
    (source,) = store.report("city-a-sft", v.version)["sources"]
    assert (source["rows"], source["filtered"]) == (3, 1)


def test_choices_and_legacy_completions_become_dataset_records(
    client: TestClient, log: ConversationLog, tenant_key: str, tmp_path: Path
) -> None:
    ask(client, tenant_key, "qwen", question="社保卡丢了怎么补办？", n=2)
    ask(client, tenant_key, "qwen", question="公积金可以提前提取吗？", n=2, stream=True)
    complete(client, tenant_key, "qwen", "居住证怎么办理？")
    complete(client, tenant_key, "qwen", "护照怎么办理？", stream=True)
    folder = tmp_path / "manifests"
    folder.mkdir()
    with (folder / "all.jsonl").open("w", encoding="utf-8") as out:
        assert log.export(out) == 6
    manifest = Dataset.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "Dataset",
            "metadata": {"name": "choices"},
            "spec": {
                "format": "chat",
                "sources": [{"path": "all.jsonl", "kind": "gateway_logs"}],
                # No dedup: the test's choices differ by one character.
                "governance": [{"step": "schema"}, {"step": "pii"}],
                "split": {"eval_fraction": 0.0},
            },
        }
    )
    store = DatasetStore(tmp_path / "datasets", env={})
    v = store.cut(manifest, folder, actor="alice")
    assert (v.records, v.quarantined) == (6, 0)
    pairs = {
        (r["messages"][0]["content"], r["messages"][-1]["content"], r["metadata"]["choice"])
        for r in store.read("choices", v.version)
    }
    answer, second = "携带身份证到街道服务中心办理。", "携带身份证到街道服务中心办理。（1）"
    assert pairs == {
        ("社保卡丢了怎么补办？", answer, 0),
        ("社保卡丢了怎么补办？", second, 1),
        ("公积金可以提前提取吗？", answer, 0),
        ("公积金可以提前提取吗？", second, 1),
        ("居住证怎么办理？", answer, 0),
        ("护照怎么办理？", answer, 0),
    }
    for r in store.read("choices", v.version):
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert r["metadata"]["endpoint"] in ("chat", "completion")


# ------------------------------------------------------------------------------ CLI


@pytest.fixture
def cli_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QINGLIANG_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    return home


def seed(home: Path, *conversations: Conversation) -> None:
    log = ConversationLog.for_home(home)
    for c in conversations:
        log.append(c)
    log.close()


def test_cli_count_export_and_purge(cli_home: Path, tmp_path: Path) -> None:
    import time

    now = time.time()
    seed(
        cli_home,
        conversation(1, now - 40 * DAY, tenant="city-a"),
        conversation(2, now - 2 * DAY, tenant="city-b"),
        conversation(3, now - 1 * DAY, tenant="city-a"),
    )
    r = runner.invoke(cli_app, ["conversations", "count"])
    assert (r.exit_code, r.stdout.strip()) == (0, "3")

    r = runner.invoke(cli_app, ["conversations", "export", "--days", "7"])
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [
        "chatcmpl-2",
        "chatcmpl-3",
    ]
    assert "exported 2 conversation(s)" in r.stderr

    out = tmp_path / "exports" / "city-a.jsonl"
    r = runner.invoke(cli_app, ["conversations", "export", "-o", str(out), "--tenant", "city-a"])
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["id"] for line in out.read_text("utf-8").splitlines()] == [
        "chatcmpl-1",
        "chatcmpl-3",
    ]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    r = runner.invoke(cli_app, ["conversations", "purge", "--older-than-days", "30"])
    assert r.exit_code == 0, r.output
    assert "purged 1 conversation(s) older than 30 day(s)" in r.stdout
    assert runner.invoke(cli_app, ["conversations", "count"]).stdout.strip() == "2"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last tuesday"], "--since 'last tuesday' is not a date"),
        (["--until", "2025-13-01"], "--until '2025-13-01' is not a date"),
        (["--since", "2025-03-01", "--days", "3"], "use --since or --days, not both"),
        (["--since", "2025-03-02", "--until", "2025-03-01"], "is not after the start"),
    ],
)
def test_cli_export_rejects_bad_dates(cli_home: Path, args: list[str], message: str) -> None:
    r = runner.invoke(cli_app, ["conversations", "export", *args])
    assert r.exit_code == 1
    assert message in r.stderr
    assert r.stdout == ""


def test_up_passes_log_conversations_to_the_gateway(
    cli_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict] = []

    class FakeController:
        def load(self, paths: list[Path]) -> list:
            return []

        def compile(self, items: list) -> list:
            return []

        def resolve(self, plans: list, progress: bool) -> list:
            return []

        def ensure_gateway(self, **kw: Any) -> None:
            calls.append(kw)

        def apply(self, *a: Any, **kw: Any) -> list:
            return []

        def wait(self, *a: Any, **kw: Any) -> None:
            pass

        def get(self, live: bool) -> list:
            return []

    monkeypatch.setattr(cli_common, "controller", lambda settings: FakeController())
    monkeypatch.setattr(
        cluster, "start_head", lambda settings: SimpleNamespace(dashboard_url="http://x")
    )
    for flags, on in ([], False), (["--log-conversations"], True):
        r = runner.invoke(cli_app, ["up", "--no-auth", *flags])
        assert r.exit_code == 0, r.output
        assert calls.pop() == {"auth_enabled": False, "conversation_log": on}


def test_the_controller_stores_the_gateway_flag(cli_home: Path) -> None:
    class Deployer:
        def __init__(self) -> None:
            self.configs: list[dict] = []

        def apply_config(self, config: dict) -> None:
            self.configs.append(config)

    deployer = Deployer()
    ctl = Controller(Settings(home=cli_home), deployer=deployer)  # type: ignore[arg-type]
    ctl.ensure_gateway(auth_enabled=True)
    assert "conversation_log" not in deployer.configs[-1]["applications"][0]["args"]
    ctl.ensure_gateway(auth_enabled=True, conversation_log=True)
    assert deployer.configs[-1]["applications"][0]["args"]["conversation_log"] is True
    assert ctl._gateway().conversation_log is True
