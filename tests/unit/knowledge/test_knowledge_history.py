"""A knowledge base's history: every change with who, when and the version it made, and the
files a sync could not ingest kept with it (so the console shows them after a reload)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_knowledge_service import BigramEmbedder, _manifest

from qingliang.knowledge.api import dispatch
from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.errors import BadRequest, NotFound


@pytest.fixture
def svc(tmp_path: Path) -> KnowledgeService:
    s = KnowledgeService(tmp_path / "home", embedder_factory=lambda _m: BigramEmbedder())
    yield s
    s.close()


def test_history_keeps_each_change_and_the_files_that_failed(
    svc: KnowledgeService, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hours.md").write_text("# 门诊\n\n周六上午开放。", encoding="utf-8")
    (docs / "broken.pdf").write_bytes(b"\x00not a pdf")
    svc.register(_manifest("clinic", docs), base=docs)
    svc.sync("clinic", actor="key:ops")
    svc.snapshot("clinic", note="before the change", actor="key:ops")
    (docs / "hours.md").write_text("# 门诊\n\n周日只开急诊。", encoding="utf-8")
    svc.sync("clinic", actor="key:ops")

    events = svc.history("clinic", tenant="city-a")
    assert [e["seq"] for e in events] == sorted((e["seq"] for e in events), reverse=True)
    assert events[-1]["action"] == "register"
    last_sync = next(e for e in events if e["action"] == "sync")
    assert last_sync["actor"] == "key:ops" and last_sync["version"] == 2
    assert last_sync["detail"]["errors"] == 1
    [failed] = last_sync["detail"]["failed"]
    assert failed["path"].endswith("broken.pdf") and failed["reason"]
    # The host folder is never shown, as in every other answer of the base.
    assert str(tmp_path) not in str(events)
    assert [e["seq"] for e in svc.history("clinic", tenant="city-a", limit=1)] == [events[0]["seq"]]


def test_history_follows_tenancy_and_checks_its_limit(
    svc: KnowledgeService, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello", encoding="utf-8")
    svc.register(_manifest("clinic", docs), base=docs)
    with pytest.raises(NotFound):
        svc.history("clinic", tenant="city-b")
    for bad in (0, 1001, "10", True):
        with pytest.raises(BadRequest, match="limit must be a whole number"):
            dispatch(svc, "history", "clinic", "city-a", "key:x", {"limit": bad})
    out = dispatch(svc, "history", "clinic", "city-a", "key:x", {"limit": 5})
    assert out["data"][0]["action"] == "register"
