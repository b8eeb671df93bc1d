"""What the gateway's backend records for the console's metrics: output tokens (a
stream's usage asked for and kept from a caller that did not ask), time to first token
(the first chunk with text, not the role chunk), and 429 rejections.

The Serve handle is the fake boundary; the counts go to a real arm_stats file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qingliang.platform.errors import Saturated
from qingliang.platform.storage.arm_stats import ArmStats, series, summary
from qingliang.platform.storage.state import StateStore
from qingliang.serving.deployments.handles import ServeBackend
from qingliang.serving.metrics import ServingMetrics

ROLE = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
TEXT = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}}


class Handle:
    """A replica that streams a role chunk, a text chunk and (when asked) the usage."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.bodies: list[dict] = []
        self.generate = SimpleNamespace(remote=self._generate)
        self.generate_stream = SimpleNamespace(remote=self._stream)

    def options(self, **_: Any) -> Handle:
        return self

    async def _generate(
        self, endpoint: str, body: dict, adapter: str | None, meta: dict | None = None
    ) -> dict:
        if self.error is not None:
            raise self.error
        return {"choices": [{"message": {"content": "ok"}}], "usage": USAGE["usage"]}

    async def _stream(
        self, endpoint: str, body: dict, adapter: str | None, meta: dict | None = None
    ) -> AsyncIterator[dict]:
        self.bodies.append(body)
        if self.error is not None:
            raise self.error
        yield ROLE
        await asyncio.sleep(0.03)
        yield TEXT
        if (body.get("stream_options") or {}).get("include_usage"):
            yield USAGE


def backend(home: Path, handle: Handle) -> tuple[ServeBackend, ArmStats]:
    stats = ArmStats.for_home(home, flush_s=3600)
    b = ServeBackend(StateStore(home / "state.sqlite"), ServingMetrics(None), stats=stats)
    b._handles["qwen"] = handle  # the Serve handle boundary
    return b, stats


def test_a_stream_counts_its_tokens_without_showing_usage_to_a_caller_that_did_not_ask(
    tmp_path: Path,
) -> None:
    handle = Handle()
    b, stats = backend(tmp_path, handle)

    async def main() -> tuple[list, list]:
        plain = [c.data async for c in b.stream("qwen", "chat", {"stream": True}, None)]
        asked = {"stream": True, "stream_options": {"include_usage": True}}
        with_usage = [c.data async for c in b.stream("qwen", "chat", asked, "a")]
        return plain, with_usage

    plain, with_usage = asyncio.run(main())
    assert plain == [ROLE, TEXT]  # the usage event was asked for here, not by the caller
    assert with_usage == [ROLE, TEXT, USAGE]
    assert handle.bodies[0]["stream_options"] == {"include_usage": True}
    stats.close()
    since = time.time() - 30
    out = series(tmp_path, since=since, step_s=60)[1]["qwen"]
    assert sum(out["requests"]) == 2 and sum(out["output_tokens"]) == 14
    # The role chunk came at once, the text 30 ms later: the first token is the text.
    assert all(p is None or p > 25 for p in out["ttft_p50_ms"])
    assert any(p is not None for p in out["ttft_p50_ms"])


def test_an_answer_counts_its_tokens_and_a_429_counts_as_a_rejection(tmp_path: Path) -> None:
    b, stats = backend(tmp_path, Handle())

    async def main() -> None:
        await b.generate("qwen", "chat", {}, None)
        b._handles["qwen"] = Handle(error=Saturated("saturated", retry_after=1))
        with pytest.raises(Saturated):
            await b.generate("qwen", "chat", {}, None)
        with pytest.raises(Saturated):
            async for _ in b.stream("qwen", "chat", {"stream": True}, None):
                pass

    asyncio.run(main())
    stats.close()
    since = time.time() - 30
    out = series(tmp_path, since=since, step_s=60)[1]["qwen"]
    assert sum(out["requests"]) == 1 and sum(out["output_tokens"]) == 7
    assert sum(out["rejected_429"]) == 2
    assert summary(tmp_path, "qwen", since=since)[""].requests == 1  # 429s are no requests
