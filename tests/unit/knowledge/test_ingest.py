"""Ingestion on small files written here, plus one read of the real domain data."""

from __future__ import annotations

import doctest
import importlib
import json
import os
import random
from pathlib import Path

import pytest

from qingliang.knowledge.ingest import (
    Chunk,
    IngestOptions,
    content_hash,
    default_registry,
    find_sources,
    ingest_paths,
    resolve_sources,
    split_text,
)
from qingliang.knowledge.ingest.errors import describe
from qingliang.knowledge.ingest.options import (
    Chunking,
    CsvOptions,
    HtmlOptions,
    JsonOptions,
    Parsers,
    Source,
    TextOptions,
)

DOMAINS = Path("/work/shared/domains")
DEFAULT = IngestOptions()


def small(max_chars: int = 120, overlap: int = 20, **kw: object) -> IngestOptions:
    return IngestOptions(
        chunking=Chunking(max_chars=max_chars, overlap_chars=overlap, **kw),  # type: ignore[arg-type]
    )


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def only(report_chunks: list[Chunk], kind: str) -> list[Chunk]:
    return [c for c in report_chunks if c.kind == kind]


# ------------------------------------------------------------------------- splitting


def test_split_text_overlaps_and_prefers_sentence_ends() -> None:
    text = "。".join(f"第{i}条规定内容较长需要切分" for i in range(30)) + "。"
    spans = split_text(text, max_chars=100, overlap_chars=20)
    assert len(spans) > 3
    for (s1, e1), (s2, _) in zip(spans, spans[1:], strict=False):
        assert e1 - s1 <= 100
        assert text[e1 - 1] == "。"  # cut after a full stop, not mid-sentence
        assert s2 == e1 - 20  # the next chunk repeats the last 20 characters
    assert spans[0][0] == 0 and spans[-1][1] == len(text)


def test_split_text_without_any_break_still_progresses() -> None:
    spans = split_text("x" * 1000, max_chars=100, overlap_chars=50)
    assert spans[0] == (0, 100) and spans[1] == (50, 150) and spans[-1][1] == 1000


def test_short_text_is_one_span() -> None:
    assert split_text("  hello  ", 100, 10) == [(2, 7)]


# -------------------------------------------------------------------------- markdown

MARKDOWN = """# 总则

第一条 为了规范管理，制定本办法。

## 适用范围

第二条 本办法适用于全市各级机关。

```python
# not a heading inside a fence
x = 1
```

## 附则

第三条 本办法自发布之日起施行。
"""


def test_markdown_chunks_follow_headings(tmp_path: Path) -> None:
    report = ingest_paths([write(tmp_path / "rules.md", MARKDOWN)], DEFAULT)
    assert report.errors == []
    paths = [c.location.heading_path for c in report.chunks]
    assert paths == [("总则",), ("总则", "适用范围"), ("总则", "附则")]
    assert "not a heading inside a fence" in report.chunks[1].text
    assert report.chunks[2].text.startswith("## 附则")
    # offsets point into the file's text
    for c in report.chunks:
        assert MARKDOWN[c.location.char_start : c.location.char_end] == c.text
    assert report.chunks[1].embed_text.startswith("总则 > 适用范围\n")
    (doc,) = report.documents
    assert (doc.type, doc.title, doc.n_chunks) == ("markdown", "总则", 3)


def test_a_long_section_is_split_with_overlap_inside_its_heading(tmp_path: Path) -> None:
    body = " ".join(f"Sentence number {i} says something." for i in range(40))
    text = f"# A\n\n{body}\n\n# B\n\nshort\n"
    report = ingest_paths([write(tmp_path / "a.md", text)], small(200, 40))
    a = [c for c in report.chunks if c.location.heading_path == ("A",)]
    b = [c for c in report.chunks if c.location.heading_path == ("B",)]
    assert len(a) > 3 and len(b) == 1
    assert all(len(c.text) <= 200 for c in report.chunks)
    assert "short" not in "".join(c.text for c in a)  # no chunk crosses the heading
    for first, second in zip(a, a[1:], strict=False):
        assert first.location.char_end is not None and second.location.char_start is not None
        assert second.location.char_start < first.location.char_end  # overlap present
        shared = text[second.location.char_start : first.location.char_end]
        assert shared and shared in first.text and second.text.startswith(shared.strip())
    assert [c.index for c in report.chunks] == list(range(len(report.chunks)))


def test_fixed_strategy_crosses_headings(tmp_path: Path) -> None:
    text = "# A\n\n" + "alpha " * 30 + "\n\n# B\n\n" + "beta " * 30
    opts = small(150, 30, strategy="fixed")
    report = ingest_paths([write(tmp_path / "a.md", text)], opts)
    assert any("alpha" in c.text and "beta" in c.text for c in report.chunks)
    for c in report.chunks:
        assert text[c.location.char_start : c.location.char_end] == c.text


def test_max_heading_level(tmp_path: Path) -> None:
    text = "# A\n\nx\n\n### deep\n\ny\n"
    opts = IngestOptions(parsers=Parsers(markdown={"max_heading_level": 2}))  # type: ignore[arg-type]
    report = ingest_paths([write(tmp_path / "a.md", text)], opts)
    assert [c.location.heading_path for c in report.chunks] == [("A",)]


# -------------------------------------------------------------------------------- html

HTML = """<html><head><title>办事指南</title><style>.x{color:red}</style>
<script>var secret = "do not index";</script></head>
<body><nav>首页 | 关于</nav>
<h1>社保办理</h1><p>携带身份证到窗口办理。</p>
<div class="ad">广告内容</div>
<h2>所需材料</h2><ul><li>身份证</li><li>户口本</li></ul>
<table><tr><th>项目</th><th>费用</th></tr><tr><td>补卡</td><td>20元</td></tr></table>
<footer>版权所有</footer></body></html>"""


def test_html_strips_scripts_styles_and_selectors_and_keeps_headings(tmp_path: Path) -> None:
    opts = IngestOptions(
        parsers=Parsers(html=HtmlOptions(strip_selectors=["nav", "footer", ".ad"]))
    )
    report = ingest_paths([write(tmp_path / "guide.html", HTML)], opts)
    assert report.errors == []
    text = "\n".join(c.text for c in report.chunks)
    for gone in ("secret", "color:red", "首页", "广告", "版权"):
        assert gone not in text
    assert [c.location.heading_path for c in report.chunks] == [
        ("社保办理",),
        ("社保办理", "所需材料"),
    ]
    assert "身份证" in report.chunks[1].text and "补卡 | 20元" in report.chunks[1].text
    assert report.documents[0].title == "办事指南"


def test_html_in_gbk_with_meta_charset(tmp_path: Path) -> None:
    page = (
        '<html><head><meta charset="gbk"></head><body><h1>通知</h1><p>内容正文。</p></body></html>'
    )
    report = ingest_paths([write(tmp_path / "p.htm", page, "gbk")], DEFAULT)
    assert report.errors == [] and "内容正文" in report.chunks[0].text


# --------------------------------------------------------------------------------- csv


def test_csv_row_chunks_repeat_the_header_and_a_summary_is_added(tmp_path: Path) -> None:
    rows = [f"P{i},部件{i},{i % 5}" for i in range(1, 41)]
    path = write(tmp_path / "parts.csv", "id,name,severity\n" + "\n".join(rows) + "\n")
    report = ingest_paths([path], small(200, 20))
    assert report.errors == []
    row_chunks = only(report.chunks, "table-row")
    assert len(row_chunks) > 3
    for c in row_chunks:
        lines = c.text.splitlines()
        assert lines[0] == "| id | name | severity |"
        assert len(c.text) <= 200
        assert len(lines) - 1 == c.location.row_end - c.location.row_start + 1
    # rows are never split or repeated: together they are the table, in order
    body = [ln for c in row_chunks for ln in c.text.splitlines()[1:]]
    assert body == [f"| {r.replace(',', ' | ')} |" for r in rows]
    assert row_chunks[0].location.row_start == 2  # row 1 is the header
    assert row_chunks[-1].location.row_end == 41
    (summary,) = only(report.chunks, "table-summary")
    assert "40 rows, 3 columns: id, name, severity" in summary.text
    assert "| P1 | 部件1 | 1 |" in summary.text and "| P4 |" not in summary.text


def test_csv_header_only_on_the_first_chunk_when_asked(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "a,b\n" + "\n".join(f"{i},{i}" for i in range(50)))
    report = ingest_paths([path], small(100, 10, keep_table_headers=False))
    rows = only(report.chunks, "table-row")
    assert rows[0].text.startswith("| a | b |")
    assert not any(c.text.startswith("| a | b |") for c in rows[1:])


def test_csv_options_delimiter_header_row_and_tsv(tmp_path: Path) -> None:
    semi = write(tmp_path / "s.csv", "report v2\n名称;数量\n苹果;3\n梨;5\n")
    tsv = write(tmp_path / "t.tsv", "k\tv\nx\t1\n")
    opts = IngestOptions(parsers=Parsers(csv=CsvOptions(delimiter=";", header_row=1)))
    report = ingest_paths([semi], opts)
    assert report.errors == []
    (s_rows,) = only(report.chunks, "table-row")
    assert s_rows.text == "| 名称 | 数量 |\n| 苹果 | 3 |\n| 梨 | 5 |"
    assert (s_rows.location.row_start, s_rows.location.row_end) == (3, 4)
    report = ingest_paths([tsv], DEFAULT)  # .tsv always splits on tabs
    assert only(report.chunks, "table-row")[0].text == "| k | v |\n| x | 1 |"


def test_csv_with_only_a_header_is_an_error(tmp_path: Path) -> None:
    report = ingest_paths([write(tmp_path / "h.csv", "a,b\n")], DEFAULT)
    assert report.errors == [(str(tmp_path / "h.csv"), "empty table: a header but no rows")]


# -------------------------------------------------------------------------------- json


def test_jsonl_one_document_per_record_and_bad_lines_reported_alone(tmp_path: Path) -> None:
    lines = [
        json.dumps({"docid": "d1", "text": "第一份通知。", "n": 1}, ensure_ascii=False),
        "{not json",
        "",
        json.dumps({"docid": "d2", "text": "第二份通知。"}, ensure_ascii=False),
        json.dumps({"docid": "d3"}),
    ]
    path = write(tmp_path / "docs.jsonl", "\n".join(lines))
    opts = IngestOptions(parsers=Parsers(json=JsonOptions(text_fields=["text"], id_field="docid")))
    report = ingest_paths([path], opts)
    assert [c.text for c in report.chunks] == ["第一份通知。", "第二份通知。"]
    assert [d.record for d in report.documents] == ["d1", "d2"]
    assert len({d.doc_id for d in report.documents}) == 2
    assert report.errors == [
        (f"{path}#line 2", "invalid JSON: Expecting property name enclosed in double quotes"),
        (f"{path}#d3", "none of text_fields (text) is present"),
    ]


def test_json_array_flattened_per_record(tmp_path: Path) -> None:
    data = [{"q": "如何办理", "a": {"steps": ["预约", "到场"]}}, {"q": "费用", "a": None}]
    path = write(tmp_path / "faq.json", json.dumps(data, ensure_ascii=False))
    report = ingest_paths([path], DEFAULT)
    assert [c.text for c in report.chunks] == [
        "q: 如何办理\na.steps[0]: 预约\na.steps[1]: 到场",
        "q: 费用\na: null",
    ]
    assert [c.location.record for c in report.chunks] == ["[0]", "[1]"]


def test_json_flatten_mode_is_one_document(tmp_path: Path) -> None:
    path = write(tmp_path / "cfg.json", json.dumps({"a": 1, "b": [True, "x"]}))
    opts = IngestOptions(parsers=Parsers(json=JsonOptions(mode="flatten")))
    report = ingest_paths([path], opts)
    assert [c.text for c in report.chunks] == ["[0].a: 1\n[0].b[0]: true\n[0].b[1]: x"]
    assert len(report.documents) == 1 and report.documents[0].record is None


def test_corrupt_json_is_a_document_error(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", '{"a": [1, 2')
    report = ingest_paths([path], DEFAULT)
    assert report.errors == [
        (str(path), "corrupt JSON: Expecting ',' delimiter at line 1, column 12")
    ]


# ------------------------------------------------------------------ encodings and text


def test_chinese_text_in_gb18030_is_detected(tmp_path: Path) -> None:
    text = (
        "关于进一步做好新型冠状病毒感染的肺炎疫情防控工作的通知。各区人民政府，市政府各委、办、局。"
        * 3
    )
    report = ingest_paths([write(tmp_path / "gbk.txt", text, "gb18030")], DEFAULT)
    assert report.errors == []
    assert report.chunks[0].text == text.strip()


@pytest.mark.parametrize(
    ("data", "name", "reason"),
    [
        (b"", "empty.txt", "empty file (0 bytes)"),
        (b"  \n\t\n", "blank.md", "empty: no text in the file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "junk.txt", "binary content: NUL bytes"),
        (bytes(range(1, 32)) * 40, "ctrl.txt", "binary content: "),
        (random.Random(1).randbytes(3000).replace(b"\x00", b"\x01"), "r.md", "binary content"),
        (bytes(range(0x80, 0x100)) * 10, "high.txt", "wrong encoding: not UTF-8, and no other"),
        (b"\xff\xfe" + "正常".encode("utf-16-le"), "bom16.txt", None),
    ],
)
def test_bad_bytes_are_named(tmp_path: Path, data: bytes, name: str, reason: str | None) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    report = ingest_paths([path], DEFAULT)
    if reason is None:
        assert report.errors == [] and report.chunks[0].text == "正常"
    else:
        (err,) = report.errors
        assert err.path == str(path) and err.reason.startswith(reason), err


def test_wrong_fixed_encoding_names_the_byte(tmp_path: Path) -> None:
    path = write(tmp_path / "g.txt", "中文内容", "gbk")
    opts = IngestOptions(parsers=Parsers(text=TextOptions(encoding="utf-8")))
    (err,) = ingest_paths([path], opts).errors
    assert err.reason.startswith("wrong encoding: not valid utf-8 (byte 0xd6 at offset 0)")
    assert "`encoding`" in err.reason


# --------------------------------------------------------------- per-document failures


def test_every_failure_is_per_document_and_the_rest_still_ingest(tmp_path: Path) -> None:
    good_md = write(tmp_path / "good.md", MARKDOWN)
    good_csv = write(tmp_path / "t.csv", "a,b\n1,2\n")
    big = write(tmp_path / "big.txt", "x" * 2_000_000)
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(b"%PDF-1.4 broken")
    unknown = write(tmp_path / "data.bin", "x")
    missing = tmp_path / "gone.md"
    paths = [good_md, big, pdf, unknown, missing, tmp_path, good_csv]
    opts = IngestOptions(parsers=Parsers(max_file_mb=1))
    report = ingest_paths(paths, opts)
    reasons = dict(report.errors)
    assert reasons[str(big)] == "over the size limit: 1.9 MiB > 1 MiB (parsers.max_file_mb)"
    assert reasons[str(pdf)].startswith("corrupt PDF: ")
    assert reasons[str(unknown)].startswith("unsupported file type .bin; supported: .bmp, .csv, ")
    assert reasons[str(missing)] == "no such file"
    assert reasons[str(tmp_path)].startswith("unsupported file type (no suffix)")
    assert {d.source for d in report.documents} == {str(good_md), str(good_csv)}


def test_a_parser_crash_is_reported_not_raised(tmp_path: Path) -> None:
    registry = default_registry()

    def boom(*_: object) -> list:
        raise RuntimeError("parser bug")

    from qingliang.knowledge.ingest import Parser

    registry.register(Parser("boom", (".boom",), boom))
    path = write(tmp_path / "x.boom", "x")
    ok = write(tmp_path / "ok.txt", "fine")
    report = ingest_paths([path, ok], IngestOptions(registry=registry))
    assert report.errors == [(str(path), "corrupt or unreadable: RuntimeError: parser bug")]
    assert [c.text for c in report.chunks] == ["fine"]


def test_a_parser_crash_reason_shows_no_host_path(tmp_path: Path) -> None:
    registry = default_registry()

    def boom(data: bytes, source: str, *_: object) -> list:
        raise RuntimeError(f'cannot seek in {source}\n  File "/venv/lib/pypdf/_reader.py"')

    from qingliang.knowledge.ingest import Parser

    registry.register(Parser("boom", (".boom",), boom))
    path = write(tmp_path / "x.boom", "x")
    report = ingest_paths([path], IngestOptions(registry=registry))
    assert report.errors == [
        (str(path), "corrupt or unreadable: RuntimeError: cannot seek in <path>")
    ]


def test_registry_has_a_parser_for_every_document_type() -> None:
    # A missing library is reported per file (tests/unit/knowledge/test_ingest_documents.py).
    registry = default_registry()
    names = {s: registry.parser_for(f"a{s}").name for s in (".pdf", ".docx", ".xlsm", ".TIFF")}
    assert names == {".pdf": "pdf", ".docx": "docx", ".xlsm": "xlsx", ".TIFF": "image"}
    assert registry.parser_for("A.MD").name == "markdown"


# -------------------------------------------------------------------------------- hashes


def test_hashes_are_stable_and_change_with_an_edit(tmp_path: Path) -> None:
    path = write(tmp_path / "rules.md", MARKDOWN)
    first = ingest_paths([path], DEFAULT)
    again = ingest_paths([path], DEFAULT)
    assert [c.sha256 for c in first.chunks] == [c.sha256 for c in again.chunks]
    assert first.documents == again.documents
    # whitespace and line ends alone are not a change
    write(path, MARKDOWN.replace("\n", "\r\n").replace("施行。", "施行。   "))
    crlf = ingest_paths([path], DEFAULT)
    assert crlf.documents[0].sha256 == first.documents[0].sha256
    assert [c.sha256 for c in crlf.chunks] == [c.sha256 for c in first.chunks]
    # an edit in one section changes that chunk and the document, not the others
    write(path, MARKDOWN.replace("全市各级机关", "全省各级机关"))
    edited = ingest_paths([path], DEFAULT)
    assert edited.documents[0].doc_id == first.documents[0].doc_id
    assert edited.documents[0].sha256 != first.documents[0].sha256
    changed = [a.sha256 != b.sha256 for a, b in zip(first.chunks, edited.chunks, strict=True)]
    assert changed == [False, True, False]
    assert content_hash("ａ") != content_hash("a")  # NFC keeps full-width forms distinct


# ------------------------------------------------------------------------------ sources


def test_resolve_sources_include_exclude_and_glob(tmp_path: Path) -> None:
    for rel in ["d/a.md", "d/sub/b.md", "d/draft-c.md", "d/x.csv", "g/y.csv", "g/deep/z.csv"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x", encoding="utf-8")
    sources = [
        Source(folder="d", include=["*.md"], exclude=["draft*"]),
        Source(glob="g/**/*.csv"),
        Source(path="d/a.md"),
        Source(path="missing.md"),
    ]
    got = [p.relative_to(tmp_path).as_posix() for p in resolve_sources(sources, tmp_path)]
    assert got == ["d/a.md", "d/sub/b.md", "g/deep/z.csv", "g/y.csv", "missing.md"]


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    """A source folder with a link to a file, a link to a folder (both outside), a link
    inside, a dangling link and a FIFO next to real files; and the outside folder."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for rel in ["a.md", "sub/b.md"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x", encoding="utf-8")
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.md").write_text("secret", encoding="utf-8")
    (outside / "deep" / "more.md").write_text("secret", encoding="utf-8")
    (root / "file-link.md").symlink_to(outside / "secret.md")
    (root / "sub" / "dir-link").symlink_to(outside, target_is_directory=True)
    (root / "inner.md").symlink_to(root / "a.md")
    (root / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    os.mkfifo(root / "pipe.md")
    return root, outside


def test_folder_sources_never_follow_symlinks(tmp_path: Path) -> None:
    root, _ = _tree(tmp_path)
    found = find_sources([Source(folder="root")], tmp_path)
    assert [p.relative_to(root).as_posix() for p in found.files] == ["a.md", "sub/b.md"]
    reasons = {Path(s.path).relative_to(root).as_posix(): s.reason for s in found.skipped}
    assert set(reasons) == {"file-link.md", "sub/dir-link", "inner.md", "dangling.md", "pipe.md"}
    assert reasons["file-link.md"].startswith("symbolic link to outside the source folder")
    assert reasons["sub/dir-link"].startswith("symbolic link to outside the source folder")
    assert reasons["inner.md"].startswith("symbolic link: not followed")
    assert reasons["dangling.md"].startswith("symbolic link to nothing")
    assert reasons["pipe.md"].startswith("not a regular file")
    assert resolve_sources([Source(folder="root")], tmp_path) == found.files
    # include / exclude apply to skipped files too; a linked folder is always reported.
    only = find_sources([Source(folder="root", include=["b.md"], exclude=["pipe*"])], tmp_path)
    assert [Path(s.path).name for s in only.skipped] == ["dir-link"]


def test_glob_sources_never_follow_symlinks_or_leave_the_folder(tmp_path: Path) -> None:
    root, outside = _tree(tmp_path)
    found = find_sources([Source(glob="*/*.md"), Source(glob="*.md")], root)
    assert [p.relative_to(root).as_posix() for p in found.files] == ["a.md", "sub/b.md"]
    assert {Path(s.path).relative_to(root).as_posix() for s in found.skipped} == {
        "file-link.md",
        "inner.md",
        "dangling.md",
        "pipe.md",
    }
    deep = find_sources([Source(glob="sub/*/*.md")], root)
    assert deep.files == [] and [Path(s.path).name for s in deep.skipped] == ["secret.md"]
    up = find_sources([Source(glob="../outside/*.md")], root)
    assert up.files == [] and "outside the source folder" in up.skipped[0].reason
    absolute = find_sources([Source(glob=str(outside / "*.md"))], root)
    assert absolute.files == [] and "relative to the manifest" in absolute.skipped[0].reason


def test_an_explicit_path_source_is_used_as_given(tmp_path: Path) -> None:
    root, _ = _tree(tmp_path)
    found = find_sources([Source(path="file-link.md")], root)
    assert found.files == [root / "file-link.md"] and found.skipped == []


def test_describe_keeps_no_host_path_or_traceback() -> None:
    exc = OSError("cannot open /srv/home/uploads/gov/a.pdf\nTraceback (most recent call last):")
    assert describe(exc) == "OSError: cannot open <path>"
    assert describe(ValueError("x" * 1000)).endswith("…") and len(describe(ValueError())) == 10


def test_options_from_a_manifest_spec() -> None:
    from qingliang.knowledge.manifest import KnowledgeBaseSpec

    spec = KnowledgeBaseSpec(sources=[Source(folder="d")], chunking=Chunking(max_chars=300))
    assert IngestOptions.from_spec(spec).chunking.max_chars == 300


# ----------------------------------------------------------------------------- real data


def _head(src: Path, dst: Path, n: int) -> Path:
    with src.open(encoding="utf-8") as f:
        dst.write_text("".join(next(f) for _ in range(n)), encoding="utf-8")
    return dst


@pytest.mark.skipif(not DOMAINS.is_dir(), reason="/work/shared/domains is not present")
def test_real_policy_documents_and_fmea_table(tmp_path: Path) -> None:
    # A few records of each, copied to tmp_path only (the data must not enter the repo).
    policies = _head(DOMAINS / "gov" / "policy_docs.jsonl", tmp_path / "policy.jsonl", 5)
    fmea = _head(DOMAINS / "manufacturing" / "fmea_mining_truck.csv", tmp_path / "fmea.csv", 40)
    json_opts = JsonOptions(text_fields=["text"], id_field="docid")
    opts = IngestOptions(parsers=Parsers(json=json_opts), chunking=Chunking())
    report = ingest_paths([policies, fmea], opts)
    assert report.errors == []
    records = [json.loads(line) for line in policies.read_text(encoding="utf-8").splitlines()]
    by_doc = {r["docid"]: r["text"] for r in records}
    assert {d.record for d in report.documents if d.type == "json"} == set(by_doc)
    for c in only(report.chunks, "text"):
        text = by_doc[c.location.record]
        assert text[c.location.char_start : c.location.char_end] == c.text  # exact citation
        assert len(c.text) <= 800
    header = fmea.read_text(encoding="utf-8").splitlines()[0].split(",")
    rows = only(report.chunks, "table-row")
    assert rows and all(c.text.startswith(f"| {header[0]} | {header[1]} |") for c in rows)
    assert rows[-1].location.row_end == 40
    (summary,) = only(report.chunks, "table-summary")
    assert "39 rows, 12 columns" in summary.text


# ------------------------------------------------------------------------------ doctests


@pytest.mark.parametrize(
    "module",
    [
        "qingliang.knowledge.ingest",
        "qingliang.knowledge.ingest.document",
        "qingliang.knowledge.ingest.chunking",
        "qingliang.knowledge.ingest.parsers",
        "qingliang.knowledge.ingest.pipeline",
        "qingliang.knowledge.ingest.errors",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
