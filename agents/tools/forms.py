"""Structured forms: the ``form`` tool the model fills, and the ``submit`` tool that files it.

**Filling.** A ``form`` tool's arguments are the form's fields (a JSON schema built from
the manifest: types, ``enum``, ``pattern``, dates as ``YYYY-MM-DD``). Every call is checked
in full — types, patterns (whole-value match), allowed values, real calendar dates, unknown
keys (with a "did you mean") — and every problem comes back in one :class:`ToolError`, one
line per field. Values add to those the run filled before (``ctx.forms[name]``), so the
model can fill a form over several turns; a form still missing required fields is not an
error: ``data["complete"]`` is false and the content says what is missing.
:func:`validate_values` is the same check for a form a human edited at an approval.

**Submitting.** A ``submit`` tool (side-effecting, run by a ``tool`` node) writes the filled
form as one row of a SQLite table, keyed by ``ctx.idempotency_key`` under a UNIQUE
constraint: ``INSERT ... ON CONFLICT DO NOTHING`` then a read by key, so a repeated call
(a resume after a crash between the commit and the run's journal) returns the same
submission id and writes nothing.

Example:
    >>> from qingliang.agents.tools.specs import FormTool as FormConfig
    >>> config = FormConfig.model_validate({"kind": "form", "name": "permit", "fields": [
    ...     {"name": "applicant"}, {"name": "start", "type": "date"}]})
    >>> values, problems = validate_values(config, {"applicant": "Li Wei", "start": "2024-02-30"})
    >>> values
    {'applicant': 'Li Wei'}
    >>> print(problems[0])
    `start`: '2024-02-30' is not a real date (day is out of range for month)
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from qingliang.agents.tools.base import ToolContext, ToolError, ToolResult
from qingliang.agents.tools.specs import FormField
from qingliang.agents.tools.specs import FormTool as FormConfig
from qingliang.agents.tools.specs import SubmitTool as SubmitConfig
from qingliang.platform.errors import closest, did_you_mean

log = logging.getLogger(__name__)

DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
BUSY_TIMEOUT_S = 10.0
FORM_DESCRIPTION = (
    "Fill in the form {name!r} with the values the user gave. Send the fields you know; call "
    "again to add the rest. The answer says which required fields are still missing."
)
SUBMIT_DESCRIPTION = "Submit the filled form {form!r} (it is recorded once)."

_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}


def field_schema(f: FormField) -> dict[str, Any]:
    """The JSON schema of one form field."""
    schema: dict[str, Any] = {"type": _JSON_TYPES.get(f.type, "string")}
    if f.type == "date":
        schema["format"] = "date"
    if f.enum is not None and f.type in ("string", "date"):
        schema["enum"] = list(f.enum)
    if f.pattern is not None and f.type in ("string", "date"):
        schema["pattern"] = f.pattern
    notes = [f.description] if f.description else []
    if f.type == "date":
        notes.append("A date as YYYY-MM-DD.")
    if f.enum is not None and f.type not in ("string", "date"):
        notes.append(f"One of: {', '.join(f.enum)}.")
    if notes:
        schema["description"] = " ".join(notes)
    return schema


def form_schema(config: FormConfig) -> dict[str, Any]:
    """The JSON schema of a form's arguments object."""
    return {
        "type": "object",
        "properties": {f.name: field_schema(f) for f in config.fields},
        "required": [f.name for f in config.fields if f.required],
        "additionalProperties": False,
    }


def validate_values(config: FormConfig, values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Check ``values`` against the form: ``(the valid values, one problem per bad key)``.

    Strings are stripped and an empty one counts as not filled; an integral float fills an
    ``integer`` field. A field that is ``None`` is left out (not filled).

    Example:
        >>> from qingliang.agents.tools.specs import FormTool as FormConfig
        >>> config = FormConfig.model_validate({"kind": "form", "name": "f", "fields": [
        ...     {"name": "age", "type": "integer"}]})
        >>> validate_values(config, {"age": 42.0, "agee": 1})
        ({'age': 42}, ['unknown field `agee` (did you mean `age`?); fields: age'])
    """
    if not isinstance(values, dict):
        return {}, [f"the form's values must be an object, not {type(values).__name__}"]
    fields = {f.name: f for f in config.fields}
    clean: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in values.items():
        spec = fields.get(key)
        if spec is None:
            near = closest(str(key), fields)
            hint = f" (did you mean `{near}`?)" if near else ""
            problems.append(f"unknown field `{key}`{hint}; fields: {', '.join(fields)}")
            continue
        if value is None:
            continue
        try:
            checked = _check(spec, value)
        except ValueError as exc:
            problems.append(f"`{key}`: {exc}")
            continue
        if checked != "":
            clean[key] = checked
    return clean, problems


def missing_fields(config: FormConfig, values: dict[str, Any]) -> list[str]:
    """Required fields of ``config`` not in ``values``, in the form's order."""
    return [f.name for f in config.fields if f.required and f.name not in values]


def _check(spec: FormField, value: Any) -> Any:
    kind = spec.type
    if kind in ("string", "date"):
        if not isinstance(value, str):
            raise ValueError(f"expected a {_noun(kind)}, got {_show(value)}")
        value = value.strip()
        if value == "":
            return ""
        if kind == "date":
            if not DATE_RE.fullmatch(value):
                raise ValueError(f"expected a date as YYYY-MM-DD, got {value!r}")
            try:
                date.fromisoformat(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a real date ({exc})") from None
    elif kind == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_show(value)}")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_show(value)}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
    elif not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_show(value)}")
    # Patterns and allowed values of a non-string field apply to its JSON text (`3`, `true`).
    text = value if isinstance(value, str) else json.dumps(value)
    if spec.enum is not None and text not in spec.enum:
        hint = did_you_mean(text, spec.enum)
        raise ValueError(f"{text!r} is not one of {', '.join(spec.enum)}{hint}")
    if spec.pattern is not None and not re.fullmatch(spec.pattern, text):
        raise ValueError(f"{text!r} does not match the pattern {spec.pattern!r}")
    return value


def _noun(kind: str) -> str:
    return "date string (YYYY-MM-DD)" if kind == "date" else "string"


def _show(value: Any) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{type(value).__name__} {shown}"


class FormTool:
    """The model fills (part of) a form; every bad value is reported at once.

    Args:
        config: The manifest's ``form`` tool.

    Example:
        >>> from qingliang.agents.tools.specs import FormTool as FormConfig
        >>> from qingliang.agents.tools.base import ToolContext
        >>> tool = FormTool(FormConfig.model_validate({"kind": "form", "name": "permit",
        ...     "fields": [{"name": "applicant"}, {"name": "days", "type": "integer"}]}))
        >>> out = tool.run({"applicant": "Li Wei"}, ToolContext(run_id="r1", tenant=None))
        >>> out.data["values"], out.data["complete"], out.data["missing"]
        ({'applicant': 'Li Wei'}, False, ['days'])
    """

    side_effect = False

    def __init__(self, config: FormConfig) -> None:
        self.config = config
        self.name = config.name
        self.description = config.description or FORM_DESCRIPTION.format(name=config.name)
        self.parameters = form_schema(config)

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Validate ``args``, merge them onto what the run filled before, say what is missing.

        Raises:
            ToolError: one or more values are invalid or unknown (each named on its line).
        """
        clean, problems = validate_values(self.config, args)
        if problems:
            head = f"form {self.name!r}: {len(problems)} problem{'s' if len(problems) > 1 else ''}"
            raise ToolError(head + "\n" + "\n".join(f"- {p}" for p in problems))
        before = ctx.forms.get(self.name) or {}
        values = {**before, **clean}
        order = [f.name for f in self.config.fields]
        values = {k: values[k] for k in order if k in values}
        missing = missing_fields(self.config, values)
        log.debug(
            "form %s run=%s: %d values, %d missing",
            self.name,
            ctx.run_id,
            len(values),
            len(missing),
        )
        filled = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in values.items())
        lines = [f"Form {self.name!r}: {filled or 'nothing filled yet'}."]
        if missing:
            about = {f.name: f.description for f in self.config.fields}
            needs = [f"{m} ({about[m]})" if about[m] else m for m in missing]
            lines.append(f"Still missing (ask the user): {', '.join(needs)}.")
        else:
            lines.append("The form is complete.")
        data = {"form": self.name, "values": values, "complete": not missing, "missing": missing}
        return ToolResult(content="\n".join(lines), data=data)


class SubmitTool:
    """Writes the run's filled form to SQLite, exactly once per ``ctx.idempotency_key``.

    Args:
        config: The manifest's ``submit`` tool.
        database: The SQLite file (its folder must exist; the file and table are created).
        form: The ``form`` tool submitted; with it the values are re-checked and an
            incomplete form is refused (without it, only its presence is checked).

    Example:
        >>> import tempfile
        >>> from qingliang.agents.tools.specs import SubmitTool as SubmitConfig
        >>> from qingliang.agents.tools.base import ToolContext
        >>> db = Path(tempfile.mkdtemp()) / "permits.sqlite"
        >>> tool = SubmitTool(SubmitConfig(kind="submit", name="file", form="permit",
        ...                                database=str(db)), db)
        >>> ctx = ToolContext(run_id="r1", tenant=None, idempotency_key="r1/file/0",
        ...                   forms={"permit": {"applicant": "Li Wei"}})
        >>> tool.run({}, ctx).data["submission_id"] == tool.run({}, ctx).data["submission_id"]
        True
    """

    side_effect = True

    def __init__(
        self, config: SubmitConfig, database: Path, *, form: FormConfig | None = None
    ) -> None:
        self.config = config
        self.database = Path(database)
        self.form = form
        self.name = config.name
        self.description = config.description or SUBMIT_DESCRIPTION.format(form=config.form)
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": {},
            "additionalProperties": False,
        }

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Insert the form once under ``ctx.idempotency_key``; return the stored row.

        Raises:
            ToolError: an empty idempotency key, the form missing, invalid or incomplete,
                or the database / table unusable.
        """
        if args:
            raise ToolError(
                f"{self.name!r} takes no arguments: it submits the form {self.config.form!r} "
                f"as filled (got {', '.join(sorted(map(str, args)))})"
            )
        key = ctx.idempotency_key
        if not isinstance(key, str) or not key.strip():
            raise ToolError(
                f"{self.name!r} needs an idempotency key; refusing to submit without one"
            )
        try:
            values = self._values(ctx)
        except ToolError:
            # A replay after a crash returns what was submitted, even if the form changed.
            done = self._submitted(key)
            if done is None:
                raise
            return done
        table = self.config.table
        now = datetime.now(UTC).isoformat(timespec="seconds")
        body = json.dumps(values, ensure_ascii=False, sort_keys=True)
        try:
            conn = sqlite3.connect(self.database, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise ToolError(f"cannot open the database {self.database}: {exc}") from None
        try:
            with conn:
                conn.execute(
                    f'CREATE TABLE IF NOT EXISTS "{table}" ('
                    "id INTEGER PRIMARY KEY, idempotency_key TEXT UNIQUE NOT NULL, "
                    "run_id TEXT, form TEXT, values_json TEXT, submitted_at TEXT)"
                )
                cur = conn.execute(
                    f'INSERT INTO "{table}" (idempotency_key, run_id, form, values_json, '
                    "submitted_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(idempotency_key) DO NOTHING",
                    (key, ctx.run_id, self.config.form, body, now),
                )
                inserted = cur.rowcount == 1
            row = conn.execute(
                f'SELECT id, values_json FROM "{table}" WHERE idempotency_key = ?', (key,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise ToolError(
                f"submitting to table {table!r} of {self.database} failed: {exc} (the table "
                "needs a UNIQUE idempotency_key column; let the tool create it)"
            ) from None
        finally:
            conn.close()
        if row is None:  # pragma: no cover - the INSERT or an earlier one wrote it
            raise ToolError(f"the submission under key {key!r} was not found after writing it")
        log.debug(
            "submit %s run=%s: submission %s (%s)",
            self.name,
            ctx.run_id,
            row[0],
            "written" if inserted else "already there",
        )
        return self._result(row)

    def _result(self, row: tuple[Any, ...]) -> ToolResult:
        submission_id, stored, table = int(row[0]), json.loads(row[1]), self.config.table
        content = (
            f"Submitted form {self.config.form!r}: submission {submission_id} (table {table})."
        )
        data = {"submission_id": submission_id, "table": table, "values": stored}
        return ToolResult(content=content, data=data)

    def _submitted(self, key: str) -> ToolResult | None:
        """The submission already made under ``key``, if the database has one."""
        if not self.database.is_file():
            return None
        try:
            conn = sqlite3.connect(self.database, timeout=BUSY_TIMEOUT_S)
            try:
                row = conn.execute(
                    f'SELECT id, values_json FROM "{self.config.table}" WHERE idempotency_key = ?',
                    (key,),
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return None
        return None if row is None else self._result(row)

    def _values(self, ctx: ToolContext) -> dict[str, Any]:
        form = self.config.form
        values = ctx.forms.get(form)
        if not values:
            raise ToolError(f"the form {form!r} has not been filled in this run; nothing to submit")
        if self.form is None:
            return dict(values)
        clean, problems = validate_values(self.form, values)
        if problems:
            raise ToolError(f"the form {form!r} is invalid: " + "; ".join(problems))
        missing = missing_fields(self.form, clean)
        if missing:
            raise ToolError(f"the form {form!r} is incomplete: missing {', '.join(missing)}")
        return clean
