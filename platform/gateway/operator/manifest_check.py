"""Validate and diff the text of a manifest file for the console, with each error at its
field: document, dotted path and line.

:func:`validate` checks each YAML document of the text with the loader ``qingliang
validate`` uses (:func:`~qingliang.platform.manifests.loader.parse_documents`: its limits,
messages and "did you mean" hints), one document at a time, so every error says which
document it is in; the line is found by walking the composed YAML along the error's path.
:func:`diff` runs ``qingliang diff``'s own logic
(:meth:`~qingliang.platform.control.apply.Controller.diff`) on the text. Neither writes
anything the platform reads: ``diff`` reads the state store, and the text is handed to
the controller as a file in a private temporary folder, removed at once.

Example:
    >>> import qingliang.platform.lifecycle.pipelines.kinds
    >>> out = validate('''
    ... apiVersion: qingliang.io/v1
    ... kind: ModelDeployment
    ... metadata: {name: tiny}
    ... spec:
    ...   model: {source: /models/tiny}
    ...   engine: {max_model_len: lots}
    ... ''')
    >>> out["ok"], out["errors"][0]["path"], out["errors"][0]["line"]
    (False, 'spec.engine.max_model_len', 7)
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from qingliang.platform.errors import ManifestError
from qingliang.platform.manifests.loader import MAX_FILE_BYTES, Loaded, parse_documents
from qingliang.platform.settings import Settings

logger = logging.getLogger(__name__)

#: What ``diff`` calls the text in its messages (the temporary file's path never shows).
LABEL = "manifest.yaml"
_NULL = "tag:yaml.org,2002:null"
_PART = re.compile(r"[^.\[\]]+")


def _error(document: int | None, path: str, message: str, line: int | None) -> dict:
    return {"document": document, "path": path, "message": message, "line": line}


def _line_of(node: yaml.Node, path: str) -> int:
    """The 1-based line of the field at ``path`` (``spec.nodes[2].next``) in ``node``, or
    of the deepest part of it that exists (a missing key: its mapping's line)."""
    line = node.start_mark.line
    for part in _PART.findall(path):
        if isinstance(node, yaml.MappingNode):
            found = next((kv for kv in node.value if kv[0].value == part), None)
            if found is None:
                break
            line, node = found[0].start_mark.line, found[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line
        else:
            break
    return line + 1


def check(text: str) -> tuple[list[Loaded], list[dict]]:
    """The valid manifests of ``text`` and the errors of the others (see :func:`validate`)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        return [], [_error(None, "", f"larger than {MAX_FILE_BYTES:,} bytes", None)]
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except (yaml.YAMLError, RecursionError) as exc:
        # The loader's message (its limits included); the line from the parser.
        mark = getattr(exc, "problem_mark", None)
        try:
            parse_documents(text, LABEL)
            message = str(exc)
        except ManifestError as err:
            message = "; ".join(i.message for i in err.issues)
        return [], [_error(None, "", message, mark.line + 1 if mark is not None else None)]
    loaded: list[Loaded] = []
    errors: list[dict] = []
    for i, node in enumerate(nodes):
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
            continue  # an empty document between two `---`
        start = node.start_mark.index - node.start_mark.column  # from the line's start
        piece = text[start : node.end_mark.index]
        try:
            loaded += parse_documents(piece, f"document {i}")
        except ManifestError as exc:
            for issue in exc.issues:
                line = _line_of(node, issue.path) if issue.path else node.start_mark.line + 1
                errors.append(_error(i, issue.path, issue.message, line))
    seen: set[tuple[str, str]] = set()
    for item in loaded:
        if (item.kind, item.name) in seen:
            document = int(item.source.rpartition(" ")[2])
            errors.append(
                _error(
                    document,
                    "metadata.name",
                    f"{item.kind} {item.name!r} is defined twice in this file",
                    _line_of(nodes[document], "metadata.name"),
                )
            )
        seen.add((item.kind, item.name))
    if not loaded and not errors:
        errors.append(_error(None, "", "no manifest found (the text is empty)", None))
    return loaded, errors


def validate(text: str) -> dict[str, Any]:
    """``{"ok", "objects": [{"kind", "name"}], "errors": [{"document", "path", "message",
    "line"}]}`` for the YAML ``text`` (one or more documents): ``document`` counts from 0
    as the ``---`` separators do (None for an error of the whole text, such as invalid
    YAML), ``path`` is the field's dotted path (``spec.engine.max_model_len``; ``""`` for
    the document itself), ``line`` 1-based in ``text``."""
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401  (every kind)

    loaded, errors = check(text)
    return {
        "ok": not errors,
        "objects": [{"kind": item.kind, "name": item.name} for item in loaded],
        "errors": errors,
    }


def diff(text: str, settings: Settings) -> dict[str, Any]:
    """``qingliang diff`` of ``text`` against what the platform on ``settings.home`` has
    applied: ``{"ok", "errors", "objects", "changes": [{"kind", "name", "action",
    "fields", "lightweight"}]}``. ``action`` is ``create``, ``update`` or ``unchanged``
    (a file never deletes: ``apply`` leaves what it does not name); ``lightweight``: an
    update of adapters, canary shares, refs or aliases only (no replica restarts)."""
    from qingliang.platform.control.apply import Controller

    checked = validate(text)
    if not checked["ok"]:
        return {**checked, "changes": []}
    ctl = Controller(settings)
    with tempfile.TemporaryDirectory(prefix="qingliang-diff-") as folder:
        path = Path(folder) / LABEL
        path.write_text(text, encoding="utf-8")
        try:
            found = ctl.diff([path])
        except ManifestError as exc:  # a kind apply does not take (FineTuneJob, Pipeline)
            errors = [
                _error(None, i.path, i.message.replace(str(path), LABEL), None) for i in exc.issues
            ]
            return {**checked, "ok": False, "errors": errors, "changes": []}
    changes = [
        {
            "kind": c.kind,
            "name": c.name,
            "action": "update" if c.action == "adapters" else c.action,
            "fields": list(c.fields),
            "lightweight": c.action == "adapters",
        }
        for c in found
    ]
    return {**checked, "changes": changes}
