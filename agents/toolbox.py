"""From a manifest's ``spec.tools`` to tool objects, and the resolve check on apply.

:func:`build_tools` makes one :class:`~.base.Tool` per declared tool, except
``call_agent`` ones, which the runtime builds (it owns the nested graphs). Relative
``database`` paths are taken from the manifest's folder. Building touches no file; the
SQL tool reads its database's tables when its description is first asked for.

:func:`check_tools` is the resolve step of ``qingliang apply``: validation already proved
the manifest well-formed, this says which named files are not there. It only looks:
nothing is created or opened.

Example:
    >>> from qingliang.agents.manifest import AgentGraph
    >>> graph = AgentGraph.model_validate({
    ...     "apiVersion": "qingliang.io/v1", "kind": "AgentGraph", "metadata": {"name": "desk"},
    ...     "spec": {"agents": [{"name": "clerk", "model": "qwen", "tools": ["stats"]}],
    ...              "tools": [{"kind": "sql", "name": "stats", "database": "no-such.sqlite"}],
    ...              "nodes": [{"name": "answer", "type": "agent", "agent": "clerk"}]}})
    >>> check_tools(graph.spec, Path("/srv/desk"))
    ['tools[0].database: /srv/desk/no-such.sqlite does not exist']
    >>> sorted(build_tools(graph.spec, Path("/srv/desk")))
    ['stats']
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qingliang.agents.manifest import AgentGraphSpec
from qingliang.agents.tools import forms, knowledge, ocr, sql
from qingliang.agents.tools.base import Tool
from qingliang.agents.tools.specs import FormTool

log = logging.getLogger(__name__)

CALL_AGENT_DESCRIPTION = (
    "Ask the agent graph {graph!r} and get its answer. Send the question as it should be "
    "asked, with the context it needs."
)


def database_path(database: str, base_dir: Path) -> Path:
    """``database`` as a path: ``~`` expanded, a relative one taken from ``base_dir``.

    Example:
        >>> database_path("data/app.sqlite", Path("/srv/desk")).as_posix()
        '/srv/desk/data/app.sqlite'
    """
    path = Path(database).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def default_description(config: Any) -> str:
    """The description a tool of ``config``'s kind shows when ``description`` is empty.

    Example:
        >>> from qingliang.agents.tools.specs import CallAgentTool
        >>> default_description(CallAgentTool(kind="call_agent", name="ask", graph="legal"))[:36]
        "Ask the agent graph 'legal' and get "
    """
    kind = config.kind
    if kind == "knowledge_search":
        return knowledge.DEFAULT_DESCRIPTION.format(kb=config.knowledge)
    if kind == "ocr":
        return ocr.DEFAULT_DESCRIPTION
    if kind == "form":
        return forms.FORM_DESCRIPTION.format(name=config.name)
    if kind == "submit":
        return forms.SUBMIT_DESCRIPTION.format(form=config.form)
    if kind == "sql":
        return sql.DEFAULT_DESCRIPTION.format(db=Path(config.database).name, rows=config.max_rows)
    if kind == "call_agent":
        return CALL_AGENT_DESCRIPTION.format(graph=config.graph)
    raise ValueError(f"unknown tool kind {kind!r}")


def build_tools(spec: AgentGraphSpec, base_dir: Path) -> dict[str, Tool]:
    """One tool per ``spec.tools`` entry (``call_agent`` ones skipped), by name.

    Args:
        spec: A validated graph spec.
        base_dir: The manifest file's folder; relative databases are taken from it.
    """
    form_configs = {t.name: t for t in spec.tools if isinstance(t, FormTool)}
    out: dict[str, Tool] = {}
    for config in spec.tools:
        tool: Tool
        if config.kind == "knowledge_search":
            tool = knowledge.KnowledgeSearchTool(config)
        elif config.kind == "ocr":
            tool = ocr.OcrTool(config)
        elif config.kind == "form":
            tool = forms.FormTool(config)
        elif config.kind == "submit":
            db = database_path(config.database, base_dir)
            tool = forms.SubmitTool(config, db, form=form_configs.get(config.form))
        elif config.kind == "sql":
            tool = sql.SqlTool(config, database_path(config.database, base_dir))
        else:
            continue  # call_agent: the runtime builds it
        out[config.name] = tool
    log.debug("built %d tools: %s", len(out), ", ".join(out))
    return out


def check_tools(spec: AgentGraphSpec, base_dir: Path) -> list[str]:
    """Files the tools name that are not there, one problem per field (empty: all there).

    A ``sql`` database must exist (it is opened read-only); a ``submit`` database is
    created on the first submission, so only its folder must exist.
    """
    problems: list[str] = []
    for i, config in enumerate(spec.tools):
        if config.kind not in ("sql", "submit"):
            continue
        path = database_path(config.database, base_dir)
        at = f"tools[{i}].database"
        if config.kind == "sql":
            if not path.exists():
                problems.append(f"{at}: {path} does not exist")
            elif not path.is_file():
                problems.append(f"{at}: {path} is not a file")
        elif not path.parent.is_dir():
            problems.append(f"{at}: folder {path.parent} does not exist")
        elif path.exists() and not path.is_file():
            problems.append(f"{at}: {path} is not a file")
    return problems
