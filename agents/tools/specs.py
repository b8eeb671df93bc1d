"""The manifest models of an AgentGraph's ``spec.tools``, and the names they use.

They live with the tools that read them, so the tools never import the graph manifest
(:mod:`qingliang.agents.manifest` builds on them). Validation is pure: whether a
database or knowledge base exists is checked when the manifest is applied.

Example:
    >>> SqlTool(kind="sql", name="stats", database="app.sqlite").max_rows
    50
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from qingliang.platform.manifests.base import Strict, valid_name

#: Node, agent and tool names: they appear in events, logs and the router's arms.
ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
#: Form field names: JSON keys the model fills in.
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
END = "end"

Id = Annotated[str, Field(min_length=1, max_length=63)]


def valid_id(v: str, what: str = "name") -> str:
    """``v`` when it is a valid node, agent or tool name (``what`` names which).

    Raises:
        ValueError: not matching :data:`ID_RE`, or the reserved ``end``.
    """
    if not ID_RE.match(v):
        raise ValueError(
            f"{v!r} is not a valid {what}: use a lower-case letter, then letters, digits, "
            "'-' or '_' (at most 63)"
        )
    if v == END:
        raise ValueError(f"{END!r} is reserved (it means: the run ends here)")
    return v


def valid_regex(v: str | None) -> str | None:
    """``v`` when it is None or a regular expression that compiles.

    Raises:
        ValueError: naming the expression and what is wrong with it.
    """
    if v is not None:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {v!r}: {exc}") from None
    return v


class FormField(Strict):
    name: str = Field(description="Key in the filled form.")
    type: Literal["string", "integer", "number", "boolean", "date"] = Field(
        default="string", description="Value type; `date` is YYYY-MM-DD."
    )
    description: str = Field(default="", max_length=500, description="Shown to the model.")
    required: bool = Field(default=True, description="The form is incomplete without it.")
    pattern: str | None = Field(default=None, description="Regular expression a string matches.")
    enum: list[str] | None = Field(default=None, description="Allowed string values.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not FIELD_RE.match(v):
            raise ValueError(f"{v!r} is not a valid field name (letters, digits, '_')")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        return valid_regex(v)


class ToolBase(Strict):
    name: Id = Field(description="Tool name the model calls and nodes reference.")
    description: str = Field(
        default="", max_length=1000, description="Shown to the model (a default per kind)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return valid_id(v, "tool name")


class KnowledgeTool(ToolBase):
    kind: Literal["knowledge_search"]
    knowledge: Id = Field(description="Knowledge base to search (the caller's tenant applies).")
    limit: int = Field(default=4, ge=1, le=20, description="Hits returned.")
    mode: Literal["hybrid", "dense"] = Field(default="hybrid", description="Retrieval mode.")


class OcrTool(ToolBase):
    kind: Literal["ocr"]
    max_pixels: int = Field(
        default=40_000_000, ge=1, description="Images larger than this are refused."
    )


class FormTool(ToolBase):
    kind: Literal["form"]
    fields: list[FormField] = Field(min_length=1, description="The form's fields.")

    @field_validator("fields")
    @classmethod
    def _distinct(cls, v: list[FormField]) -> list[FormField]:
        names = [f.name for f in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate field names: {', '.join(dup)}")
        return v


class SubmitTool(ToolBase):
    kind: Literal["submit"]
    form: Id = Field(description="The `form` tool whose filled values are submitted.")
    database: str = Field(
        description="SQLite file the submission is written to (relative to the manifest)."
    )
    table: str = Field(default="submissions", description="Table (created if missing).")

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        if not FIELD_RE.match(v):
            raise ValueError(f"{v!r} is not a valid table name (letters, digits, '_')")
        return v


class SqlTool(ToolBase):
    kind: Literal["sql"]
    database: str = Field(description="SQLite file queried read-only (relative to the manifest).")
    max_rows: int = Field(default=50, ge=1, le=10_000, description="Rows returned at most.")
    timeout_s: float = Field(default=2.0, gt=0, le=60, description="A query is stopped after.")


class CallAgentTool(ToolBase):
    kind: Literal["call_agent"]
    graph: str = Field(description="The AgentGraph called (its answer is the tool result).")

    @field_validator("graph")
    @classmethod
    def _graph(cls, v: str) -> str:
        return valid_name(v)


Tool = Annotated[
    KnowledgeTool | OcrTool | FormTool | SubmitTool | SqlTool | CallAgentTool,
    Field(discriminator="kind"),
]
#: Tools whose calls change something outside the run (journaled: exactly once).
SIDE_EFFECT_KINDS = frozenset({"submit", "call_agent"})
