"""The gov demonstration on the running platform: the bundle (deploy/domains/gov) applied
like `qingliang demo up gov` on the packaged qwen-coder deployment (vLLM CPU), its policy
KB synced with the packaged embedder, and the gov-desk asked one thing of each kind through
`/v1/agents`: a policy question (a cited answer naming the record), a hotline message (its
category and department as the ticket form's values) and a residence-permit application
with a photographed form attached (read by OCR into the form, waiting for a person,
approved with a second key, filed exactly once)."""

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

BUNDLE = Path(__file__).resolve().parents[2] / "deploy" / "domains" / "gov"


@pytest.fixture(scope="module")
def gov(qwen: str, platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bundle as `demo up --no-train` leaves it (its adapter alias: the base model)."""
    dest = tmp_path_factory.mktemp("domains") / "gov"
    yield from domain_bundle(platform, BUNDLE, dest, {"gov-policy": 40})


@pytest.fixture(scope="module")
def reviewer(platform: Platform) -> dict[str, str]:
    key = KeyStore(platform.settings.state_db).create("it-gov-officer", scopes=["admin"])[1]
    return {"Authorization": f"Bearer {key}"}


def _ask(http: httpx.Client, body: dict, arm: str, reviewer: dict, tries: int = 8) -> list[dict]:
    """Ask the desk until its learned router picks ``arm``; a wrong desk gets feedback -1
    (and a waiting run is rejected), as the README tells a user to do."""
    for _ in range(tries):
        with http.stream("POST", "/v1/agents/gov-desk/runs", json=body, timeout=300) as r:
            assert r.status_code == 200, r.read()
            events = sse_events(r)
        route = next(e for e in events if e["type"] == "route")
        if route["arm"] == arm:
            return events
        run_id = events[0]["run_id"]
        if events[-1].get("status") == "waiting":
            reject = {"action": "reject", "stream": False}
            http.post(f"/v1/agents/runs/{run_id}/resume", json=reject, headers=reviewer)
        assert http.post("/v1/feedback", json={"run_id": run_id, "score": -1}).status_code == 200
    raise AssertionError(f"the router never chose {arm!r}")


def test_a_policy_question_gets_an_answer_citing_the_record(
    gov: Path, http: httpx.Client, reviewer: dict
) -> None:
    events = _ask(http, {"input": "租房的话每年能提取多少住房公积金？"}, "policy", reviewer)
    cited = [c for e in events if e["type"] == "citations" for c in e["citations"]]
    assert cited and cited[0]["record"] == "HF-001", cited
    assert cited[0]["text"].startswith("租房提取住房公积金")
    run = http.get(f"/v1/agents/runs/{events[0]['run_id']}").json()
    assert run["status"] == "done" and run["answer"].strip(), run


def test_a_hotline_message_is_classified_into_the_taxonomy_and_a_department(
    gov: Path, http: httpx.Client, reviewer: dict
) -> None:
    with (gov / "data" / "hotline_taxonomy.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    leaves = {r["level2"] for r in rows}
    departments = {r["department"] for r in rows}
    message = "我家楼下工地每天晚上十一点还在施工，噪音太大睡不着，请相关部门处理。"
    events = _ask(http, {"input": message}, "hotline", reviewer)
    tickets = [e for e in events if e["type"] == "tool" and e["tool"] == "hotline_ticket"]
    said: dict[str, str] = {}
    for e in events:
        if e["type"] == "token":
            said[e["node"]] = said.get(e["node"], "") + e["delta"]
    tools = [
        (e["tool"], e["arguments"], e.get("error"), e["result"][:200])
        for e in events
        if e["type"] == "tool"
    ]
    assert tickets, (said, tools)
    values = tickets[-1]["arguments"]
    assert values["category"] in leaves and values["department"] in departments, tickets
    cited = [c for e in events if e["type"] == "citations" for c in e["citations"]]
    assert cited and all(c.get("record") for c in cited)


def test_an_application_with_a_photographed_form_is_approved_and_filed_once(
    gov: Path, http: httpx.Client, reviewer: dict
) -> None:
    photo = (gov / "samples" / "residence_permit_form.png").read_bytes()
    body = {
        "input": "我要申请居住证，申请表照片附上，请按照片填写。",
        "attachments": [
            {"name": "residence_permit_form.png", "data": base64.b64encode(photo).decode()}
        ],
    }
    events = _ask(http, body, "apply", reviewer)
    run_id = events[0]["run_id"]
    assert events[-1]["status"] == "waiting", [e for e in events if e["type"] != "token"]
    form = http.get(f"/v1/agents/runs/{run_id}").json()["pending"]["forms"]["residence_permit"]
    assert "林晓雨" in form.get("applicant", "") or form.get("id_number") == "330102199203154528"

    # The key that started the run may not approve it; a second operator key may.
    own = http.post(f"/v1/agents/runs/{run_id}/resume", json={"action": "approve"})
    assert own.status_code == 403 and own.json()["error"]["code"] == "self_approval"
    approve = {"action": "approve", "stream": False}
    done = http.post(f"/v1/agents/runs/{run_id}/resume", json=approve, headers=reviewer)
    assert done.status_code == 200 and done.json()["status"] == "done", done.text
    again = http.post(f"/v1/agents/runs/{run_id}/resume", json=approve, headers=reviewer)
    assert again.status_code == 409
    with sqlite3.connect(gov / "data" / "requests.sqlite") as c:
        rows = c.execute("SELECT values_json FROM permit_applications").fetchall()
    assert [json.loads(v) for (v,) in rows] == [form]
