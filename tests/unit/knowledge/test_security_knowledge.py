"""Security of the knowledge area (issue 13): nothing a request or a manifest names may
reach a file outside its own root, and no response shows a host path.

- ``delete_document`` removes only a regular file directly inside the KB's own upload
  folder; every other ``doc`` (``../``, absolute, ``%2F``-decoded, a symlink, another
  tenant's upload, the data directory's own ``state.sqlite``) is the same 404 as an unknown
  document and is never looked at on disk;
- uploads never write outside the upload folder, whatever the file name says;
- symlinks in source folders are never followed, and each one skipped is reported;
- documents, upload, sync, delete and search responses and errors name documents
  relative to the KB, never by the data directory's (or a source folder's) host path.

Files run on a real KnowledgeService (embedded Qdrant, real ingest), through the gateway
app where the issue names the HTTP route.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from fastapi.testclient import TestClient

from qingliang.knowledge.api import LocalKnowledge
from qingliang.knowledge.ingest import parsers as parsers_module
from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.errors import ApiError, BadRequest, Conflict, NotFound
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.storage.keys import KeyStore
from tests.unit.knowledge.test_knowledge_api import NoModels
from tests.unit.knowledge.test_knowledge_service import BigramEmbedder, _manifest

SECRET = "机密：不得外泄的内容。"


@pytest.fixture
def svc(tmp_path: Path) -> Any:
    emb = BigramEmbedder()
    s = KnowledgeService(tmp_path / "home", embedder_factory=lambda _m: emb)
    yield s
    s.close()


@pytest.fixture
def world(tmp_path: Path, svc: KnowledgeService) -> dict[str, Path]:
    """Two tenants' KBs, one upload each, and files outside both that must survive."""
    docs, other = tmp_path / "docs", tmp_path / "other"
    docs.mkdir()
    other.mkdir()
    (docs / "a.md").write_text("# 甲\n\n甲市返岗人员居家隔离十四天。", encoding="utf-8")
    (other / "b.md").write_text("# 乙\n\n乙市返岗人员居家隔离七天。", encoding="utf-8")
    svc.register(_manifest("gov", docs, tenant="city-a"), base=docs)
    svc.register(_manifest("other", other, tenant="city-b"), base=other)
    svc.sync("gov")
    svc.sync("other")
    svc.upload("gov", "mine.md", "# 我的\n\n自己上传的文件。".encode(), tenant="city-a")
    svc.upload("other", "secret.md", f"# 乙\n\n{SECRET}".encode(), tenant="city-b")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me", encoding="utf-8")
    return {
        "docs": docs,
        "victim": victim,
        "state": svc.home / "state.sqlite",
        "theirs": svc.home / "uploads" / "other" / "secret.md",
        "mine": svc.home / "uploads" / "gov" / "mine.md",
        "uploads": svc.home / "uploads" / "gov",
    }


def _refusal(svc: KnowledgeService, doc: str) -> tuple:
    """What ``delete_document`` raised for ``doc``, with the echoed doc blanked out."""
    with pytest.raises(ApiError) as info:
        svc.delete_document("gov", doc, tenant="city-a")
    exc = info.value
    return (type(exc), exc.status_code, exc.param, exc.code, exc.message.replace(repr(doc), "D"))


def _snapshot(paths: list[Path]) -> dict[str, bytes | None]:
    return {str(p): p.read_bytes() if p.exists() else None for p in paths}


# ---------------------------------------------------------------- 1. delete_document


def _targets(world: dict[str, Path]) -> dict[str, str]:
    victim, theirs = world["victim"], world["theirs"]
    return {
        "dotdot-state": "../../state.sqlite",
        "dotdot-victim": "../../../victim.txt",
        "dotdot-other-tenant": "../other/secret.md",
        "through-own-upload": "mine.md/../../../../victim.txt",
        "absolute": str(victim),
        "absolute-other-tenant": str(theirs),
        "pct2F-decoded": unquote(quote(str(victim), safe="")),
        "absolute-state": str(world["state"]),
        "symlink-out": "link.md",
        "symlink-dir": "linkdir",
        "dot-slash": "./mine.md",
        "backslash": "..\\..\\state.sqlite",
        "nul": "mine.md\x00",
        "dotdot": "..",
        "dot": ".",
        "empty": "",
        "slash": "/",
    }


@pytest.mark.parametrize(
    "case",
    [
        "dotdot-state",
        "dotdot-victim",
        "dotdot-other-tenant",
        "through-own-upload",
        "absolute",
        "absolute-other-tenant",
        "pct2F-decoded",
        "absolute-state",
        "symlink-out",
        "symlink-dir",
        "dot-slash",
        "backslash",
        "nul",
        "dotdot",
        "dot",
        "empty",
        "slash",
    ],
)
def test_delete_document_never_leaves_the_upload_folder(
    svc: KnowledgeService,
    world: dict[str, Path],
    case: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uploads = world["uploads"]
    (uploads / "link.md").symlink_to(world["victim"])
    (uploads / "linkdir").symlink_to(world["docs"], target_is_directory=True)
    guarded = [world["victim"], world["state"], world["theirs"], world["mine"]]
    guarded += [world["docs"] / "a.md"]
    before = _snapshot(guarded)
    docs_before = svc.documents("gov", tenant="city-a")
    theirs_before = svc.documents("other", tenant="city-b")
    unknown = _refusal(svc, "no-such-document.md")
    assert unknown[0] is NotFound and unknown[1] == 404 and unknown[2] == "doc"

    doc = _targets(world)[case]
    touched: list[str] = []
    for fn in ("stat", "lstat", "unlink", "remove"):
        real = getattr(os, fn)

        def spy(p: Any, *a: Any, _real: Any = real, **k: Any) -> Any:
            touched.append(os.path.normpath(os.path.join(os.getcwd(), os.fspath(p))))
            return _real(p, *a, **k)

        monkeypatch.setattr(os, fn, spy)
    got = _refusal(svc, doc)
    monkeypatch.undo()

    # The very same refusal as a document that does not exist ...
    assert got == unknown
    # ... nothing outside the upload folder was looked at or removed ...
    outside = [str(p) for p in guarded if p != world["mine"]] + [str(world["docs"])]
    assert not [t for t in touched if any(t == o or t.startswith(o + os.sep) for o in outside)]
    assert _snapshot(guarded) == before
    assert (uploads / "link.md").is_symlink() and (uploads / "linkdir").is_symlink()
    # ... and no chunk of either KB went away.
    assert svc.documents("gov", tenant="city-a") == docs_before
    assert svc.documents("other", tenant="city-b") == theirs_before


def test_delete_document_still_deletes_own_uploads(
    svc: KnowledgeService, world: dict[str, Path]
) -> None:
    listed = {d["source"]: d for d in svc.documents("gov", tenant="city-a")}
    assert listed["mine.md"]["uploaded"]
    out = svc.delete_document("gov", listed["mine.md"]["doc_id"], tenant="city-a")
    assert out.report.deleted == 1 and not world["mine"].exists()
    # By name; and a file left in the folder without chunks (a crashed upload) goes too.
    (world["uploads"] / "stray.md").write_text("# x\n\ny", encoding="utf-8")
    assert svc.delete_document("gov", "stray.md", tenant="city-a").report.deleted == 0
    assert not (world["uploads"] / "stray.md").exists()
    # A symlink named like an upload document is refused, and stays.
    (world["uploads"] / "mine.md").symlink_to(world["victim"])
    with pytest.raises(NotFound):
        svc.delete_document("gov", "mine.md", tenant="city-a")
    assert (world["uploads"] / "mine.md").is_symlink() and world["victim"].is_file()


@pytest.fixture
def client(svc: KnowledgeService, world: dict[str, Path]) -> Any:
    home = svc.home
    app = create_app(NoModels(), None, KeyAuth(home / "state.sqlite", True), LocalKnowledge(svc))
    c = TestClient(app)
    keys = KeyStore(home / "state.sqlite")
    rw = ("inference", "knowledge:read", "knowledge:write")
    c.headers["Authorization"] = f"Bearer {keys.create('a', scopes=(*rw, 'tenant:city-a'))[1]}"
    return c


def _pct(path: str) -> str:
    return quote(path, safe="")


@pytest.mark.parametrize(
    "raw",
    [
        "..%2F..%2F..%2Fvictim.txt",
        "..%2F..%2Fstate.sqlite",
        "..%2Fother%2Fsecret.md",
        "%2F{victim}",
        "%2F{theirs}",
        "{victim_raw}",
        "mine.md%2F..%2F..%2F..%2F..%2Fvictim.txt",
        "link.md",
        "%00",
    ],
)
def test_delete_route_refuses_paths(
    client: Any, svc: KnowledgeService, world: dict[str, Path], raw: str
) -> None:
    (world["uploads"] / "link.md").symlink_to(world["victim"])
    guarded = [world["victim"], world["theirs"], world["mine"]]  # state.sqlite: keys write it
    before = _snapshot(guarded)
    url = raw.format(
        victim=_pct(str(world["victim"])[1:]),
        theirs=_pct(str(world["theirs"])[1:]),
        victim_raw=str(world["victim"]).lstrip("/"),
    )
    r = client.delete(f"/v1/knowledge/gov/documents/{url}")
    unknown = client.delete("/v1/knowledge/gov/documents/no-such-document.md")
    assert unknown.status_code == 404
    assert r.status_code == 404, r.text
    err, want = r.json()["error"], unknown.json()["error"]
    assert (err["type"], err["param"], err["code"]) == (want["type"], want["param"], want["code"])
    assert err["message"] == want["message"]
    assert _snapshot(guarded) == before and world["state"].is_file()
    assert (world["uploads"] / "link.md").is_symlink()


# -------------------------------------------------------------------------- 2. uploads


@pytest.mark.parametrize(
    ("filename", "stored"),
    [
        ("../../../victim.txt", "victim.txt"),
        ("..\\..\\..\\victim.txt", "victim.txt"),
        ("/tmp/victim.txt", "victim.txt"),
        ("C:\\Windows\\victim.txt", "victim.txt"),
        ("a\x00.txt", None),
        ("..", None),
        (".", None),
        (".hidden.txt", None),
        ("/", None),
        ("dir/", None),
    ],
)
def test_upload_never_writes_outside_the_folder(
    svc: KnowledgeService, world: dict[str, Path], filename: str, stored: str | None
) -> None:
    before = _snapshot([world["victim"], world["state"], world["theirs"]])
    listing = sorted(p.name for p in world["uploads"].iterdir())
    data = "# 新\n\n上传的正文。".encode()
    if stored is None:
        with pytest.raises(BadRequest) as info:
            svc.upload("gov", filename, data, tenant="city-a")
        assert info.value.param == "file"
        assert sorted(p.name for p in world["uploads"].iterdir()) == listing
    else:
        out = svc.upload("gov", filename, data, tenant="city-a")
        assert out.report.added == 1
        assert (world["uploads"] / stored).is_file()
    assert _snapshot([world["victim"], world["state"], world["theirs"]]) == before


def test_upload_replaces_a_planted_symlink_instead_of_writing_through_it(
    svc: KnowledgeService, world: dict[str, Path]
) -> None:
    (world["uploads"] / "evil.txt").symlink_to(world["victim"])
    svc.upload("gov", "evil.txt", "上传的正文。".encode(), tenant="city-a")
    assert world["victim"].read_text(encoding="utf-8") == "keep me"
    assert not (world["uploads"] / "evil.txt").is_symlink()


def test_upload_route_strips_the_path_of_a_multipart_file_name(
    client: Any, world: dict[str, Path]
) -> None:
    files = {"file": ("../../../victim.txt", "上传的正文。".encode(), "text/plain")}
    r = client.post("/v1/knowledge/gov/documents", files=files)
    assert r.status_code == 200, r.text
    assert world["victim"].read_text(encoding="utf-8") == "keep me"
    assert (world["uploads"] / "victim.txt").is_file()


# ---------------------------------------------------------------- 3. symlinks in sources


def test_sync_skips_symlinks_and_reports_each(
    tmp_path: Path, svc: KnowledgeService, world: dict[str, Path]
) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "leak.md").write_text(f"# 外\n\n{SECRET}", encoding="utf-8")
    (outside / "deep" / "leak2.md").write_text(f"# 外二\n\n{SECRET}", encoding="utf-8")
    docs = world["docs"]
    (docs / "sub").mkdir()
    (docs / "sub" / "c.md").write_text("# 丙\n\n子目录里的正文。", encoding="utf-8")
    (docs / "file-link.md").symlink_to(outside / "leak.md")
    (docs / "dir-link").symlink_to(outside, target_is_directory=True)
    (docs / "sub" / "inner-link.md").symlink_to(docs / "a.md")
    (docs / "sub" / "broken.md").symlink_to(tmp_path / "nowhere.md")
    (world["uploads"] / "up-link.md").symlink_to(outside / "leak.md")
    os.mkfifo(docs / "pipe.md")  # would block a read forever

    out = svc.sync("gov", tenant="city-a").to_dict()
    skipped = {s["path"]: s["reason"] for s in out["skipped"]}
    assert set(skipped) == {
        "file-link.md",
        "dir-link",
        "sub/inner-link.md",
        "sub/broken.md",
        "up-link.md",
        "pipe.md",
    }
    assert "outside the source folder" in skipped["file-link.md"]
    assert "outside the source folder" in skipped["dir-link"]
    assert "symbolic link" in skipped["sub/inner-link.md"]
    assert "not a regular file" in skipped["pipe.md"]
    assert str(tmp_path) not in json.dumps(out, ensure_ascii=False)
    sources = {d["source"] for d in svc.documents("gov", tenant="city-a")}
    assert sources == {"a.md", "sub/c.md", "mine.md"}
    hits = svc.search("gov", SECRET, tenant="city-a", limit=20)["citations"]
    assert not [h for h in hits if SECRET in h["text"]]


def test_a_glob_source_skips_symlinks_too(tmp_path: Path, svc: KnowledgeService) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    (outside / "leak.md").write_text(f"# 外\n\n{SECRET}", encoding="utf-8")
    (root / "d" / "ok.md").write_text("# 好\n\n正常的文件。", encoding="utf-8")
    (root / "d" / "leak.md").symlink_to(outside / "leak.md")
    (root / "lnk").symlink_to(outside, target_is_directory=True)
    kb = _manifest("globbed", root, sources=[{"glob": "*/*.md"}])
    svc.register(kb, base=root)
    out = svc.sync("globbed").to_dict()
    assert {s["path"] for s in out["skipped"]} == {"d/leak.md", "lnk/leak.md"}
    assert [d["source"] for d in svc.documents("globbed")] == ["d/ok.md"]


# ----------------------------------------------------------------- 4. information leaks


def _clean(tmp_path: Path, payload: Any) -> None:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    assert str(tmp_path) not in text and os.path.realpath(tmp_path) not in text


def test_no_response_shows_a_host_path(
    tmp_path: Path, svc: KnowledgeService, world: dict[str, Path]
) -> None:
    docs = world["docs"]
    (docs / "junk.pdf").write_bytes(b"%PDF-1.7\n" + b"\x8f" * 300)
    (docs / "rec.jsonl").write_text('{"text": "一条记录。"}\n{broken\n', encoding="utf-8")
    synced = svc.sync("gov", tenant="city-a").to_dict()
    assert {e["path"] for e in synced["errors"]} == {"junk.pdf", "rec.jsonl#line 2"}
    _clean(tmp_path, synced)
    listed = svc.documents("gov", tenant="city-a")
    assert {d["source"] for d in listed} == {"a.md", "mine.md", "rec.jsonl"}
    _clean(tmp_path, listed)
    _clean(tmp_path, svc.upload("gov", "n.md", "# 新\n\n又一条。".encode()).to_dict())
    _clean(tmp_path, svc.search("gov", "返岗人员", tenant="city-a"))
    _clean(tmp_path, svc.stats("gov", tenant="city-a"))
    _clean(tmp_path, svc.delete_document("gov", "n.md", tenant="city-a").to_dict())
    a_md = next(d for d in listed if d["source"] == "a.md")
    with pytest.raises(Conflict) as info:
        svc.delete_document("gov", a_md["doc_id"], tenant="city-a")
    _clean(tmp_path, str(info.value))
    assert "a.md" in str(info.value)
    with pytest.raises(BadRequest) as bad:
        svc.upload("gov", "scan.pdf", b"%PDF-1.4 garbage", tenant="city-a")
    _clean(tmp_path, str(bad.value))


def test_a_parser_crash_is_a_clear_error_without_host_paths(
    tmp_path: Path,
    svc: KnowledgeService,
    world: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    where = f"{svc.home}/uploads/gov/.0a1b2c3d.report.pdf"

    def boom(data: bytes, source: str, *_: Any) -> list:
        raise RuntimeError(
            f"cannot seek in {where}\nTraceback (most recent call last):\n"
            f'  File "{tmp_path}/venv/pypdf/_reader.py", line 1, in read'
        )

    monkeypatch.setattr(parsers_module, "parse_pdf", boom)
    with pytest.raises(BadRequest) as info:
        svc.upload("gov", "report.pdf", b"%PDF-1.4\n", tenant="city-a")
    msg = str(info.value)
    assert msg.startswith("report.pdf: ") and "RuntimeError" in msg
    assert "nothing was stored" in msg and "Traceback" not in msg
    _clean(tmp_path, msg)
    (world["docs"] / "report.pdf").write_bytes(b"%PDF-1.4\n")
    synced = svc.sync("gov", tenant="city-a").to_dict()
    (err,) = synced["errors"]
    assert err["path"] == "report.pdf" and "RuntimeError" in err["reason"]
    _clean(tmp_path, synced)


def test_routes_show_no_host_path(client: Any, tmp_path: Path, world: dict[str, Path]) -> None:
    (world["docs"] / "junk.pdf").write_bytes(b"%PDF-1.7\n" + b"\x8f" * 300)
    files = {"file": ("通知.md", "# 通知\n\n图书馆恢复开放。".encode(), "text/markdown")}
    responses = [
        client.post("/v1/knowledge/gov/sync", json={}),
        client.get("/v1/knowledge/gov/documents"),
        client.post("/v1/knowledge/gov/documents", files=files),
        client.post("/v1/knowledge/gov/documents", files={"file": ("x.pdf", b"%PDF-1 bad")}),
        client.post("/v1/knowledge/gov/search", json={"query": "图书馆"}),
        client.get("/v1/knowledge/gov"),
        client.delete("/v1/knowledge/gov/documents/通知.md"),
        client.delete("/v1/knowledge/gov/documents/..%2F..%2Fstate.sqlite"),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 200, 200, 200, 404]
    for r in responses:
        _clean(tmp_path, r.text)
    docs = responses[1].json()["data"]
    assert {d["source"] for d in docs} == {"a.md", "mine.md"}


def test_removing_a_kb_removes_its_uploads(
    tmp_path: Path, svc: KnowledgeService, world: dict[str, Path]
) -> None:
    svc.remove("other")
    assert not world["theirs"].parent.exists()
    # The next KB of that name (another tenant's) does not inherit the old uploads.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "c.md").write_text("# 丙\n\n丙市的文件。", encoding="utf-8")
    svc.register(_manifest("other", fresh, tenant="city-c"), base=fresh)
    svc.sync("other")
    assert [d["source"] for d in svc.documents("other", tenant="city-c")] == ["c.md"]
    assert not [
        h for h in svc.search("other", SECRET, limit=20)["citations"] if SECRET in h["text"]
    ]


def test_paths_docstring_examples_run() -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module("qingliang.knowledge._paths"))
    assert result.failed == 0 and result.attempted > 0
