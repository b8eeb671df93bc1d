"""Read manifests from YAML files or folders and validate them.

Every error names the file, the document (when a file holds several) and the field
path, and unknown keys get a "did you mean" hint::

    deploy/qwen.yaml: spec.engine.max_model_lenn: unknown key (did you mean 'max_model_len'?)

Example:
    >>> from qingliang.platform.manifests.loader import parse_documents
    >>> docs = parse_documents('''
    ... apiVersion: qingliang.io/v1
    ... kind: ModelDeployment
    ... metadata: {name: tiny}
    ... spec: {model: {source: /models/tiny}}
    ... ''', source="tiny.yaml")
    >>> docs[0].manifest.name
    'tiny'
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from qingliang.agents.manifest import AgentGraph
from qingliang.knowledge.manifest import KnowledgeBase
from qingliang.platform.data.manifest import Dataset
from qingliang.platform.errors import FieldIssue, ManifestError
from qingliang.platform.finetune.manifest import FineTuneJob
from qingliang.platform.manifests.model_deployment import ModelDeployment
from qingliang.platform.pipelines.manifest import Pipeline

#: Manifest kinds by ``kind``.
KINDS: dict[str, type[BaseModel]] = {
    "ModelDeployment": ModelDeployment,
    "KnowledgeBase": KnowledgeBase,
    "AgentGraph": AgentGraph,
    "Dataset": Dataset,
    "FineTuneJob": FineTuneJob,
    "Pipeline": Pipeline,
}

YAML_SUFFIXES = (".yaml", ".yml")

#: A validator's ValueError whose lines start with this names fields below its own
#: location: ``"@nodes[2].next: unknown node"`` raised on ``spec`` is reported at
#: ``spec.nodes[2].next`` (see :func:`qingliang.agents.manifest.check_graph`).
FIELD_PREFIX = "@"


@dataclass(frozen=True)
class Loaded:
    """One validated manifest and where it came from."""

    source: str
    manifest: BaseModel
    raw: dict

    @property
    def kind(self) -> str:
        return str(self.raw["kind"])

    @property
    def name(self) -> str:
        return str(self.raw["metadata"]["name"])


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The keys a model accepts at ``loc`` (by alias where one is set), or None."""
    current: object = model
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: the item's model is already `current`
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = None
        for name, info in current.model_fields.items():
            if part in (name, info.alias):
                field = info
                break
        if field is None:
            return None
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return None


def _inner_model(annotation: object) -> object:
    """Unwrap Optional[...] / Annotated[...] to the BaseModel inside, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        inner = _inner_model(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _without_union_tags(model: type[BaseModel], loc: tuple) -> tuple:
    """Drop the tag pydantic puts in the path of a tagged-union item
    (``spec.steps.2.canary.share`` → ``spec.steps.2.share``)."""
    out: list = []
    for i, part in enumerate(loc):
        if (
            isinstance(part, str)
            and i > 0
            and isinstance(loc[i - 1], int)  # only the part right after the index
            and i + 1 < len(loc)
            and part not in (_fields_at(model, tuple(out)) or [part])
        ):
            continue
        out.append(part)
    return tuple(out)


def _issues(model: type[BaseModel], exc: ValidationError) -> list[FieldIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = _without_union_tags(model, tuple(err["loc"]))
        path = ".".join(str(p) for p in loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if msg.startswith(FIELD_PREFIX):
            # A whole-object check listing several fields below ``path`` (one per line).
            for line in msg.splitlines():
                sub, _, text = line.removeprefix(FIELD_PREFIX).partition(": ")
                issues.append(FieldIssue(f"{path}.{sub}" if path else sub, text))
            continue
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1]) or []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
            msg = "unknown key"
            msg += f" (did you mean {hint[0]!r}?)" if hint else ""
            if allowed:
                msg += f"; allowed here: {', '.join(sorted(allowed))}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "literal_error":
            got = err.get("input")
            msg = f"{got!r} is not allowed: {msg[0].lower()}{msg[1:]}"
            expected = (err.get("ctx") or {}).get("expected", "")
            options = [o.strip().strip("'") for o in str(expected).replace(" or ", ",").split(",")]
            hint = difflib.get_close_matches(str(got), [o for o in options if o], n=1)
            if hint:
                msg += f" (did you mean {hint[0]!r}?)"
        issues.append(FieldIssue(path, msg))
    return issues


def validate_document(doc: object, source: str) -> Loaded:
    """Validate one parsed YAML document; raise :class:`ManifestError` naming the field."""
    if not isinstance(doc, dict):
        raise ManifestError(
            [FieldIssue("", f"a manifest must be a mapping, got {type(doc).__name__}")], source
        )
    kind = doc.get("kind")
    if kind is None:
        raise ManifestError([FieldIssue("kind", "required key is missing")], source)
    if not isinstance(kind, str) or kind not in KINDS:  # a list or mapping is unhashable
        hint = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        more = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ManifestError(
            [FieldIssue("kind", f"unknown kind {kind!r}{more}; known: {', '.join(KINDS)}")],
            source,
        )
    model = KINDS[str(kind)]
    try:
        manifest = model.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(_issues(model, exc), source) from None
    return Loaded(source=source, manifest=manifest, raw=doc)


def parse_documents(text: str, source: str) -> list[Loaded]:
    """Parse a YAML stream (one or more ``---`` documents) and validate each."""
    try:
        # Number documents as written: an empty one between two `---` still counts.
        docs = [(i, d) for i, d in enumerate(yaml.safe_load_all(text)) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([FieldIssue("", f"{where}invalid YAML: {problem}")], source) from None
    if not docs:
        raise ManifestError([FieldIssue("", "no manifest found (the file is empty)")], source)
    loaded: list[Loaded] = []
    issues: list[FieldIssue] = []
    for i, doc in docs:
        label = source if len(docs) == 1 else f"{source}[{i}]"
        try:
            loaded.append(validate_document(doc, label))
        except ManifestError as exc:
            issues.extend(FieldIssue(x.path, x.message) for x in exc.issues)
            if len(docs) > 1:
                issues[-len(exc.issues) :] = [
                    FieldIssue(x.path, f"(document {i + 1}) {x.message}") for x in exc.issues
                ]
    if issues:
        raise ManifestError(issues, source)
    return loaded


def manifest_files(path: Path) -> list[Path]:
    """The YAML files named by ``path``: the file itself, or a folder's ``*.yaml`` sorted."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
        if not files:
            raise ManifestError(
                [FieldIssue("", "no *.yaml or *.yml files in this folder")], str(path)
            )
        return files
    if not path.exists():
        raise ManifestError([FieldIssue("", "no such file or folder")], str(path))
    return [path]


def load_paths(paths: Iterable[Path]) -> list[Loaded]:
    """Load and validate every manifest under ``paths``; all errors are reported together.

    Also rejects two manifests of the same kind and name.
    """
    loaded: list[Loaded] = []
    errors: list[str] = []
    for path in paths:
        try:
            files = manifest_files(Path(path))
        except ManifestError as exc:
            errors.append(str(exc))
            continue
        for f in files:
            try:
                text = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                errors.append(f"{f}: cannot read: {exc}")
                continue
            try:
                loaded.extend(parse_documents(text, str(f)))
            except ManifestError as exc:
                errors.append(str(exc))
    seen: dict[tuple[str, str], str] = {}
    for item in loaded:
        key = (item.kind, item.name)
        if key in seen:
            errors.append(
                f"{item.source}: metadata.name: {item.kind} {item.name!r} is also defined in "
                f"{seen[key]}"
            )
        seen.setdefault(key, item.source)
    if errors:
        raise ManifestError([FieldIssue("", e) for e in errors])
    return loaded
