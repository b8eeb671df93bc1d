"""Reading a Dataset's sources into normalised records (used by ``store``, and by
``qingliang validate`` through :func:`check_sources`).

Every row read becomes either a :class:`Record` in the dataset's format or a quarantine
entry that says where it was (source, line or row) and why it could not be used. A
source that cannot be read at all (missing file, glob matching nothing, a column mapping
the file lacks, Parquet without pyarrow) raises :class:`ResolveError` before anything is
written.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import hmac
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qingliang.platform.errors import ResolveError
from qingliang.platform.lifecycle.data.manifest import Columns, DatasetSpec, Source

logger = logging.getLogger(__name__)

RAW_CHARS = 2000  # of a malformed line kept in the quarantine
_JSONL = (".jsonl", ".ndjson")
_CSV = (".csv", ".tsv")
_PARQUET = (".parquet", ".pq")
_GATEWAY_CONTENT_KEYS = {"messages", "response"}


class Malformed(ValueError):
    """A row that cannot become a record; the message is the quarantine reason."""


@dataclass
class Record:
    """One normalised record while a version is cut."""

    content: dict[str, Any]  # {"messages": [...]} or {"instruction", "input"?, "output"}
    metadata: dict[str, Any]
    source: str
    where: tuple[str, int]  # ("line", 12) or ("row", 3)
    id: str = ""
    corrects: str | None = None

    def stored(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, **self.content}
        if self.metadata:
            out["metadata"] = self.metadata
        return out


@dataclass
class ReadResult:
    records: list[Record] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    ignored_fields: Counter[str] = field(default_factory=Counter)
    corrections: dict[str, int] = field(default_factory=dict)


def canonical(obj: Any) -> str:
    """The one JSON text of ``obj`` that hashes and files use (sorted keys, UTF-8)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def record_id(key: bytes, content: dict[str, Any]) -> str:
    """Stable id of a normalised record: a keyed hash of its content (not its metadata).

    Keyed with the store's secret, so an id published with a redacted record cannot be
    used to guess the redacted value by hashing candidates.
    """
    return hmac.new(key, canonical(content).encode(), hashlib.sha256).hexdigest()[:24]


# ------------------------------------------------------------------------------ files


def resolve_files(source: Source, base: Path, index: int) -> list[Path]:
    """The files a source names, sorted; raise :class:`ResolveError` if there are none."""
    where = f"spec.sources[{index}].path"
    if source.is_glob:
        pattern = Path(source.path)
        root = pattern if pattern.is_absolute() else base / pattern
        anchor = Path(root.anchor)
        files = sorted(p for p in anchor.glob(str(root.relative_to(anchor))) if p.is_file())
        if not files:
            raise ResolveError(f"{where}: {source.path!r} matches no file (under {base})")
        return files
    path = Path(source.path)
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ResolveError(f"{where}: {source.path!r}: no such file (looked at {path})")
    return [path]


def file_format(source: Source, path: Path, index: int) -> str:
    if source.format != "auto":
        return source.format
    suffix = path.suffix.lower()
    for fmt, suffixes in (("jsonl", _JSONL), ("csv", _CSV), ("parquet", _PARQUET)):
        if suffix in suffixes:
            return fmt
    if source.kind != "records":
        return "jsonl"
    raise ResolveError(
        f"spec.sources[{index}]: cannot tell the format of {path.name!r} from its suffix; "
        "set `format` (jsonl, csv or parquet)"
    )


def _label(path: Path, base: Path) -> str:
    """How reports name a file: relative to the manifest's folder, as the manifest does."""
    try:
        return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return str(path)


Row = tuple[str, int, dict[str, Any] | None, str]  # locator, number, row or None, raw / reason


def _decode(data: bytes, encoding: str) -> str:
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # skip a BOM
    return data.decode(encoding, errors="replace")


def _jsonl_rows(path: Path, encoding: str) -> Iterator[Row]:
    text = _decode(path.read_bytes(), encoding)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield "line", n, None, f"invalid JSON: {exc.msg} (column {exc.colno})\x00{line}"
            continue
        if not isinstance(row, dict):
            yield "line", n, None, f"a record must be a JSON object, got {_type(row)}\x00{line}"
            continue
        yield "line", n, row, line


def _csv_rows(path: Path, source: Source, needed: list[str], index: int) -> Iterator[Row]:
    delimiter = source.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    text = _decode(path.read_bytes(), source.encoding)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise ResolveError(f"spec.sources[{index}]: {path}: unreadable CSV header: {exc}") from exc
    _check_columns(header, needed, path, index)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield "line", reader.line_num, None, f"unreadable CSV row: {exc}\x00"
            continue
        if not any(c.strip() for c in cells):
            continue
        raw = delimiter.join(cells)
        if len(cells) != len(header):
            yield (
                "line",
                reader.line_num,
                None,
                f"row has {len(cells)} cells, the header has {len(header)}\x00{raw}",
            )
            continue
        yield "line", reader.line_num, dict(zip(header, cells, strict=True)), raw


def _parquet_rows(path: Path, needed: list[str], index: int) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ResolveError(
            f"spec.sources[{index}]: reading Parquet ({path.name}) needs pyarrow: "
            "pip install pyarrow"
        ) from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError family
        raise ResolveError(f"spec.sources[{index}]: {path}: unreadable Parquet: {exc}") from exc
    _check_columns(list(table.column_names), needed, path, index)
    for n, row in enumerate(table.to_pylist(), 1):
        yield "row", n, row, canonical({k: _jsonable(v) for k, v in row.items()})


def _check_columns(header: list[str], needed: list[str], path: Path, index: int) -> None:
    # One alternative set must be present: messages, or instruction and output.
    if needed and not any(all(c in header for c in alt.split("+")) for alt in needed):
        want = " or ".join(repr(a.replace("+", " and ")) for a in needed)
        raise ResolveError(
            f"spec.sources[{index}]: {path.name} has no column {want} (columns: "
            f"{', '.join(header)}); map them with `columns`"
        )


# ------------------------------------------------------------------------- normalise


def _type(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def _messages(value: Any, from_text: bool, ignored: Counter[str]) -> list[dict[str, str]]:
    if from_text and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise Malformed(f"messages: not valid JSON: {exc.msg}") from None
    if not isinstance(value, list) or not value:
        raise Malformed(f"messages: must be a non-empty list, got {_type(value)}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise Malformed(f"messages[{i}]: must be an object, got {_type(m)}")
        for key in ("role", "content"):
            if key not in m:
                raise Malformed(f"messages[{i}]: missing field {key!r}")
            if not isinstance(m[key], str):
                raise Malformed(f"messages[{i}].{key}: must be a string, got {_type(m[key])}")
        for key in set(m) - {"role", "content"}:
            ignored[f"messages[].{key}"] += 1
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _text_field(row: dict[str, Any], column: str, what: str, required: bool) -> str:
    if column not in row or row[column] is None:
        if required:
            mapped = f" (column {column!r})" if column != what else ""
            raise Malformed(f"missing field {what!r}{mapped}")
        return ""
    value = row[column]
    if not isinstance(value, str):
        raise Malformed(f"{what}: must be a string, got {_type(value)}")
    return value


def to_content(
    row: dict[str, Any], fmt: str, cols: Columns, from_text: bool, ignored: Counter[str]
) -> dict[str, Any]:
    """A row as content in the dataset's format; raise :class:`Malformed`."""
    if cols.messages in row:
        messages = _messages(row[cols.messages], from_text, ignored)
    elif cols.instruction in row or cols.output in row:
        instruction = _text_field(row, cols.instruction, "instruction", True)
        extra = _text_field(row, cols.input, "input", False) if cols.input else ""
        output = _text_field(row, cols.output, "output", True)
        system = _text_field(row, cols.system, "system", False) if cols.system else ""
        if fmt == "instruction":
            if system.strip():
                raise Malformed("a system prompt cannot be kept in an instruction record")
            content = {"instruction": instruction, "output": output}
            if extra.strip():
                content["input"] = extra
            return content
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        if system.strip():
            messages.insert(0, {"role": "system", "content": system})
    else:
        raise Malformed(
            f"neither a chat record ({cols.messages!r}) nor an instruction record "
            f"({cols.instruction!r} and {cols.output!r})"
        )
    if fmt == "chat":
        return {"messages": messages}
    roles = [m["role"] for m in messages]
    if "system" in roles:
        raise Malformed("a system message cannot be kept in an instruction record")
    if roles != ["user", "assistant"]:
        raise Malformed(
            f"a {len(messages)}-message conversation ({', '.join(roles)}) cannot be an "
            "instruction record: it needs one user and one assistant message"
        )
    return {"instruction": messages[0]["content"], "output": messages[1]["content"]}


def _metadata(row: dict[str, Any], cols: Columns) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if isinstance(row.get("metadata"), dict):
        meta.update(_jsonable(row["metadata"]))
    if cols.id and row.get(cols.id) not in (None, ""):
        meta["source_id"] = str(row[cols.id])
    for c in cols.metadata:
        if c in row and row[c] is not None:
            meta[c] = _jsonable(row[c])
    return meta


def _used_columns(cols: Columns) -> set[str]:
    used = {cols.messages, cols.instruction, cols.output, "metadata", *cols.metadata}
    used |= {c for c in (cols.input, cols.system, cols.id) if c}
    return used


# ---------------------------------------------------------------------------- read


def read_sources(spec: DatasetSpec, base: Path, key: bytes) -> ReadResult:
    """Read every source of ``spec`` (relative to ``base``) and apply the corrections."""
    out = ReadResult()
    corrections: list[tuple[str, str, int, dict[str, Any]]] = []
    for index, source in enumerate(spec.sources):
        cols = source.columns or spec.columns
        for path in resolve_files(source, base, index):
            label = _label(path, base)
            fmt = file_format(source, path, index)
            stats = {"source": label, "kind": source.kind, "rows": 0, "records": 0}
            stats.update({"quarantined": 0, "filtered": 0})
            out.sources.append(stats)
            if source.kind == "records" and fmt == "csv":
                needed = [cols.messages, f"{cols.instruction}+{cols.output}"]
                rows = _csv_rows(path, source, needed, index)
            elif source.kind == "records" and fmt == "parquet":
                needed = [cols.messages, f"{cols.instruction}+{cols.output}"]
                rows = _parquet_rows(path, needed, index)
            else:
                rows = _jsonl_rows(path, source.encoding)
            for where, n, row, raw in rows:
                stats["rows"] += 1
                if row is None:
                    reason, _, text = raw.partition("\x00")
                    out.quarantine.append(_entry(label, where, n, "read", reason, raw=text))
                    stats["quarantined"] += 1
                    continue
                if source.kind == "corrections":
                    corrections.append((label, where, n, row))
                    continue
                try:
                    if source.kind == "gateway_logs":
                        if not _keep_log(row, source):
                            stats["filtered"] += 1
                            continue
                        rec = _gateway_record(row, spec.format, out.ignored_fields)
                    else:
                        content = to_content(
                            row, spec.format, cols, fmt == "csv", out.ignored_fields
                        )
                        used = _used_columns(cols)
                        for k in row:
                            if k not in used:
                                out.ignored_fields[k] += 1
                        rec = Record(content, _metadata(row, cols), "", ("", 0))
                except Malformed as exc:
                    out.quarantine.append(_entry(label, where, n, "read", str(exc), raw=raw))
                    stats["quarantined"] += 1
                    continue
                rec.source, rec.where = label, (where, n)
                rec.id = record_id(key, rec.content)
                out.records.append(rec)
                stats["records"] += 1
    if corrections:
        _apply_corrections(out, corrections, spec.format, key)
    return out


_COLUMN = re.compile(r"\s*\(column \d+\)")


def drop_reasons(read: ReadResult, steps: list[dict[str, Any]], tombstoned: int) -> Counter[str]:
    """Why the records read did not all reach the version: ``"<step>: <reason>"`` ->
    records (a record the quality step refuses under two rules counts under both)."""
    out = Counter[str]()
    for q in read.quarantine:  # rows that never became records
        out[f"{q.get('step', 'read')}: {_COLUMN.sub('', str(q.get('reason', '')))}"] += 1
    filtered = sum(int(s.get("filtered", 0)) for s in read.sources)
    if filtered:
        out["read: gateway conversation outside the source's tenants / models"] += filtered
    if tombstoned:
        out["deleted: the record was deleted (tombstoned)"] += tombstoned
    for entry in steps:
        step = entry.get("step")
        if step == "schema":
            out.update({f"schema: {k}": v for k, v in (entry.get("reasons") or {}).items()})
        elif step == "dedup":
            removed = entry.get("removed") or {}
            out.update({f"dedup: {k} duplicate": v for k, v in removed.items() if v})
        elif step == "quality":
            out.update({f"quality: {k}": v for k, v in (entry.get("removed") or {}).items()})
    return out


def check_sources(spec: DatasetSpec, base: Path) -> list[tuple[str, str]]:
    """What would stop the sources from being read, found without reading them: a file
    that is missing, a glob matching nothing, a format that cannot be told. Returns
    ``(field path, message)`` pairs (``spec.sources[1].path``), empty when all is well."""
    issues: list[tuple[str, str]] = []
    for index, source in enumerate(spec.sources):
        try:
            for path in resolve_files(source, base, index):
                file_format(source, path, index)
        except ResolveError as exc:
            where, _, message = str(exc).partition(": ")
            issues.append((where, message))
    return issues


def _entry(
    source: str, where: str, n: int, step: str, reason: str, *, raw: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"source": source, where: n, "step": step, "reason": reason}
    if raw is not None:
        entry["raw"] = raw[:RAW_CHARS]
    return entry


def _keep_log(row: dict[str, Any], source: Source) -> bool:
    if source.tenants and str(row.get("tenant")) not in source.tenants:
        return False
    return not (source.models and str(row.get("model")) not in source.models)


def _gateway_record(row: dict[str, Any], fmt: str, ignored: Counter[str]) -> Record:
    if "messages" not in row:
        raise Malformed("missing field 'messages'")
    messages = _messages(row["messages"], False, ignored)
    response = row.get("response")
    if isinstance(response, dict):
        response = response.get("content")
    if response is not None:
        if not isinstance(response, str):
            raise Malformed(f"response: must be a string, got {_type(response)}")
        messages.append({"role": "assistant", "content": response})
    content = to_content({"messages": messages}, fmt, Columns(), False, ignored)
    meta = {"origin": "gateway"}
    if isinstance(row.get("metadata"), dict):
        meta.update(_jsonable(row["metadata"]))
    for k, v in row.items():
        if k not in _GATEWAY_CONTENT_KEYS and k != "metadata":
            meta["source_id" if k == "id" else k] = _jsonable(v)
    return Record(content, meta, "", ("", 0))


def _corrected(content: dict[str, Any], output: str) -> dict[str, Any]:
    if "output" in content:
        return {**content, "output": output}
    messages = [dict(m) for m in content["messages"]]
    if messages[-1]["role"] == "assistant":
        messages[-1]["content"] = output
    else:
        messages.append({"role": "assistant", "content": output})
    return {"messages": messages}


def _apply_corrections(
    out: ReadResult,
    corrections: list[tuple[str, str, int, dict[str, Any]]],
    fmt: str,
    key: bytes,
) -> None:
    """Replace corrected records (by ``record_id``) or add new ones (by ``messages``).

    Corrections apply in file order; a later correction of the same record wins.
    """
    by_id: dict[str, list[int]] = {}
    for i, rec in enumerate(out.records):
        by_id.setdefault(rec.id, []).append(i)
    counts = Counter({"replaced": 0, "added": 0, "quarantined": 0, "overridden": 0})
    for label, where, n, row in corrections:
        try:
            reviewer = row.get("reviewer")
            if not isinstance(reviewer, str) or not reviewer.strip():
                raise Malformed("missing field 'reviewer' (who made the correction)")
            output = row.get("output")
            if not isinstance(output, str) or not output.strip():
                raise Malformed("missing field 'output' (the corrected answer)")
            meta: dict[str, Any] = {"corrected_by": reviewer}
            if isinstance(row.get("note"), str):
                meta["correction_note"] = row["note"]
            target = row.get("record_id")
            messages: list[dict[str, str]] = []
            if target is None and "messages" in row:
                # The conversation as it was (wrong answer included) names a record too.
                messages = _messages(row["messages"], False, out.ignored_fields)
                try:
                    as_read = to_content({"messages": messages}, fmt, Columns(), False, Counter())
                except Malformed:
                    as_read = None
                if as_read is not None and record_id(key, as_read) in by_id:
                    target = record_id(key, as_read)
            elif target is not None and "messages" in row:
                raise Malformed("give record_id or messages, not both")
            if target is not None:
                positions = by_id.get(str(target))
                if not positions:
                    raise Malformed(f"record_id {target!r} is not a record of the sources")
                for pos in positions:
                    old = out.records[pos]
                    origin = old.corrects or old.id
                    counts["overridden"] += old.corrects is not None
                    content = _corrected(old.content, output)
                    new = Record(
                        content, {**old.metadata, **meta, "corrects": origin}, label, (where, n)
                    )
                    new.id, new.corrects = record_id(key, content), origin
                    out.records[pos] = new
                counts["replaced"] += 1
            elif "messages" in row:
                content = _corrected({"messages": messages}, output)
                content = to_content(content, fmt, Columns(), False, out.ignored_fields)
                rec = Record(content, {**meta, "origin": "correction"}, label, (where, n))
                rec.id = record_id(key, content)
                out.records.append(rec)
                counts["added"] += 1
            else:
                raise Malformed("a correction needs record_id or messages")
        except Malformed as exc:
            out.quarantine.append(_entry(label, where, n, "read", str(exc), raw=canonical(row)))
            counts["quarantined"] += 1
            for s in out.sources:
                if s["source"] == label:
                    s["quarantined"] += 1
            continue
        for s in out.sources:
            if s["source"] == label:
                s["records"] += 1
    out.corrections = dict(counts)
