"""The console's Knowledge page in a real Chromium against the real gateway: the Knowledge
deployment on Ray Serve with the packaged embedder and embedded Qdrant.

Uploading by drag-and-drop and by the file picker with a progress bar per file, a bad
file's error naming the file and the reason, search with the query's words marked, a
snapshot and a rollback that takes an upload out of the list and the search, and two
tenants' bases seen through a tenant key."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from _console import login, shot
from _platform import Platform
from playwright.sync_api import Locator, Page, expect

from qingliang.platform.storage.keys import KeyStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KB = "console-kb-t1"
OTHER = "console-kb-t2"
#: Uploading, parsing and embedding one small file on a busy CPU.
UPLOAD_MS = 90_000


def _manifest(p: Platform, name: str, folder: Path, tenant: str) -> Path:
    body = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": name},
        "spec": {
            "sources": [{"folder": str(folder)}],
            "chunking": {"max_chars": 300, "overlap_chars": 50},
            "retrieval": {"context": {"neighbours": 1}},
            "labels": {"tenant": tenant, "domain": "console"},
        },
    }
    return p.manifest(name, yaml.safe_dump(body, allow_unicode=True))


def _api(p: Platform, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=p.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )


@pytest.fixture(scope="module")
def kbs(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two bases of the tenants t1 and t2, synced; a read-only key of t1."""
    root = tmp_path_factory.mktemp("console-kb")
    for name, tenant, files in (
        (
            KB,
            "t1",
            {
                "hours.md": "# 门诊时间\n\n## 周末\n\n周六上午开放普通门诊,周日只开放急诊。",
                "parking.txt": "Visitor parking is in the north garage, level B2.",
            },
        ),
        (OTHER, "t2", {"plant.txt": "冲压车间进入前必须佩戴安全帽和护目镜。"}),
    ):
        folder = root / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text, encoding="utf-8")
        platform.ctl.apply([_manifest(platform, name, folder, tenant)], wait=False, progress=False)
    with _api(platform, platform.key) as ops:
        for name in (KB, OTHER):
            r = ops.post(f"/v1/knowledge/{name}/sync", json={})
            assert r.status_code == 200 and r.json()["added"] >= 1, r.text
    _rec, reader = KeyStore(platform.settings.state_db).create(
        "console-knowledge-t1", scopes=("knowledge:read", "tenant:t1")
    )
    return {"ops": platform.key, "t1_reader": reader}


def _open(page: Page, console_url: str, *route: str) -> None:
    page.goto(console_url + "#/" + "/".join(("knowledge", *route)))


def _sign_in_at(page: Page, console_url: str, key: str, *route: str) -> None:
    """Open the page's address, then sign in: the console shows that page first."""
    _open(page, console_url, *route)
    login(page, key, console_url)
    expect(page.locator("main[data-testid=page-knowledge]")).to_be_visible()


def _tab(page: Page, tab: str) -> None:
    page.get_by_test_id(f"tab-{tab}").click()
    expect(page.get_by_test_id(f"tab-{tab}")).to_have_attribute("aria-selected", "true")


def _upload_item(page: Page, name: str) -> Locator:
    return page.locator(f"[data-testid=knowledge-upload-item][data-file='{name}']")


def _doc(page: Page, source: str) -> Locator:
    return page.locator(f"[data-testid=knowledge-doc][data-source='{source}']")


def _drop(page: Page, name: str, text: str) -> None:
    """Drop a file on the upload zone, as a user dragging it from the desktop."""
    transfer = page.evaluate_handle(
        """([name, text]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([text], name, { type: 'text/plain' }));
            return dt;
        }""",
        [name, text],
    )
    page.get_by_test_id("knowledge-dropzone").dispatch_event("drop", {"dataTransfer": transfer})


def _search(page: Page, query: str) -> Locator:
    _tab(page, "search")
    page.get_by_test_id("knowledge-search-query").fill(query)
    page.get_by_test_id("knowledge-search-submit").click()
    expect(page.get_by_test_id("knowledge-search-meta")).to_be_visible()
    return page.get_by_test_id("knowledge-hit")


def _doc_rows(p: Platform, key: str) -> dict[str, tuple[int, int]]:
    with _api(p, key) as api:
        rows = api.get(f"/v1/knowledge/{KB}/documents").json()["data"]
    return {r["source"]: (r["chunks"], r["version"]) for r in rows}


def test_upload_by_drop_and_picker_then_search_marks_the_words(
    page: Page, console_url: str, platform: Platform, kbs: dict
) -> None:
    before = _doc_rows(platform, kbs["ops"])
    _sign_in_at(page, console_url, kbs["ops"])
    expect(page.locator(f"[data-testid=knowledge-kb][data-kb={OTHER}]")).to_be_visible()
    row = page.locator(f"[data-testid=knowledge-kb][data-kb={KB}]")
    expect(row.get_by_test_id("knowledge-kb-tenant")).to_have_text("t1")
    row.get_by_test_id("knowledge-open").click()
    expect(page.get_by_test_id("knowledge-title")).to_have_text(KB)

    _tab(page, "upload")
    _drop(
        page, "lighthouse.txt", "The lighthouse keeper logs every foghorn test in the amber ledger."
    )
    good = _upload_item(page, "lighthouse.txt")
    expect(good).to_have_attribute("data-state", "done", timeout=UPLOAD_MS)
    expect(good.get_by_test_id("knowledge-upload-progress")).to_have_js_property("value", 1)
    expect(good.get_by_test_id("knowledge-upload-result")).to_contain_text("1")

    # Two bad files through the picker: each fails with its own name and reason.
    page.get_by_test_id("knowledge-file-input").set_input_files(
        [
            {"name": "empty.txt", "mimeType": "text/plain", "buffer": b""},
            {"name": "macro.exe", "mimeType": "application/octet-stream", "buffer": b"MZ\x90"},
        ]
    )
    for name, reason in (("empty.txt", "empty"), ("macro.exe", "unsupported file type .exe")):
        item = _upload_item(page, name)
        expect(item).to_have_attribute("data-state", "failed", timeout=UPLOAD_MS)
        expect(item.get_by_test_id("knowledge-upload-error")).to_contain_text(name)
        expect(item.get_by_test_id("knowledge-upload-error")).to_contain_text(reason)

    _tab(page, "documents")
    expect(_doc(page, "lighthouse.txt")).to_be_visible()
    failed = page.locator("[data-testid=knowledge-doc-failed][data-source='empty.txt']")
    expect(failed.get_by_test_id("knowledge-doc-state")).to_be_visible()
    expect(failed.get_by_test_id("knowledge-doc-error")).to_contain_text("empty")
    # The base's other documents are as they were: same chunks, same version.
    for source, (chunks, version) in before.items():
        doc = _doc(page, source)
        expect(doc.get_by_test_id("knowledge-doc-chunks")).to_have_text(str(chunks))
        expect(doc).to_contain_text(f"v{version}")
    assert _doc_rows(platform, kbs["ops"]).items() >= before.items()
    shot(page, "knowledge-documents")

    hits = _search(page, "amber ledger foghorn")
    top = hits.first
    expect(top).to_have_attribute("data-source", "lighthouse.txt")
    marks = top.get_by_test_id("knowledge-hit-text").locator("mark")
    expect(marks).to_have_text(["foghorn", "amber", "ledger"])
    shot(page, "knowledge-search")
    top.get_by_test_id("knowledge-hit-open").click()
    detail = page.get_by_test_id("knowledge-hit-detail")
    expect(detail.locator("[data-field=document]")).to_have_text("lighthouse.txt")
    expect(detail.get_by_test_id("knowledge-hit-passage")).to_contain_text("lighthouse keeper")
    detail.get_by_test_id("knowledge-hit-close").click()
    expect(detail).to_have_count(0)

    # Deleting the upload asks first, then it leaves the list.
    _tab(page, "documents")
    _doc(page, "lighthouse.txt").get_by_test_id("knowledge-doc-delete").click()
    expect(page.get_by_test_id("confirm")).to_contain_text("lighthouse.txt")
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("knowledge-action-result")).to_contain_text("lighthouse.txt")
    expect(_doc(page, "lighthouse.txt")).to_have_count(0)
    expect(_doc(page, "hours.md")).to_be_visible()


def test_rollback_to_a_snapshot_takes_a_later_upload_out(
    page: Page, console_url: str, platform: Platform, kbs: dict
) -> None:
    _sign_in_at(page, console_url, kbs["ops"], KB, "versions")
    page.get_by_test_id("knowledge-snapshot-note").fill("before the ferry notice")
    page.get_by_test_id("knowledge-snapshot-take").click()
    expect(page.get_by_test_id("knowledge-version-result")).to_be_visible()
    saved = page.locator("[data-testid=knowledge-snapshot]", has_text="before the ferry notice")
    expect(saved).to_have_count(1)
    version = saved.get_attribute("data-version")
    assert version and version.isdigit()

    _tab(page, "upload")
    page.get_by_test_id("knowledge-file-input").set_input_files(
        [
            {
                "name": "ferry.txt",
                "mimeType": "text/plain",
                "buffer": b"The ferry timetable lists a midnight crossing to Gull Island.",
            }
        ]
    )
    expect(_upload_item(page, "ferry.txt")).to_have_attribute(
        "data-state", "done", timeout=UPLOAD_MS
    )
    _tab(page, "documents")
    expect(_doc(page, "ferry.txt")).to_be_visible()
    expect(_search(page, "midnight ferry crossing Gull Island").first).to_have_attribute(
        "data-source", "ferry.txt"
    )

    _tab(page, "versions")
    page.locator(f"[data-testid=knowledge-snapshot][data-version='{version}']").get_by_test_id(
        "knowledge-rollback"
    ).click()
    expect(page.get_by_test_id("confirm")).to_contain_text(f"v{version}")
    page.get_by_test_id("confirm-ok").click()
    result = page.get_by_test_id("knowledge-version-result")
    expect(result).to_contain_text(f"v{version}")
    expect(page.get_by_test_id("knowledge-version-error")).to_have_count(0)

    _tab(page, "documents")
    expect(_doc(page, "hours.md")).to_be_visible()
    expect(_doc(page, "ferry.txt")).to_have_count(0)
    hits = _search(page, "midnight ferry crossing Gull Island")
    expect(hits.first).to_be_visible()
    expect(page.locator("[data-testid=knowledge-hit][data-source='ferry.txt']")).to_have_count(0)


def test_a_tenant_key_sees_only_its_base_and_may_not_change_it(
    tablet_page: Page, console_url: str, platform: Platform, kbs: dict
) -> None:
    page = tablet_page
    _sign_in_at(page, console_url, kbs["t1_reader"])
    rows = page.locator("[data-testid=knowledge-kb]")
    expect(rows).to_have_count(1)
    expect(rows).to_have_attribute("data-kb", KB)

    _open(page, console_url, KB)
    expect(page.get_by_test_id("knowledge-docs")).to_be_visible()
    expect(_doc(page, "hours.md")).to_be_visible()
    # Read-only: no upload tab, no sync, delete, snapshot or rollback buttons.
    expect(page.get_by_test_id("tab-upload")).to_have_count(0)
    expect(page.get_by_test_id("knowledge-sync")).to_have_count(0)
    expect(page.get_by_test_id("knowledge-doc-delete")).to_have_count(0)
    _tab(page, "versions")
    expect(page.get_by_test_id("knowledge-snapshot").first).to_be_visible()
    expect(page.get_by_test_id("knowledge-snapshot-take")).to_have_count(0)
    expect(page.get_by_test_id("knowledge-rollback")).to_have_count(0)
    hits = _search(page, "周末门诊")
    expect(hits.first).to_have_attribute("data-source", "hours.md")
    expect(hits.first.locator("mark").first).to_be_visible()

    # The other tenant's base by its address: the server's own refusal, nothing of it shown.
    with _api(platform, kbs["t1_reader"]) as api:
        r = api.get(f"/v1/knowledge/{OTHER}")
    assert r.status_code == 404
    _open(page, console_url, OTHER, "documents")
    error = page.get_by_test_id("knowledge-error")
    expect(error).to_contain_text(r.json()["error"]["message"])
    expect(error).not_to_contain_text("plant.txt")
    expect(page.get_by_test_id("knowledge-docs")).to_have_count(0)
    shot(page, "knowledge-tenant-refusal")


def test_a_learned_answer_is_searchable_and_a_retraction_needs_a_reason(
    page: Page, console_url: str, platform: Platform, kbs: dict
) -> None:
    _sign_in_at(page, console_url, kbs["ops"], KB, "answers")
    page.get_by_test_id("knowledge-answer-question").fill("访客停车场在哪一层?")
    page.get_by_test_id("knowledge-answer-answer").fill("北侧车库地下二层,凭预约单免费两小时。")
    page.get_by_test_id("knowledge-answer-add").click()
    expect(page.get_by_test_id("knowledge-answer-result")).to_be_visible()
    answer = page.locator("[data-testid=knowledge-answer]", has_text="访客停车场在哪一层")
    expect(answer).to_have_count(1)
    hits = _search(page, "访客停车场在哪一层")
    expect(hits.first).to_contain_text("凭预约单免费两小时")

    _tab(page, "answers")
    answer.get_by_test_id("knowledge-answer-retract").click()
    page.get_by_test_id("confirm-ok").click()  # no reason given: the server refuses
    with _api(platform, kbs["ops"]) as api:
        aid = answer.get_attribute("data-id")
        refused = api.post(f"/v1/knowledge/{KB}/answers/{aid}/retract", json={"reason": ""})
    assert refused.status_code == 400
    expect(page.get_by_test_id("knowledge-answer-error")).to_contain_text(
        refused.json()["error"]["message"]
    )
    answer.get_by_test_id("knowledge-answer-retract").click()
    page.get_by_test_id("knowledge-answer-reason").fill("停车规定已更新")
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("knowledge-answer-error")).to_have_count(0)
    expect(answer).to_have_count(0)  # the list shows active answers
    page.get_by_test_id("knowledge-answers-status").select_option("retracted")
    expect(answer).to_contain_text("停车规定已更新")


def test_a_file_a_sync_could_not_read_stays_listed_with_its_reason(
    page: Page, console_url: str, platform: Platform, tmp_path: Path
) -> None:
    """A broken file in the source folder: after the sync (made through the API, not this
    page) and a reload the Documents tab still names it and why; the History lists the sync."""
    name = "console-kb-broken"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "ok.txt").write_text("Lockers are on the second floor.", encoding="utf-8")
    (folder / "scan.pdf").write_bytes(b"\x00\x01this is not a pdf")
    platform.ctl.apply([_manifest(platform, name, folder, "t1")], wait=False, progress=False)
    with _api(platform, platform.key) as ops:
        r = ops.post(f"/v1/knowledge/{name}/sync", json={})
        assert r.status_code == 200 and [e["path"] for e in r.json()["errors"]] == ["scan.pdf"]
    _sign_in_at(page, console_url, platform.key, name, "documents")
    failed = page.locator("[data-testid=knowledge-doc-failed][data-source='scan.pdf']")
    expect(failed).to_have_attribute("data-origin", "recorded")
    expect(failed.get_by_test_id("knowledge-doc-error")).not_to_be_empty()
    expect(_doc(page, "ok.txt")).to_be_visible()
    _tab(page, "versions")
    history = page.get_by_test_id("knowledge-history-row")
    expect(history.first).to_be_visible()
    sync = page.locator("[data-testid=knowledge-history-row][data-action=sync]")
    expect(sync).to_contain_text("scan.pdf")
    expect(
        page.locator("[data-testid=knowledge-history-row][data-action=register]")
    ).to_be_visible()
