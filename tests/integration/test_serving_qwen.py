"""The packaged Qwen2.5-Coder 0.5B, served the way `make up` serves it: the default
manifest, vLLM's CPU build in a Ray Serve replica, the gateway, the openai client."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import yaml
from _platform import Platform

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEFAULTS = Path(__file__).resolve().parents[2] / "deploy" / "defaults" / "qwen-coder.yaml"


@pytest.fixture(scope="module")
def qwen(platform: Platform) -> str:
    doc = yaml.safe_load(DEFAULTS.read_text())
    doc["metadata"]["name"] = "qwen"
    # Share the test cluster's two cores with the tiny deployments.
    doc["spec"]["placement"]["cpus"] = 1
    path = platform.manifest("qwen", yaml.safe_dump(doc))
    platform.ctl.apply([path], wait=True, timeout_s=900, progress=False)
    yield "qwen"
    platform.ctl.delete(["qwen"])


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
