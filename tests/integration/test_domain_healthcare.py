"""The healthcare demonstration on the running platform: the bundle
(deploy/domains/healthcare) applied like `qingliang demo up healthcare` on the packaged
qwen-coder deployment (vLLM CPU), its guide KB synced with the packaged embedder, and the
health-desk asked one thing of each kind through `/v1/agents`: a guideline question (a
cited answer carrying the not-a-diagnosis notice), a red-flag message (handed to a person
before any answer: waiting, nothing streamed), and a photographed lab report (read by OCR,
its tests looked up in the reference table)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _platform import Platform, domain_bundle, sse_events

from qingliang.platform.storage.keys import KeyStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUNDLE = Path(__file__).resolve().parents[2] / "deploy" / "domains" / "healthcare"
NOTICE = "不能替代医生诊断"


@pytest.fixture(scope="module")
def health(
    qwen: str, platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The bundle as `demo up --no-train` leaves it (its adapter alias: the base model)."""
    dest = tmp_path_factory.mktemp("domains") / "healthcare"
    yield from domain_bundle(platform, BUNDLE, dest, {"health-guide": 32})


@pytest.fixture(scope="module")
def nurse(platform: Platform) -> dict[str, str]:
    """A second key: the one that started a run may not answer its approval."""
    key = KeyStore(platform.settings.state_db).create("it-health-nurse", scopes=["admin"])[1]
    return {"Authorization": f"Bearer {key}"}


def _ask(http: httpx.Client, body: dict) -> list[dict]:
    with http.stream("POST", "/v1/agents/health-desk/runs", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        return sse_events(r)


def _shown(events: list[dict]) -> str:
    """The events but the tokens, in full (what a failed assertion shows)."""
    return "\n".join(json.dumps(e, ensure_ascii=False) for e in events if e["type"] != "token")


def test_a_guide_question_gets_a_cited_answer_with_the_notice(
    health: Path, http: httpx.Client, nurse: dict
) -> None:
    """The answer cites the guide and goes out with the notice: written by the model, or,
    when the small model leaves it out, added by a person at the `notice` check (the run
    does not finish without it)."""
    events = _ask(http, {"input": "空腹血糖多少需要去看医生？"})
    assert next(e for e in events if e["type"] == "route")["router"] == "health-desk/triage"
    cited = [c for e in events if e["type"] == "citations" for c in e["citations"]]
    assert cited and cited[0]["record"] == "hg-en-01", cited
    run_id = events[0]["run_id"]
    run = http.get(f"/v1/agents/runs/{run_id}").json()
    if run["status"] == "waiting":
        assert run["pending"]["node"] == "notice" and NOTICE not in run["answer"], run
        fixed = run["answer"] + "\n【提示】以上内容为健康科普，不能替代医生诊断。"
        edit = {"action": "edit", "answer": fixed, "stream": False}
        r = http.post(f"/v1/agents/runs/{run_id}/resume", json=edit, headers=nurse)
        assert r.status_code == 200, r.text
        run = http.get(f"/v1/agents/runs/{run_id}").json()
    assert run["status"] == "done", (run, _shown(events))
    assert NOTICE in run["answer"] and "7.0" in run["answer"], run["answer"]


def test_a_red_flag_waits_for_a_person_and_nothing_is_answered(
    health: Path, http: httpx.Client
) -> None:
    events = _ask(http, {"input": "我爸刚才突然口角歪斜，说话不清楚，一侧手没力气"})
    assert events[-1]["status"] == "waiting", _shown(events)
    assert not [e for e in events if e["type"] in ("token", "route", "citations", "tool")]
    run = http.get(f"/v1/agents/runs/{events[0]['run_id']}").json()
    assert run["pending"]["node"] == "red_flags" and "120" in run["pending"]["prompt"]
    assert not run["answer"] and run["tokens"] == 0
    inbox = http.get("/v1/agents/approvals").json()
    assert events[0]["run_id"] in json.dumps(inbox)


def test_a_photographed_lab_report_is_read_and_its_values_looked_up(
    health: Path, http: httpx.Client
) -> None:
    """OCR puts the report's rows in the prompt; the desk looks the tests it read up in the
    reference table, whose answer names the range ALT 86 U/L is outside (7-40). The packaged
    0.5B model then tends to repeat its call as text instead of explaining: such an answer
    lacks the notice, so the run does not finish but waits at `notice` for a person. A
    finished answer names the out-of-range value."""
    photo = (health / "samples" / "lab_report.png").read_bytes()
    body = {
        "input": "帮我看看这张化验单，哪些指标不正常？",
        "attachments": [{"name": "lab_report.png", "data": base64.b64encode(photo).decode()}],
    }
    events = _ask(http, body)
    looked_up = [e for e in events if e["type"] == "tool" and e["tool"] == "lab_reference"]
    assert looked_up, _shown(events)
    query = looked_up[0]["arguments"]["query"]
    assert all(f"'{code}'" in query for code in ("ALT", "HGB")), query  # read from the photo
    assert "| ALT | 谷丙转氨酶 | U/L | 7.0 | 40.0 |" in looked_up[0]["result"], looked_up
    assert "| HGB | 血红蛋白 | g/L | 115.0 | 175.0 |" in looked_up[0]["result"], looked_up
    run = http.get(f"/v1/agents/runs/{events[0]['run_id']}").json()
    if run["status"] == "waiting":
        assert run["pending"]["node"] == "notice" and NOTICE not in run["answer"], run
    else:
        assert run["status"] == "done" and NOTICE in run["answer"], run
        assert "86" in run["answer"] and ("ALT" in run["answer"] or "谷丙转氨酶" in run["answer"])
