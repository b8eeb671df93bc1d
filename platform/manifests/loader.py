"""Read manifests from YAML files or folders and validate them.

Every error names the file, the document (when a file holds several) and the field
path, and unknown keys get a "did you mean" hint::

    deploy/qwen.yaml: spec.engine.max_model_lenn: unknown key (did you mean 'max_model_len'?)

The loader imports no kind itself: each is registered from above with
:func:`register_kind` (:mod:`qingliang.platform.control.kinds` registers the kinds
``apply`` knows, :mod:`qingliang.platform.lifecycle.pipelines.kinds` adds ``FineTuneJob``
and ``Pipeline``), so an entry point imports one of those before loading anything.

Example:
    >>> import qingliang.platform.control.kinds
    >>> from qingliang.platform.manifests.loader import parse_documents
    >>> docs = parse_documents('''
    ... apiVersion: qingliang.io/v1
    ... kind: ModelDeployment
    ... metadata: {name: tiny}
    ... spec: {model: {source: /models/tiny}}
    ... ''', source="tiny.yaml")
    >>> docs[0].manifest.name
    'tiny'

Manifests may come from anyone who can hand a file to ``qingliang validate``, so reading
one is bounded: a file is at most :data:`MAX_FILE_BYTES`; aliases are counted while the
YAML is composed, before anything is built, so a 349-byte "billion laughs" is refused
instead of expanding to a billion strings (:data:`MAX_ALIASES`, :data:`MAX_ALIAS_NODES`);
nesting stops at :data:`MAX_DEPTH`; and an error quotes at most :data:`QUOTE_CHARS` of a
value (cut with "…").
"""

from __future__ import annotations

import re
import reprlib
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from qingliang.platform.errors import FieldIssue, ManifestError, did_you_mean

#: Manifest kinds by ``kind``, in the order they were registered (:func:`register_kind`).
#: The loader imports no kind: the areas above fill this registry
#: (:mod:`qingliang.platform.control.kinds`, :mod:`qingliang.platform.lifecycle.pipelines.kinds`).
KINDS: dict[str, type[BaseModel]] = {}

YAML_SUFFIXES = (".yaml", ".yml")

#: A validator's ValueError whose lines start with this names fields below its own
#: location: ``"@nodes[2].next: unknown node"`` raised on ``spec`` is reported at
#: ``spec.nodes[2].next`` (see :func:`qingliang.agents.manifest.check_graph`).
FIELD_PREFIX = "@"

#: Largest manifest file (or text) read, in bytes.
MAX_FILE_BYTES = 1 << 20
#: Aliases (``*name``) in one document.
MAX_ALIASES = 100
#: Nodes that aliases may add to one document when expanded: a list of nine aliases of
#: a list of nine ... is refused here, long before its expansion is built or printed.
MAX_ALIAS_NODES = 10_000
#: Levels of nested lists and mappings (PyYAML composes them recursively).
MAX_DEPTH = 100
#: Characters of a value an error message quotes.
QUOTE_CHARS = 200
#: Characters of one error message (a last resort: values are cut first).
MESSAGE_CHARS = 2000


class _OverLimit(yaml.YAMLError):
    """A manifest past one of the loader's limits: valid YAML, refused all the same."""

    def __init__(self, problem: str, mark: object) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _ManifestYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts aliases and depth while composing (see the limits).

    Each composed node's expanded size (nodes, with aliases followed) is kept, so an
    alias costs what it would expand to, without expanding anything.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._alias_nodes = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size; nodes live as long

    def compose_document(self) -> yaml.Node | None:
        self._aliases = self._alias_nodes = self._depth = 0
        self._sizes = {}
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: typing.Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:  # else PyYAML's own "found undefined alias"
                self._count_alias(event, target)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise _OverLimit(f"lists and mappings nested more than {MAX_DEPTH} levels deep", mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._sizes[id(item)] for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        self._sizes[id(node)] = size
        return node

    def _count_alias(self, event: typing.Any, target: yaml.Node) -> None:
        name = _quote(event.anchor)
        self._aliases += 1
        if self._aliases > MAX_ALIASES:
            raise _OverLimit(
                f"more than {MAX_ALIASES} aliases in one document (at *{name[1:-1]}); "
                "write the repeated parts out",
                event.start_mark,
            )
        size = self._sizes.get(id(target))
        if size is None:  # the anchored node is still being composed
            raise _OverLimit(
                f"the alias *{name[1:-1]} refers to the node that contains it "
                "(a structure that contains itself is not a manifest)",
                event.start_mark,
            )
        self._alias_nodes += size
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise _OverLimit(
                f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes (at *{name[1:-1]}); "
                "an alias of an alias of ... repeats its anchor's content each time: write "
                "the repeated parts out or use fewer aliases",
                event.start_mark,
            )

    def construct_object(self, node: yaml.Node, deep: bool = False) -> object:
        try:
            return super().construct_object(node, deep)
        except ValueError as exc:  # int("1" * 5000), date(2024, 2, 30): Python's own errors
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {_clip(str(exc))}", node.start_mark
            ) from None


_REPR = reprlib.Repr()
_REPR.maxstring = QUOTE_CHARS
_REPR.maxother = QUOTE_CHARS
_REPR.maxlevel = 3
_REPR.fillvalue = "…"
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 10

# A quoted value in a message (a validator's ``f"{v!r}"``) longer than QUOTE_CHARS.
_LONG_QUOTED = re.compile(
    rf"'(?:[^'\\\n]|\\.){{{QUOTE_CHARS + 1},}}'|" + rf'"(?:[^"\\\n]|\\.){{{QUOTE_CHARS + 1},}}"'
)


def _quote(value: object) -> str:
    """``repr(value)`` in at most about QUOTE_CHARS characters, cut with "…".

    Never builds the whole repr of a large list or mapping.

    Example:
        >>> _quote("x" * 1000)[-5:], len(_quote("x" * 1000))
        ("xxx…'", 203)
    """
    if isinstance(value, str):
        if len(value) <= QUOTE_CHARS:
            return repr(value)
        text = repr(value[:QUOTE_CHARS])
        return f"{text[:-1]}…{text[-1]}"
    text = _REPR.repr(value)
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "…"


def _clip(message: str, limit: int = MESSAGE_CHARS) -> str:
    """``message`` with long quoted values cut to QUOTE_CHARS, and at most ``limit`` long."""
    if len(message) > QUOTE_CHARS:
        message = _LONG_QUOTED.sub(
            lambda m: f"{m.group()[: QUOTE_CHARS + 1]}…{m.group()[0]}", message
        )
    return message if len(message) <= limit else message[: limit - 1] + "…"


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
        path = ".".join(_clip(str(p), QUOTE_CHARS) for p in loc)
        msg = _clip(str(err["msg"]).removeprefix("Value error, "))
        if msg.startswith(FIELD_PREFIX):
            # A whole-object check listing several fields below ``path`` (one per line).
            for line in msg.splitlines():
                sub, _, text = line.removeprefix(FIELD_PREFIX).partition(": ")
                issues.append(FieldIssue(f"{path}.{sub}" if path else sub, text))
            continue
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1]) or []
            msg = "unknown key" + did_you_mean(loc[-1], allowed)
            if allowed:
                msg += f"; allowed here: {', '.join(sorted(allowed))}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "literal_error":
            got = err.get("input")
            msg = f"{_quote(got)} is not allowed: {msg[0].lower()}{msg[1:]}"
            expected = (err.get("ctx") or {}).get("expected", "")
            options = [o.strip().strip("'") for o in str(expected).replace(" or ", ",").split(",")]
            msg += did_you_mean(got, [o for o in options if o])
        issues.append(FieldIssue(path, msg))
    return issues


def register_kind(model: type[BaseModel]) -> type[BaseModel]:
    """Make ``model`` the manifest kind named by its ``kind: Literal["..."]`` field.

    Registering the same model again is a no-op, so importing a registering module twice
    (or from two entry points) is harmless; the kinds keep their first registration order,
    the order an "unknown kind" error lists them in.

    Raises:
        ValueError: ``model`` has no single-value ``kind`` literal, or another model is
            already registered under its kind.
    """
    field = model.model_fields.get("kind")
    names = typing.get_args(field.annotation) if field is not None else ()
    if len(names) != 1 or not isinstance(names[0], str):
        raise ValueError(f'{model.__name__} has no `kind: Literal["..."]` field')
    kind = names[0]
    if KINDS.setdefault(kind, model) is not model:
        raise ValueError(f"manifest kind {kind!r} is already registered ({KINDS[kind].__name__})")
    return model


def known_kinds() -> list[str]:
    """The registered kinds, in registration order."""
    return list(KINDS)


def validate_document(doc: object, source: str) -> Loaded:
    """Validate one parsed YAML document; raise :class:`ManifestError` naming the field."""
    if not isinstance(doc, dict):
        raise ManifestError(
            [FieldIssue("", f"a manifest must be a mapping, got {type(doc).__name__}")], source
        )
    if not KINDS:
        raise RuntimeError(
            "no manifest kinds are registered: import qingliang.platform.control.kinds "
            "(or qingliang.platform.lifecycle.pipelines.kinds for every kind) first"
        )
    kind = doc.get("kind")
    if kind is None:
        raise ManifestError([FieldIssue("kind", "required key is missing")], source)
    if not isinstance(kind, str) or kind not in KINDS:  # a list or mapping is unhashable
        more = did_you_mean(kind, KINDS)
        raise ManifestError(
            [FieldIssue("kind", f"unknown kind {_quote(kind)}{more}; known: {', '.join(KINDS)}")],
            source,
        )
    model = KINDS[str(kind)]
    try:
        manifest = model.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(_issues(model, exc), source) from None
    return Loaded(source=source, manifest=manifest, raw=doc)


def parse_documents(text: str, source: str) -> list[Loaded]:
    """Parse a YAML stream (one or more ``---`` documents) and validate each.

    Raises:
        ManifestError: Text over :data:`MAX_FILE_BYTES`, invalid YAML, too many or too
            large aliases, too deep nesting, or a manifest that is not valid.
    """
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise ManifestError([FieldIssue("", _too_large())], source)
    try:
        # Number documents as written: an empty one between two `---` still counts.
        docs = [
            (i, d)
            for i, d in enumerate(yaml.load_all(text, Loader=_ManifestYamlLoader))
            if d is not None
        ]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = _clip(getattr(exc, "problem", None) or str(exc))
        what = "" if isinstance(exc, _OverLimit) else "invalid YAML: "
        raise ManifestError([FieldIssue("", f"{where}{what}{problem}")], source) from None
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


def _too_large() -> str:
    return (
        f"larger than {MAX_FILE_BYTES // (1 << 20)} MiB ({MAX_FILE_BYTES:,} bytes), the most a "
        "manifest file may hold; split it into several files"
    )


def _read(path: Path) -> str:
    """A manifest file's text; ManifestError past MAX_FILE_BYTES, before reading it all."""
    with path.open("rb") as f:  # also a FIFO or a device: read no more than the limit
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ManifestError([FieldIssue("", _too_large())], str(path))
    return data.decode("utf-8")


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
                text = _read(f)
            except (OSError, UnicodeDecodeError) as exc:
                errors.append(f"{f}: cannot read: {exc}")
                continue
            except ManifestError as exc:
                errors.append(str(exc))
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
