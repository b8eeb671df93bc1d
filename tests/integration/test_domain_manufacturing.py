"""The manufacturing demonstration on the running platform: the bundle
(deploy/domains/manufacturing) applied like `qingliang demo up manufacturing` on the
packaged qwen-coder deployment (vLLM CPU), its FMEA and maintenance-log KBs synced with the
packaged embedder, and plant-desk asked through `/v1/agents`: a numeric FMEA question
(the model writes the COUNT, the read-only SQL tool returns the right number) and a work
order (filled by the nested plant-work-order graph, waiting for a person, approved with a
second key, filed exactly once); a photographed nameplate searched in plant-fmea (read by
OCR) finds the machine's row of the equipment register."""

from __future__ import annotations

import base64
import csv
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _platform import Platform, domain_bundle, sse_events

from qingliang.platform.storage.keys import KeyStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUNDLE = Path(__file__).resolve().parents[2] / "deploy" / "domains" / "manufacturing"


def _ask(http: httpx.Client, body: dict) -> list[dict]:
    with http.stream("POST", "/v1/agents/plant-desk/runs", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        return sse_events(r)


def _shown(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] != "token"]


@pytest.fixture(scope="module")
def plant(
    qwen: str, platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The bundle as `demo up --no-train` leaves it (its adapter alias: the base model)."""
    dest = tmp_path_factory.mktemp("domains") / "manufacturing"
    yield from domain_bundle(platform, BUNDLE, dest, {"plant-fmea": 90, "plant-maintenance": 150})


@pytest.fixture(scope="module")
def reviewer(platform: Platform) -> dict[str, str]:
    key = KeyStore(platform.settings.state_db).create("it-plant-lead", scopes=["admin"])[1]
    return {"Authorization": f"Bearer {key}"}


def test_a_numeric_fmea_question_is_answered_with_the_right_number(
    plant: Path, http: httpx.Client
) -> None:
    with (plant / "data" / "fmea.csv").open(encoding="utf-8") as f:
        severe = sum(1 for r in csv.DictReader(f) if int(r["severity"]) >= 8)
    events = _ask(http, {"input": "How many failure modes have severity 8 or higher?"})
    # The model writes the COUNT; the read-only SQL tool's answer is in the run's events
    # (what `qingliang agents run` prints as `tool plant_db(...) -> | 31 |`).
    sql = [e for e in events if e["type"] == "tool" and e["tool"] == "plant_db"]
    assert sql and not sql[0]["error"], _shown(events)
    assert "count(" in sql[0]["arguments"]["query"].lower(), sql
    assert sql[0]["result"].splitlines()[2] == f"| {severe} |", sql
    run = http.get(f"/v1/agents/runs/{events[0]['run_id']}").json()
    assert run["status"] == "done", run


def test_a_photographed_nameplate_finds_the_machine(plant: Path, http: httpx.Client) -> None:
    """The photo is the query: OCR reads model and serial, the equipment register's row of
    that machine comes first (`qingliang kb search plant-fmea --image nameplate.png`)."""
    photo = (plant / "samples" / "nameplate.png").read_bytes()
    image = "data:image/png;base64," + base64.b64encode(photo).decode()
    r = http.post("/v1/knowledge/plant-fmea/search", json={"image": image, "limit": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["image_query"]["mode"] == "ocr"
    assert "QY-JC-2019-0417" in out["image_query"]["ocr_text"]
    top = out["citations"][0]
    assert top["source"].endswith("equipment.csv") and top["kind"] == "table-row", top
    row = top["text"].splitlines()[-1]
    assert row.startswith("| CR-101 | Primary jaw crusher |") and "| 160 |" in row, top


def test_a_work_order_is_approved_by_a_person_and_filed_once_across_a_replica_kill(
    plant: Path, http: httpx.Client, reviewer: dict, platform: Platform
) -> None:
    events = _ask(
        http,
        {"input": "Open a work order for CR-102: setting drifts, fault E-418, priority P1"},
    )
    run_id = events[0]["run_id"]
    assert events[-1]["status"] == "waiting", _shown(events)
    pending = http.get(f"/v1/agents/runs/{run_id}").json()["pending"]
    order = pending["forms"]["work_order"]
    assert order["equipment_id"] == "CR-102" and order["priority"] == "P1", pending
    assert pending["prompt"] == "Open this maintenance work order?"
    db = plant / "data" / "work_orders.sqlite"
    assert not db.exists()  # nothing is filed before a person approves

    # The replica holding the waiting run dies; the run waits on in the new one.
    platform.kill_agents()
    assert run_id in [a["run_id"] for a in http.get("/v1/agents/approvals").json()["data"]]

    own = http.post(f"/v1/agents/runs/{run_id}/resume", json={"action": "approve"})
    assert own.status_code == 403 and own.json()["error"]["code"] == "self_approval"
    approve = {"action": "approve", "stream": False}
    done = http.post(f"/v1/agents/runs/{run_id}/resume", json=approve, headers=reviewer)
    assert done.status_code == 200 and done.json()["status"] == "done", done.text
    again = http.post(f"/v1/agents/runs/{run_id}/resume", json=approve, headers=reviewer)
    assert again.status_code == 409
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT run_id, values_json FROM work_orders").fetchall()
    assert [json.loads(v) for _r, v in rows] == [order]
