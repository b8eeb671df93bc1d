"""Bodies larger than gRPC's default 4 MiB message cross the platform's Serve hops.

Serve's replicas talk gRPC on the platform (``RAY_SERVE_USE_GRPC_BY_DEFAULT``); a replica's
messages are capped by ``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH`` (gRPC's default 4 MiB
answered a 6 MB upload with a 500). The platform raises the cap to what the gateway
accepts, so a large upload reaches the knowledge service and gets its own answer.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import yaml
from _platform import Platform

pytestmark = pytest.mark.integration


def test_a_6_mb_upload_reaches_the_knowledge_service(platform: Platform, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# 说明\n\n一份很短的文档。", encoding="utf-8")
    body = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": "it-large"},
        "spec": {"sources": [{"folder": str(folder)}]},
    }
    platform.ctl.apply(
        [platform.manifest("it-large", yaml.safe_dump(body, allow_unicode=True))],
        wait=False,
        progress=False,
    )
    blob = os.urandom(6_000_000)  # not a PDF: the knowledge service must say so
    with httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {platform.key}"},
        timeout=120,
    ) as client:
        r = client.post(
            "/v1/knowledge/it-large/documents", files={"file": ("big.pdf", blob, "application/pdf")}
        )
        assert r.status_code == 400, r.text
        assert "big.pdf" in r.json()["error"]["message"]
        assert "PDF" in r.json()["error"]["message"]
        r = client.delete("/v1/knowledge/it-large")
        assert r.status_code == 200, r.text
