"""The PostgreSQL checkpointer does what the SQLite one does: the same runs, parametrized
over both backends, through the real AgentService, LangGraph runtime and submit tool
(only the chat model is scripted). PostgreSQL is a throwaway local server on 127.0.0.1
(``postgres_dsn`` in tests/conftest.py), or ``QINGLIANG_TEST_PG_DSN``; without either the
PostgreSQL cases skip and say why. Each test gets its own database.

A "restart" is a new AgentService (so a new Checkpointers) on the same data directory; a
crash is a child process killed with SIGKILL (tests/unit/agents/_agents_child.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import traceback
from pathlib import Path

import pytest
import yaml

from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.checkpoint import CHECKPOINT_DB, Checkpointers
from qingliang.agents.manifest import AgentGraph, Checkpointer
from qingliang.agents.service import AgentService
from qingliang.agents.state import GraphDef
from qingliang.platform.errors import Conflict, ResolveError
from tests.unit.agents._agents_child import ScriptedChat, tools_for
from tests.unit.agents.test_agent_durability import GRAPHS, _rows, _run, _run_until_killed
from tests.unit.agents.test_agent_runtime import Scripted, _drain, graph, run, service

DSN_ENV = "QL_TEST_CHECKPOINT_DSN"
SECRET = "s3cret-Pw-7f1d"  # put in bad DSNs; must never show in an error


@pytest.fixture(params=["sqlite", "postgres"])
def checkpointer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The manifest's ``checkpointer`` section; for postgres, a fresh database in DSN_ENV."""
    if request.param == "sqlite":
        return {"kind": "sqlite"}
    monkeypatch.setenv(DSN_ENV, request.getfixturevalue("postgres_database"))
    return {"kind": "postgres", "dsn_env": DSN_ENV}


def _manifests(tmp_path: Path, name: str, checkpointer: dict) -> Path:
    """GRAPHS[name] of the durability tests, written with ``checkpointer`` set."""
    folder = tmp_path / "graphs"
    folder.mkdir(exist_ok=True)
    doc = yaml.safe_load(GRAPHS[name])
    doc["spec"]["checkpointer"] = checkpointer
    (folder / name).write_text(yaml.safe_dump(doc))
    return folder


def _desk(tmp_path: Path, checkpointer: dict) -> tuple[Path, GraphDef]:
    """desk: an agent fills a form, an approval, then a submit tool writes a row."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    folder = _manifests(tmp_path, "desk.yaml", checkpointer)
    doc = yaml.safe_load((folder / "desk.yaml").read_text())
    return home, GraphDef(AgentGraph.model_validate(doc), folder)


def _service(home: Path, gdef: GraphDef) -> AgentService:
    return AgentService(
        home, chat=ScriptedChat(home), catalog=StaticCatalog([gdef]), tools_for=tools_for
    )


async def _stored_checkpoints(checkpointer: dict, home: Path, run_id: str) -> int:
    """Checkpoints of the run in the backend itself (proves which backend was used)."""
    if checkpointer["kind"] == "sqlite":
        with sqlite3.connect(home / CHECKPOINT_DB) as db:
            sql = "SELECT count(*) FROM checkpoints WHERE thread_id = ?"
            return int(db.execute(sql, (run_id,)).fetchone()[0])
    import psycopg

    async with await psycopg.AsyncConnection.connect(os.environ[DSN_ENV]) as conn:
        sql = "SELECT count(*) FROM checkpoints WHERE thread_id = %s"
        row = await (await conn.execute(sql, (run_id,))).fetchone()
        return int(row[0])


async def test_an_approval_survives_a_restart_and_submits_exactly_once(
    tmp_path: Path, checkpointer: dict
) -> None:
    home, gdef = _desk(tmp_path, checkpointer)
    async with _service(home, gdef) as svc:
        run_id, events = await svc.start("desk", {"input": "file it"}, tenant=None, actor="t")
        async for _ in events:
            pass
        waiting = svc.get(run_id)
        assert waiting.status == "waiting" and waiting.pending["node"] == "review"
        assert not (tmp_path / "graphs" / "requests.sqlite").exists()  # nothing submitted yet
    assert await _stored_checkpoints(checkpointer, home, run_id) > 0

    async with _service(home, gdef) as svc:  # a restart: new service, new checkpointer
        assert svc.get(run_id).status == "waiting"
        _id, events = await svc.resume(run_id, {"action": "approve"}, tenant=None, actor="boss")
        got = [e async for e in events]
        done = svc.get(run_id)
        assert done.status == "done", got[-1]
        assert done.answer == "Your details are recorded."
        rows = _rows((home, tmp_path / "graphs"))
        assert len(rows) == 1
        assert json.loads(rows[0][2]) == {"applicant": "Li Lei", "phone": "13800000000"}
        with pytest.raises(Conflict, match="not waiting") as refused:
            await svc.resume(run_id, {"action": "approve"}, tenant=None, actor="boss")
        assert refused.value.status_code == 409

    async with _service(home, gdef) as svc:  # and after another restart
        with pytest.raises(Conflict):
            await svc.resume(run_id, {"action": "approve"}, tenant=None, actor="boss")
        assert await svc.recover() == []
    assert len(_rows((home, tmp_path / "graphs"))) == 1
    calls = (home / "model-calls.log").read_text().split()
    assert calls == ["clerk", "clerk"]  # the form call and the answer, never repeated


async def test_concurrent_resumes_after_a_restart_only_one_wins(
    tmp_path: Path, checkpointer: dict
) -> None:
    spec = {
        "agents": [{"name": "w", "model": "prose"}],
        "nodes": [
            {"name": "d", "type": "agent", "agent": "w", "next": "r"},
            {"name": "r", "type": "approval", "next": "after"},
            {"name": "after", "type": "agent", "agent": "w"},
        ],
        "checkpointer": checkpointer,
    }
    chat = Scripted()
    async with service(tmp_path, graph(spec), chat=chat, router=False) as svc:
        run_id, _ = await run(svc, {"input": "a letter with a NUL \x00 byte"})
    async with service(tmp_path, graph(spec), chat=chat, router=False) as svc:
        results = await asyncio.gather(
            *(
                svc.resume(run_id, {"action": "approve"}, tenant="city-a", actor=f"u{i}")
                for i in range(4)
            ),
            return_exceptions=True,
        )
        wins = [r for r in results if not isinstance(r, BaseException)]
        assert len(wins) == 1, results
        assert all(isinstance(r, Conflict) for r in results if r not in wins)
        async for _ in wins[0][1]:
            pass
        done = svc.get(run_id, "city-a")
        assert done.status == "done", done.reason
        # The first node's answer, NUL included, came back from the checkpoint after the
        # restart (PostgreSQL's JSONB cannot hold a NUL inline).
        assert done.answer.startswith("prose: a letter with a NUL \x00 byte")
    assert chat.calls == ["prose", "prose"]  # the first node was not run again


async def test_a_run_killed_after_its_submit_recovers_from_postgres_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_database: str
) -> None:
    """SIGKILL mid-node, as in test_agent_durability, with the checkpoints in PostgreSQL."""
    monkeypatch.setenv(DSN_ENV, postgres_database)  # the child processes inherit it
    folder = _manifests(tmp_path, "desk.yaml", {"kind": "postgres", "dsn_env": DSN_ENV})
    world = (tmp_path / "home", folder)
    first = _run(world, "start", "desk")
    assert first["status"] == "waiting"
    env = {"QL_BLOCK_AFTER_SUBMIT": "1"}
    _run_until_killed(world, "SUBMITTED", "resume", first["run_id"], env=env)
    done = _run(world, "recover")
    assert done["run_id"] == first["run_id"] and done["status"] == "done"
    rows = _rows(world)
    assert len(rows) == 1 and done["results"]["submit"]["submission_id"] == rows[0][0]
    assert not (world[0] / CHECKPOINT_DB).exists()  # nothing went to SQLite


async def test_a_dropped_connection_costs_no_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str, postgres_database: str
) -> None:
    """The server closes the checkpointer's connection between two runs (a restart, an
    idle timeout): the pool replaces it, and neither run notices."""
    import psycopg

    monkeypatch.setenv(DSN_ENV, postgres_database)
    spec = {
        "agents": [{"name": "w", "model": "prose"}],
        "nodes": [
            {"name": "d", "type": "agent", "agent": "w", "next": "r"},
            {"name": "r", "type": "approval"},
        ],
        "checkpointer": {"kind": "postgres", "dsn_env": DSN_ENV},
    }
    async with service(tmp_path, graph(spec), router=False) as svc:
        first, _ = await run(svc, {"input": "one"})
        dbname = psycopg.conninfo.conninfo_to_dict(postgres_database)["dbname"]
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as admin:
            sql = (
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()"
            )
            killed = await (await admin.execute(sql, (dbname,))).fetchone()
        assert killed and killed[0] >= 1
        second, _ = await run(svc, {"input": "two"})
        assert svc.get(second, "city-a").status == "waiting"
        await _drain(svc.resume(first, {"action": "approve"}, tenant="city-a", actor="b"))
        assert svc.get(first, "city-a").status == "done"


async def test_replicas_starting_together_create_the_tables_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_database: str
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_database)
    spec = Checkpointer(kind="postgres", dsn_env=DSN_ENV)
    homes = [Checkpointers(tmp_path / f"r{i}") for i in range(4)]
    try:
        savers = await asyncio.gather(*(cps.get(spec) for cps in homes))
        assert all(s is not None for s in savers)
        # Two runs of one process starting together share one saver (and one pool).
        again = await asyncio.gather(homes[0].get(spec), homes[0].get(spec))
        assert again[0] is again[1] is savers[0]
    finally:
        for cps in homes:
            await cps.close()


def _refused(exc: BaseException) -> str:
    """The error as a log would show it, traceback and causes included."""
    return "".join(traceback.format_exception(exc))


async def _open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str | None) -> str:
    if dsn is None:
        monkeypatch.delenv(DSN_ENV, raising=False)
    else:
        monkeypatch.setenv(DSN_ENV, dsn)
    async with Checkpointers(tmp_path) as cps:
        with pytest.raises(ResolveError) as err:
            await cps.get(Checkpointer(kind="postgres", dsn_env=DSN_ENV))
    text = _refused(err.value)
    assert DSN_ENV in str(err.value) and SECRET not in text
    return str(err.value)


async def test_an_unset_dsn_variable_is_named(tmp_path, monkeypatch) -> None:
    msg = await _open(tmp_path, monkeypatch, None)
    assert msg == f"checkpointer.dsn_env: environment variable {DSN_ENV} is not set"


async def test_an_unreachable_server_is_named_without_the_password(tmp_path, monkeypatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    msg = await _open(tmp_path, monkeypatch, f"postgresql://ql:{SECRET}@127.0.0.1:{port}/db")
    assert "cannot connect to the PostgreSQL server in" in msg
    assert "Connection refused" in msg


async def test_a_bad_password_is_named_without_the_password(
    tmp_path, monkeypatch, postgres_dsn: str
) -> None:
    from psycopg.conninfo import make_conninfo

    bad = make_conninfo(postgres_dsn, user="qingliang_nobody", password=SECRET)
    msg = await _open(tmp_path, monkeypatch, bad)
    assert "cannot connect to the PostgreSQL server in" in msg
    assert "password authentication failed" in msg or "does not exist" in msg


async def test_a_malformed_dsn_is_refused_without_repeating_it(tmp_path, monkeypatch) -> None:
    msg = await _open(tmp_path, monkeypatch, f"host=127.0.0.1 password={SECRET} oops")
    assert "does not hold a valid PostgreSQL DSN" in msg


async def test_a_run_on_an_unset_dsn_fails_and_says_which_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(DSN_ENV, raising=False)
    spec = {
        "agents": [{"name": "w", "model": "prose"}],
        "nodes": [{"name": "d", "type": "agent", "agent": "w"}],
        "checkpointer": {"kind": "postgres", "dsn_env": DSN_ENV},
    }
    async with service(tmp_path, graph(spec), router=False) as svc:
        run_id, events = await run(svc, {"input": "x"})
        failed = svc.get(run_id, "city-a")
        assert failed.status == "failed" and f"{DSN_ENV} is not set" in failed.reason
        # The cause itself, not a second failure to read the state it never wrote.
        assert failed.reason.startswith("ResolveError: "), failed.reason
        assert events[-1]["status"] == "failed"
