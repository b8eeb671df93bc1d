"""The agent tools on real components: SQLite files, the knowledge service over embedded
Qdrant (a bag-of-bigrams embedder at the embedding boundary), RapidOCR on rendered text.

No Ray, no network, no model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sqlite3
import struct
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from qingliang.agents.manifest import AgentGraph
from qingliang.agents.toolbox import build_tools, check_tools
from qingliang.agents.tools import forms, ocr
from qingliang.agents.tools.base import ToolContext, ToolError, openai_spec
from qingliang.agents.tools.knowledge import KnowledgeSearchTool
from qingliang.agents.tools.specs import FormTool, KnowledgeTool, OcrTool, SqlTool
from qingliang.agents.tools.specs import SubmitTool as SubmitConfig
from qingliang.agents.tools.sql import SqlTool as SqlRunner
from qingliang.knowledge.manifest import KnowledgeBase
from qingliang.knowledge.service import KnowledgeService


def ctx(**kw: Any) -> ToolContext:
    return ToolContext(run_id=kw.pop("run_id", "run-1"), tenant=kw.pop("tenant", None), **kw)


# ----------------------------------------------------------------------------- knowledge


class BigramEmbedder:
    """Character bigrams hashed into 256 buckets: texts sharing words land close."""

    dimensions = 256
    model_id = "bigram-test"

    def embed(self, texts: list[str], *, input_type: str = "passage") -> list[list[float]]:
        out = []
        for text in texts:
            v = [0.0] * self.dimensions
            for i in range(max(1, len(text) - 1)):
                h = hashlib.blake2b(text.lower()[i : i + 2].encode(), digest_size=2).digest()
                v[int.from_bytes(h, "big") % self.dimensions] += 1.0
            n = math.sqrt(sum(x * x for x in v)) or 1.0
            out.append([x / n for x in v])
        return out


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("kb")
    docs = root / "docs"
    docs.mkdir()
    (docs / "quarantine.md").write_text(
        "# 隔离规定\n\n## 返岗人员\n\n返岗人员应居家隔离十四天，每日报告体温。\n\n"
        "## 外地来京\n\n外地来京人员须持核酸检测阴性证明。\n",
        encoding="utf-8",
    )
    svc = KnowledgeService(root / "home", embedder_factory=lambda _m: BigramEmbedder())
    kb = KnowledgeBase.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "KnowledgeBase",
            "metadata": {"name": "gov"},
            "spec": {
                "sources": [{"folder": str(docs)}],
                "chunking": {"max_chars": 120, "overlap_chars": 0},
                "labels": {"tenant": "city-a", "domain": "gov"},
            },
        }
    )
    svc.register(kb, base=docs)
    svc.sync("gov")
    yield svc
    svc.close()


def top_source(out: Any) -> str:
    return out.citations[0]["source"]


def kb_tool(**kw: Any) -> KnowledgeSearchTool:
    return KnowledgeSearchTool(KnowledgeTool(kind="knowledge_search", name="policy", **kw))


def search_with(tool: KnowledgeSearchTool, args: dict, context: ToolContext) -> Any:
    """The tool's answer: its ``run`` is a coroutine (the runtime awaits it)."""
    return asyncio.run(tool.run(args, context))


def test_knowledge_search_cites_the_real_service(service: Any) -> None:
    tool = kb_tool(knowledge="gov", limit=2)
    out = search_with(
        tool, {"query": "返岗人员居家隔离"}, ctx(tenant="city-a", knowledge=service.search)
    )
    first = out.content.splitlines()[0]
    assert first.startswith("[1] ") and "返岗人员应居家隔离十四天" in first
    assert first.endswith(f"(source: {top_source(out)}, chars 8-37)")
    assert len(out.citations) == 2 and all(c["kb"] == "gov" for c in out.citations)
    top = out.citations[0]
    assert top["source"].endswith("quarantine.md") and top["heading_path"] == [
        "隔离规定",
        "返岗人员",
    ]
    assert top["score"] >= out.citations[1]["score"] and top["version"] == 1
    one = search_with(
        tool, {"query": "核酸检测", "limit": 1}, ctx(tenant="city-a", knowledge=service.search)
    )
    assert len(one.citations) == 1 and "核酸检测" in one.citations[0]["text"]


def test_knowledge_search_refuses_unknown_kb_and_other_tenants(service: Any) -> None:
    with pytest.raises(ToolError, match=r"knowledge base 'gvo' is not available: .*known: gov"):
        search_with(kb_tool(knowledge="gvo"), {"query": "隔离"}, ctx(knowledge=service.search))
    # another tenant's KB reads as unknown: the tenant of the run applies
    with pytest.raises(ToolError, match="knowledge base 'gov' is not available"):
        search_with(
            kb_tool(knowledge="gov"),
            {"query": "隔离"},
            ctx(tenant="city-b", knowledge=service.search),
        )


def test_knowledge_search_bad_input() -> None:
    calls: list[tuple] = []

    def search(kb: str, query: str, **kw: Any) -> list[dict]:
        calls.append((kb, query, kw))
        return [{"text": "x " * 1000, "score": 0.5, "source": "a.pdf", "page": 3}]

    tool = kb_tool(knowledge="gov", limit=3)
    with pytest.raises(ToolError, match="not available in this run"):
        search_with(tool, {"query": "hours"}, ctx())
    for bad in ({"query": "   "}, {}, {"query": 7}):
        with pytest.raises(ToolError, match="`query` must be a non-empty string"):
            search_with(tool, bad, ctx(knowledge=search))
    for limit in (0, 4, "2", True):
        with pytest.raises(ToolError, match=r"`limit` must be an integer in 1\.\.3"):
            search_with(tool, {"query": "hours", "limit": limit}, ctx(knowledge=search))
    assert not calls
    out = search_with(tool, {"query": " hours "}, ctx(tenant="t1", knowledge=search))
    assert calls == [("gov", "hours", {"tenant": "t1", "limit": 3, "mode": "hybrid"})]
    assert out.content.endswith("… (source: a.pdf, p. 3)") and len(out.content) < 800
    assert out.citations[0]["text"] == "x " * 1000  # the citation keeps the whole text
    empty = search_with(tool, {"query": "q"}, ctx(knowledge=lambda *a, **k: {"citations": []}))
    assert empty.content == "No passages in knowledge base 'gov' match the query."


def test_knowledge_search_awaits_an_async_search_on_the_loop() -> None:
    """The knowledge server's handle is async: awaited on the run's loop, no thread hop."""
    seen: list[tuple] = []

    async def search(kb: str, query: str, **kw: Any) -> list[dict]:
        seen.append((kb, query, kw, threading.current_thread() is threading.main_thread()))
        return [{"text": "Open at 8.", "score": 0.9, "source": "hours.md", "locator": "#0"}]

    out = search_with(kb_tool(knowledge="gov"), {"query": "hours"}, ctx(knowledge=search))
    assert seen == [("gov", "hours", {"tenant": None, "limit": 4, "mode": "hybrid"}, True)]
    assert out.content == "[1] Open at 8. (source: hours.md, #0)"


# ----------------------------------------------------------------------------------- OCR


def draw(path: Path, lines: dict[str, tuple[int, int]], size: tuple[int, int] = (900, 300)) -> Path:
    image = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    for text, xy in lines.items():
        pen.text(xy, text, fill="black", font=font)
    image.save(path)
    return path


def bomb_png(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A 1-bit greyscale PNG of ``width``×``height`` zeros: tiny on disk, huge decoded.
    ``rows`` writes only that many rows of pixel data (the header still says ``height``)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    data = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def squash(text: str) -> str:
    return "".join(text.split()).lower()


def test_ocr_reads_rendered_text_in_reading_order(tmp_path: Path) -> None:
    image = draw(
        tmp_path / "form.png",
        {"Name Li Wei": (30, 40), "Age 42": (560, 44), "Total due 250 EUR": (30, 180)},
    )
    tool = ocr.OcrTool(OcrTool(kind="ocr", name="read_image"))
    out = tool.run({"attachment": "form.png"}, ctx(attachments={"form.png": image}))
    lines = out.data["lines"]
    assert out.data["attachment"] == "form.png"
    assert [squash(ln["text"]) for ln in lines] == ["nameliwei", "age42", "totaldue250eur"]
    assert squash(out.content) == "nameliweiage42totaldue250eur"
    assert all(0 <= ln["box"][0] < ln["box"][2] <= 900 and 0.5 < ln["score"] <= 1 for ln in lines)
    assert lines[1]["box"][0] > 500  # the right-hand column of the first row


def test_ocr_refuses_unknown_names_junk_and_bombs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    good = bomb_png(200, 100)
    (tmp_path / "cut.png").write_bytes(good[: len(good) - 30])  # IDAT cut short
    (tmp_path / "bomb.png").write_bytes(bomb_png(8000, 8000))  # 64 M pixels
    (tmp_path / "huge.png").write_bytes(bomb_png(50_000, 50_000, rows=1))
    files = {p.name: p for p in tmp_path.iterdir()}
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    tool = ocr.OcrTool(OcrTool(kind="ocr", name="read_image"))

    def refuse(name: str) -> str:
        with pytest.raises(ToolError) as info:
            tool.run({"attachment": name}, ctx(attachments=files))
        return str(info.value)

    assert refuse("note.txt") == (
        "unknown attachment 'note.txt' (did you mean 'notes.txt'?); "
        "attached: bomb.png, cut.png, huge.png, notes.txt"
    )
    assert "is not an image this tool can read" in refuse("notes.txt")
    assert refuse("cut.png").startswith("attachment 'cut.png': corrupt image")

    def never_decode(data: bytes) -> list:
        raise AssertionError("a bomb was decoded")

    monkeypatch.setattr(ocr, "load_frames", never_decode)
    assert refuse("bomb.png") == (
        "attachment 'bomb.png' has 64,000,000 pixels, more than this tool reads "
        "(40,000,000, max_pixels); send a smaller image"
    )
    assert "'huge.png' is too large to read" in refuse("huge.png")
    with pytest.raises(ToolError, match="no files were attached"):
        tool.run({"attachment": "a.png"}, ctx())


def test_ocr_without_the_engine_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qingliang.knowledge.ingest.images as image_mod

    image = draw(tmp_path / "a.png", {"Hi": (5, 5)}, (80, 60))
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)
    monkeypatch.setattr(image_mod, "_engine", None)
    tool = ocr.OcrTool(OcrTool(kind="ocr", name="read_image"))
    with pytest.raises(ToolError) as info:
        tool.run({"attachment": "a.png"}, ctx(attachments={"a.png": image}))
    assert "needs the `rapidocr-onnxruntime` package, which is not installed" in str(info.value)
    assert "`make install`" in str(info.value) and "--no-deps" in str(info.value)


# --------------------------------------------------------------------------------- forms

PERMIT = FormTool.model_validate(
    {
        "kind": "form",
        "name": "permit",
        "fields": [
            {"name": "applicant", "description": "Full name"},
            {"name": "id_number", "pattern": r"\d{17}[\dX]"},
            {"name": "district", "enum": ["Dongcheng", "Xicheng"]},
            {"name": "start", "type": "date"},
            {"name": "days", "type": "integer"},
            {"name": "fee", "type": "number", "required": False},
            {"name": "urgent", "type": "boolean", "required": False},
        ],
    }
)
FULL = {
    "applicant": "Li Wei",
    "id_number": "11010119900307001X",
    "district": "Dongcheng",
    "start": "2024-02-29",
    "days": 14,
}


def test_form_schema_is_the_manifest_fields() -> None:
    schema = forms.FormTool(PERMIT).parameters
    props = schema["properties"]
    assert schema["required"] == ["applicant", "id_number", "district", "start", "days"]
    assert schema["additionalProperties"] is False
    assert props["start"] == {
        "type": "string",
        "format": "date",
        "description": "A date as YYYY-MM-DD.",
    }
    assert props["district"]["enum"] == ["Dongcheng", "Xicheng"]
    assert props["id_number"]["pattern"] == r"\d{17}[\dX]"
    assert [props[k]["type"] for k in ("days", "fee", "urgent")] == ["integer", "number", "boolean"]
    assert (
        json.loads(json.dumps(openai_spec(forms.FormTool(PERMIT))))["function"]["name"] == "permit"
    )


def test_form_fills_over_several_calls() -> None:
    tool = forms.FormTool(PERMIT)
    first = tool.run({"applicant": " Li Wei ", "days": 14.0}, ctx())
    assert first.data == {
        "form": "permit",
        "values": {"applicant": "Li Wei", "days": 14},
        "complete": False,
        "missing": ["id_number", "district", "start"],
    }
    assert "Still missing (ask the user): id_number, district, start." in first.content
    rest = {k: v for k, v in FULL.items() if k not in ("applicant", "days")}
    second = tool.run({**rest, "urgent": True}, ctx(forms={"permit": first.data["values"]}))
    assert second.data["complete"] is True and second.data["missing"] == []
    assert second.data["values"] == {**FULL, "urgent": True}
    assert list(second.data["values"]) == [
        "applicant",
        "id_number",
        "district",
        "start",
        "days",
        "urgent",
    ]
    assert second.content.endswith("The form is complete.")


def test_form_reports_every_bad_field_at_once() -> None:
    bad = {
        "applicant": 42,
        "id_number": "1234",
        "district": "Dongchen",
        "start": "2023-02-29",
        "days": "14",
        "fee": math.inf,
        "urgent": "yes",
        "nmae": "Li",
    }
    with pytest.raises(ToolError) as info:
        forms.FormTool(PERMIT).run(bad, ctx())
    assert str(info.value).splitlines() == [
        "form 'permit': 8 problems",
        "- `applicant`: expected a string, got int 42",
        "- `id_number`: '1234' does not match the pattern '\\\\d{17}[\\\\dX]'",
        "- `district`: 'Dongchen' is not one of Dongcheng, Xicheng (did you mean 'Dongcheng'?)",
        "- `start`: '2023-02-29' is not a real date (day is out of range for month)",
        "- `days`: expected an integer, got str '14'",
        "- `fee`: expected a finite number, got inf",
        "- `urgent`: expected true or false, got str 'yes'",
        "- unknown field `nmae`; fields: applicant, id_number, district, start, days, fee, urgent",
    ]


def test_validate_values_for_an_edited_form() -> None:
    values, problems = forms.validate_values(PERMIT, {**FULL, "start": "29.02.2024", "days": True})
    assert problems == [
        "`start`: expected a date as YYYY-MM-DD, got '29.02.2024'",
        "`days`: expected an integer, got bool True",
    ]
    assert "start" not in values and values["applicant"] == "Li Wei"
    assert forms.validate_values(PERMIT, FULL) == (FULL, [])
    assert forms.validate_values(PERMIT, {"applicnt": "x"})[1] == [
        "unknown field `applicnt` (did you mean `applicant`?); fields: applicant, id_number, "
        "district, start, days, fee, urgent"
    ]


# -------------------------------------------------------------------------------- submit


def submit_tool(db: Path, **kw: Any) -> forms.SubmitTool:
    config = SubmitConfig(kind="submit", name="file_permit", form="permit", database=str(db), **kw)
    return forms.SubmitTool(config, db, form=PERMIT)


def rows(db: Path, table: str = "submissions") -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            f"SELECT id, idempotency_key, run_id, form, values_json FROM {table}"
        ).fetchall()


def test_submit_writes_one_row_per_key_across_crashes(tmp_path: Path) -> None:
    db = tmp_path / "permits.sqlite"
    call = ctx(idempotency_key="run-1/file/0", forms={"permit": FULL})
    first = submit_tool(db).run({}, call)
    assert first.data == {"submission_id": 1, "table": "submissions", "values": FULL}
    assert first.content == "Submitted form 'permit': submission 1 (table submissions)."
    # the process died after the commit, before the run journaled the result: on resume a
    # fresh tool object runs again under the same key and gets the same submission back
    again = submit_tool(db).run({}, call)
    assert again.data == first.data
    assert rows(db) == [(1, "run-1/file/0", "run-1", "permit", json.dumps(FULL, sort_keys=True))]
    # an edited form under the same key changes nothing: the first submission stands
    edited = submit_tool(db).run(
        {}, ctx(idempotency_key="run-1/file/0", forms={"permit": {**FULL, "days": 7}})
    )
    assert edited.data["values"]["days"] == 14 and len(rows(db)) == 1
    # so does a form that no longer validates: the key was used, the submission stands
    broken = ctx(idempotency_key="run-1/file/0", forms={"permit": {"applicant": "Li"}})
    assert submit_tool(db).run({}, broken).data == first.data
    with pytest.raises(ToolError, match="incomplete"):
        submit_tool(db).run(
            {}, ctx(idempotency_key="run-1/file/1", forms={"permit": {"applicant": "Li"}})
        )
    other = submit_tool(db).run(
        {}, ctx(run_id="run-2", idempotency_key="run-2/file/0", forms={"permit": FULL})
    )
    assert other.data["submission_id"] == 2 and len(rows(db)) == 2


def test_submit_is_exactly_once_under_concurrent_calls(tmp_path: Path) -> None:
    db = tmp_path / "permits.sqlite"
    ids: list[int] = []
    call = ctx(idempotency_key="k", forms={"permit": FULL})

    def go() -> None:
        ids.append(submit_tool(db, table="permits").run({}, call).data["submission_id"])

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and set(ids) == {1} and len(rows(db, "permits")) == 1


def test_submit_refuses_without_a_key_or_a_complete_form(tmp_path: Path) -> None:
    db = tmp_path / "permits.sqlite"
    tool = submit_tool(db)
    assert tool.side_effect is True and tool.parameters["properties"] == {}
    cases = [
        (ctx(idempotency_key=" ", forms={"permit": FULL}), "needs an idempotency key"),
        (ctx(idempotency_key="k"), "the form 'permit' has not been filled in this run"),
        (
            ctx(idempotency_key="k", forms={"permit": {"applicant": "Li"}}),
            "the form 'permit' is incomplete: missing id_number, district, start, days",
        ),
        (
            ctx(idempotency_key="k", forms={"permit": {**FULL, "days": "x"}}),
            "the form 'permit' is invalid: `days`: expected an integer",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ToolError, match=message):
            tool.run({}, call)
    with pytest.raises(ToolError, match="takes no arguments"):
        tool.run({"values": FULL}, ctx(idempotency_key="k", forms={"permit": FULL}))
    assert not db.exists()
    with pytest.raises(ToolError, match="cannot open the database|failed"):
        submit_tool(tmp_path / "gone" / "x.sqlite").run(
            {}, ctx(idempotency_key="k", forms={"permit": FULL})
        )
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE submissions (id INTEGER PRIMARY KEY, idempotency_key TEXT)")
    with pytest.raises(ToolError, match="needs a UNIQUE idempotency_key column"):
        tool.run({}, ctx(idempotency_key="k", forms={"permit": FULL}))


# ----------------------------------------------------------------------------------- SQL


@pytest.fixture
def clinics(tmp_path: Path) -> Path:
    db = tmp_path / "clinics.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE clinic (id INTEGER PRIMARY KEY, district TEXT, name TEXT, beds INT)"
        )
        conn.execute("CREATE TABLE note (body TEXT, scan BLOB)")
        conn.executemany(
            "INSERT INTO clinic (district, name, beds) VALUES (?, ?, ?)",
            [
                ("Dongcheng", "Peking Union", 120),
                ("Xicheng", "People's", 80),
                ("Chaoyang", "Chaoyang", 95),
            ],
        )
        conn.execute("INSERT INTO note VALUES (?, ?)", ("a|b\n" + "x" * 500, b"\0" * 10))
    conn.close()
    return db


def sql_tool(db: Path, **kw: Any) -> SqlRunner:
    return SqlRunner(SqlTool(kind="sql", name="clinics", database=str(db), **kw), db)


def test_sql_answers_a_select_as_a_table(clinics: Path) -> None:
    tool = sql_tool(clinics)
    out = tool.run(
        {"query": "SELECT district, beds FROM clinic WHERE beds > 90 ORDER BY beds DESC"}, ctx()
    )
    assert out.content == (
        "| district | beds |\n| --- | --- |\n| Dongcheng | 120 |\n| Chaoyang | 95 |\n(2 rows)"
    )
    assert out.data == {
        "columns": ["district", "beds"],
        "rows": [["Dongcheng", 120], ["Chaoyang", 95]],
        "truncated": False,
    }
    cte = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) "
        "SELECT sum(i) FROM n; -- done"
    )
    assert tool.run({"query": cte}, ctx()).data["rows"] == [[15]]
    note = tool.run({"query": "SELECT body, scan FROM note"}, ctx())
    body, scan = note.data["rows"][0]
    assert scan == "<blob: 10 bytes>" and len(body) == 200 and body.endswith("…")
    assert "a\\|b" in note.content


def test_sql_limits_rows_and_describes_its_tables(clinics: Path) -> None:
    tool = sql_tool(clinics, max_rows=2)
    out = tool.run({"query": "SELECT name FROM clinic ORDER BY id"}, ctx())
    assert out.data["truncated"] is True and len(out.data["rows"]) == 2
    assert out.content.endswith("(first 2 rows; there are more: narrow the query or aggregate)")
    assert tool.description.endswith(
        "Tables: clinic(id INTEGER, district TEXT, name TEXT, beds INT); "
        "note(body TEXT, scan BLOB)."
    )
    assert sql_tool(clinics, description="Clinic beds.").description == "Clinic beds."


WRITES = [
    "DELETE FROM clinic",
    "UPDATE clinic SET beds = 0",
    "INSERT INTO clinic (name) VALUES ('x')",
    "REPLACE INTO clinic (id, name) VALUES (1, 'x')",
    "DROP TABLE clinic",
    "CREATE TABLE x (a)",
    "CREATE TEMP TABLE x (a)",
    "ALTER TABLE clinic ADD COLUMN y",
    "ATTACH DATABASE 'other.sqlite' AS other",
    "PRAGMA user_version = 7",
    "PRAGMA journal_mode = WAL",
    "VACUUM INTO 'copy.sqlite'",
    "BEGIN IMMEDIATE",
    "SELECT 1; DROP TABLE clinic",
    "SELECT * FROM clinic;\nDELETE FROM clinic; --",
    "/* hi */ DELETE FROM clinic",
    "WITH x AS (SELECT 1) DELETE FROM clinic",
    "WITH x AS (SELECT 1) INSERT INTO clinic (name) SELECT 'y' FROM x",
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT * FROM pragma_table_info('clinic')",
]


def test_sql_refuses_every_write_and_leaves_the_file_byte_identical(clinics: Path) -> None:
    before = clinics.read_bytes()
    listing = sorted(p.name for p in clinics.parent.iterdir())
    tool = sql_tool(clinics)
    messages = {}
    for query in WRITES:
        with pytest.raises(ToolError) as info:
            tool.run({"query": query}, ctx())
        messages[query] = str(info.value)
    assert clinics.read_bytes() == before
    assert sorted(p.name for p in clinics.parent.iterdir()) == listing
    assert all(m.startswith(("read-only", "only one statement")) for m in messages.values()), (
        messages
    )
    assert (
        messages["DELETE FROM clinic"] == "read-only: only SELECT queries are allowed, not DELETE"
    )
    assert messages["SELECT 1; DROP TABLE clinic"] == (
        "only one statement per call: remove everything after the first `;`"
    )
    assert messages["WITH x AS (SELECT 1) DELETE FROM clinic"].startswith(
        "read-only: DELETE (clinic) is not allowed"
    )
    assert "load_extension()" in messages["SELECT load_extension('/tmp/evil.so')"]
    assert messages["SELECT * FROM pragma_table_info('clinic')"].startswith(
        "read-only: a table-valued function (json_each, pragma_table_info, ...) is not allowed"
    )
    assert tool.run({"query": "SELECT count(*) FROM clinic"}, ctx()).data["rows"] == [[3]]


def test_sql_explains_errors_and_stops_slow_queries(clinics: Path, tmp_path: Path) -> None:
    tool = sql_tool(clinics, timeout_s=0.2)

    def error(query: str) -> str:
        with pytest.raises(ToolError) as info:
            tool.run({"query": query}, ctx())
        return str(info.value)

    assert error("SELECT * FROM clinics") == "no such table: clinics; tables: clinic, note"
    assert error("SELECT * FROM WHERE").startswith('SQL syntax error: near "WHERE"')
    assert error("SELECT nme FROM clinic") == "query failed: no such column: nme"
    assert error("SELEC name FROM clinic") == (
        "SQL syntax error: a query starts with SELECT or WITH, not 'SELEC'"
    )
    assert error("   ") == "`query` must be a non-empty SQL string"
    started = time.monotonic()
    forever = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    )
    assert error(forever).startswith("the query was stopped after 0.2 s (timeout_s)")
    assert time.monotonic() - started < 2
    missing = sql_tool(tmp_path / "nope.sqlite")
    with pytest.raises(ToolError, match="cannot open the database nope.sqlite"):
        missing.run({"query": "SELECT 1"}, ctx())
    assert not (tmp_path / "nope.sqlite").exists()


# ------------------------------------------------------------------------------ registry


def graph(tmp_path: Path, sql_db: str, submit_db: str) -> AgentGraph:
    return AgentGraph.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "AgentGraph",
            "metadata": {"name": "desk"},
            "spec": {
                "agents": [
                    {
                        "name": "clerk",
                        "model": "qwen",
                        "tools": ["policy", "read", "permit", "stats", "ask"],
                    }
                ],
                "tools": [
                    {"kind": "knowledge_search", "name": "policy", "knowledge": "gov"},
                    {"kind": "ocr", "name": "read", "description": "Read a scan."},
                    PERMIT.model_dump(),
                    {"kind": "submit", "name": "file", "form": "permit", "database": submit_db},
                    {"kind": "sql", "name": "stats", "database": sql_db},
                    {"kind": "call_agent", "name": "ask", "graph": "legal"},
                ],
                "nodes": [
                    {"name": "answer", "type": "agent", "agent": "clerk", "next": "submit"},
                    {"name": "submit", "type": "tool", "tool": "file"},
                ],
            },
        }
    )


def test_registry_builds_every_kind_but_call_agent(tmp_path: Path, clinics: Path) -> None:
    spec = graph(tmp_path, "clinics.sqlite", "out/permits.sqlite").spec
    tools = build_tools(spec, clinics.parent)
    assert sorted(tools) == ["file", "permit", "policy", "read", "stats"]
    assert (
        tools["stats"].database == clinics
        and tools["file"].database == clinics.parent / "out/permits.sqlite"
    )
    assert tools["file"].form == PERMIT and tools["file"].side_effect is True
    assert not any(t.side_effect for n, t in tools.items() if n != "file")
    assert tools["read"].description == "Read a scan."
    assert tools["policy"].description.startswith("Search the knowledge base 'gov'")
    assert "clinic(id INTEGER" in tools["stats"].description
    for tool in tools.values():
        json.dumps(openai_spec(tool))
    assert not (clinics.parent / "out").exists()


def test_check_tools_names_missing_files_and_touches_nothing(tmp_path: Path) -> None:
    spec = graph(tmp_path, "data/clinics.sqlite", "out/permits.sqlite").spec
    before = sorted(tmp_path.rglob("*"))
    assert check_tools(spec, tmp_path) == [
        f"tools[3].database: folder {tmp_path / 'out'} does not exist",
        f"tools[4].database: {tmp_path / 'data/clinics.sqlite'} does not exist",
    ]
    assert sorted(tmp_path.rglob("*")) == before
    (tmp_path / "out").mkdir()
    (tmp_path / "data").mkdir()
    sqlite3.connect(tmp_path / "data/clinics.sqlite").close()
    assert check_tools(spec, tmp_path) == []
    absolute = graph(tmp_path, str(tmp_path / "data"), str(tmp_path / "out/p.sqlite")).spec
    assert check_tools(absolute, Path("/elsewhere")) == [
        f"tools[4].database: {tmp_path / 'data'} is not a file"
    ]
