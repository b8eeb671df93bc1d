"""The questions file of ``qingliang eval``: one JSON object a line, checked before anything runs.

A line holds what to ask — ``id`` (a string or an integer, unique in the file),
``question`` (text), ``image`` (optional: a picture's path, relative to the file's folder)
and ``domain`` (optional: the label a graph's router sees) — and any gold fields
(:data:`GOLD_FIELDS`) the metrics compare with. Other keys are kept and ignored, so a
file may carry its own notes. A bad line is an :class:`EvalInputError` naming its line
number and field; the whole file is read first, so nothing runs on a bad file.

Example:
    >>> q = parse_line('{"id": 1, "question": "返岗要隔离多久?", "answers": ["七天"]}', 1)
    >>> (q.id, q.question, q.gold["answers"])
    ('1', '返岗要隔离多久?', ['七天'])
    >>> try:
    ...     parse_line('{"id": "a"}', 3)
    ... except EvalInputError as exc:
    ...     print(exc)
    line 3: question: is required (a non-empty string)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qingliang.platform.errors import QingliangError

log = logging.getLogger(__name__)

#: Gold fields the metrics read, and the JSON shape each must have.
GOLD_FIELDS: dict[str, str] = {
    "answer_span": "a string",
    "answers": "a list of strings",
    "doc_id": "a string or a list of strings",
    "record": "a string or a list of strings",
    "source": "a string or a list of strings",
    "labels": "an object of field -> value (string, number or boolean)",
    "nuggets": "a list of strings",
}
#: Image types a question's picture may have.
IMAGE_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}


class EvalInputError(QingliangError):
    """A questions file that cannot be run: the message names the line and the field."""


@dataclass(frozen=True)
class Question:
    """One line of a questions file, checked.

    ``gold`` holds only the gold fields present (:data:`GOLD_FIELDS`), normalised:
    string-or-list fields are always lists.
    """

    id: str
    question: str
    line: int
    image: Path | None = None
    domain: str | None = None
    gold: dict[str, Any] = field(default_factory=dict)


def _strings(value: Any, *, single_ok: bool) -> list[str] | None:
    if single_ok and isinstance(value, str) and value.strip():
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return list(value)
    return None


def _gold(obj: dict[str, Any], where: str) -> dict[str, Any]:
    gold: dict[str, Any] = {}
    for name, shape in GOLD_FIELDS.items():
        if name not in obj or obj[name] is None:
            continue
        value = obj[name]
        if name == "answer_span":
            ok: Any = value if isinstance(value, str) and value.strip() else None
        elif name == "labels":
            scalar = (str, int, float, bool)
            good = isinstance(value, dict) and value
            ok = (
                dict(value) if good and all(isinstance(v, scalar) for v in value.values()) else None
            )
        else:
            ok = _strings(value, single_ok=name in ("doc_id", "record", "source"))
        if ok is None:
            raise EvalInputError(f"{where}: {name}: must be {shape} (not empty)")
        gold[name] = ok
    return gold


def parse_line(text: str, line: int, base: Path | None = None) -> Question:
    """Check one line (``line`` counts from 1); ``base`` resolves a relative ``image``.

    Raises:
        EvalInputError: not a JSON object, a missing or mistyped field, a gold field of
            the wrong shape, an image that is not a readable picture file.
    """
    where = f"line {line}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalInputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise EvalInputError(f"{where}: must be a JSON object, not {type(obj).__name__}")
    qid = obj.get("id")
    if isinstance(qid, bool) or not isinstance(qid, str | int) or not str(qid).strip():
        raise EvalInputError(f"{where}: id: is required (a non-empty string or an integer)")
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        raise EvalInputError(f"{where}: question: is required (a non-empty string)")
    domain = obj.get("domain")
    if domain is not None and (not isinstance(domain, str) or not domain.strip()):
        raise EvalInputError(f"{where}: domain: must be a non-empty string")
    image = _image(obj.get("image"), where, base)
    return Question(str(qid), question, line, image, domain, _gold(obj, where))


def _image(value: Any, where: str, base: Path | None) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise EvalInputError(f"{where}: image: must be a file path (a non-empty string)")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if path.suffix.lower() not in IMAGE_TYPES:
        known = ", ".join(IMAGE_TYPES)
        raise EvalInputError(f"{where}: image: {value!r} is not a picture ({known})")
    if not path.is_file():
        raise EvalInputError(f"{where}: image: no such file: {path}")
    return path


def read_questions(path: Path, limit: int | None = None) -> list[Question]:
    """Every question of a JSONL file (blank lines skipped), or the first ``limit``.

    The whole file is checked, even past ``limit``, so a bad line is found before a run.

    Raises:
        EvalInputError: the file is missing or empty, a line is bad, an id repeats.
    """
    if not path.is_file():
        raise EvalInputError(f"no such questions file: {path}")
    out: list[Question] = []
    seen: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise EvalInputError(f"{path}: not UTF-8 text ({exc.reason})") from None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        q = parse_line(text, number, path.parent)
        if q.id in seen:
            raise EvalInputError(f"line {number}: id: {q.id!r} repeats line {seen[q.id]}")
        seen[q.id] = number
        out.append(q)
    if not out:
        raise EvalInputError(f"{path}: no questions (one JSON object per line)")
    log.debug("%s: %d questions", path, len(out))
    return out[:limit] if limit is not None else out
