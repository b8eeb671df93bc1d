"""The packaged Qwen2.5-Coder 0.5B, served the way `make up` serves it: the default
manifest, vLLM's CPU build in a Ray Serve replica, the gateway, the openai client."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from _platform import Platform

from qingliang.platform.storage.keys import KeyStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_qwen_answers_in_english_and_chinese(qwen: str, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=qwen,
        messages=[{"role": "user", "content": "What is the capital of France? One sentence."}],
        max_tokens=30,
        temperature=0,
    )
    assert "Paris" in (r.choices[0].message.content or "")
    stream = client.chat.completions.create(
        model=qwen,
        messages=[{"role": "user", "content": "中国的首都是哪个城市？请用一句话回答。"}],
        max_tokens=30,
        temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 3
    assert "北京" in "".join(pieces)


AGENT = """apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {{name: qwen-intake}}
spec:
  agents:
    - name: clerk
      model: {model}
      system: You record applications. Call the intake tool with the applicant's details.
      tools: [intake]
      max_tokens: 128
      max_tool_rounds: 1
  tools:
    - name: intake
      kind: form
      description: Record an application with the applicant's name and phone number.
      fields:
        - {{name: applicant, description: "The applicant's full name"}}
        - {{name: phone, description: "The applicant's phone number"}}
    - {{name: file, kind: submit, form: intake, database: {db}}}
  nodes:
    - {{name: take, type: agent, agent: clerk, next: review}}
    - {{name: review, type: approval, when: {{tools: [intake]}}, next: submit}}
    - {{name: submit, type: tool, tool: file}}
"""


def test_qwen_fills_a_form_through_its_native_tool_calls(
    qwen: str, platform: Platform, tmp_path: Path
) -> None:
    """The agent offers the form as an OpenAI tool; vLLM renders it with Qwen's own
    template and parses the model's call (hermes); the filled form waits for approval."""
    import httpx

    db = tmp_path / "intake.sqlite"
    path = platform.manifest("qwen-intake", AGENT.format(model=qwen, db=db))
    platform.ctl.apply([path], wait=False, progress=False)
    with httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {platform.key}"},
        timeout=300,
    ) as http:
        r = http.post(
            "/v1/agents/qwen-intake/runs",
            json={
                "input": "Please record my application. My name is Li Lei and my phone "
                "number is 13800000000.",
                "stream": False,
            },
        )
        assert r.status_code == 200, r.text
        run = r.json()
        tools = [e for e in run["events"] if e["type"] == "tool"]
        assert tools and tools[0]["tool"] == "intake", run["events"]
        assert run["status"] == "waiting", run
        form = run["pending"]["forms"]["intake"]
        assert "Li Lei" in form["applicant"] and "13800000000" in form["phone"]
        # Another key than the one that started the run answers its approval.
        lead = KeyStore(platform.settings.state_db).create("it-qwen-lead", scopes=["admin"])[1]
        done = http.post(
            f"/v1/agents/runs/{run['id']}/resume",
            json={"action": "approve", "stream": False},
            headers={"Authorization": f"Bearer {lead}"},
        ).json()
        assert done["status"] == "done", done
