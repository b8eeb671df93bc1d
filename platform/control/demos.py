"""The domain demonstrations: bundles of manifests and data under ``deploy/domains/``.

A bundle is a folder (``deploy/domains/gov``, ``healthcare``, ``manufacturing``) with a
``demo.yaml`` (:class:`DemoFile`), the manifests it lists, and the data they read::

    title: "政务服务 12345 热线与政策咨询"
    summary: "..."
    prepare:
      sqlite: [{csv: data/offices.csv, database: data/offices.sqlite, table: offices}]
    manifests: [knowledge.yaml, desk.yaml]
    try: ['qingliang agents run gov-desk "..."']
    console:
      - {kind: search, kb: gov-policy, query: "...", title: "...", expect: "..."}
      - {kind: agent, graph: gov-desk, input: "...", attachment: form.png, title: "..."}

``try`` are the command lines ``demo up`` prints; ``console`` is the same walkthrough as
:class:`ConsoleStep` s the web console acts on (``GET /v1/demos``), whose sample pictures
(``samples/``) it fetches from ``GET /v1/demos/{name}/samples/{file}``.

:func:`prepare` builds what the manifests need and the repository does not ship (SQLite
tables from the shipped CSV files, for the read-only ``sql`` tools); :func:`up` applies
the manifests to the running platform; :func:`down` removes what :func:`up` created, and
only that. What a demonstration created is recorded in ``$QINGLIANG_HOME/demos.json``, so
``demo down`` never deletes an object a user made, and ``demo up`` refuses to take over
one (it names it and says how to proceed) — ``demo up all`` then ``demo down all`` leaves
the platform as it was.

With all three domains up, the front desk (``deploy/domains/front-desk.yaml``) routes any
request to the right domain desk with the learned router.

Example:
    >>> from qingliang.platform.control.demos import DOMAINS, select
    >>> [b.name for b in select(["all"])] == list(DOMAINS)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qingliang.platform.errors import (
    Conflict,
    FieldIssue,
    ManifestError,
    NotFound,
    did_you_mean,
)

#: The domains, in the order ``all`` brings them up.
DOMAINS = ("gov", "healthcare", "manufacturing")
#: The front desk's manifest, beside the bundles; applied once every domain is up.
FRONT_DESK = "front-desk.yaml"
#: Where the bundles are: the repository's ``deploy/domains`` (override:
#: ``QINGLIANG_DEMOS_DIR``).
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "deploy" / "domains"
#: What ``demo up`` records, under the platform's data directory.
RECORD = "demos.json"
#: The sample pictures a bundle may serve (``samples/``): suffix -> media type.
SAMPLE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SqliteTable(_Strict):
    csv: str = Field(description="A CSV file of the bundle (header row first), UTF-8.")
    database: str = Field(description="The SQLite file to build (git-ignored).")
    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", description="Table name.")


class Prepare(_Strict):
    sqlite: list[SqliteTable] = Field(default_factory=list)


#: The fields each kind of console step has (besides kind, title, expect): required, optional.
STEP_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "search": (("kb",), ("query", "image", "limit")),
    "agent": (("graph", "input"), ("attachment",)),
    "approvals": ((), ()),
    "router": (("graph",), ()),
    "pipeline": ((), ()),
    "deployment": (("deployment",), ()),
}


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


class ConsoleStep(_Strict):
    """One step of the walkthrough as the web console does it.

    ``search`` opens the knowledge base ``kb``'s search with ``query`` (and the sample
    picture ``image``); ``agent`` opens the chat with the graph ``graph``, ``input`` typed
    and the sample ``attachment`` attached; ``approvals``, ``router`` (of ``graph``),
    ``pipeline`` (the pipeline runs) and ``deployment`` (one deployment, its adapters'
    lineage) open those pages.
    """

    kind: Literal["search", "agent", "approvals", "router", "pipeline", "deployment"]
    title: str = Field(min_length=1, max_length=200, description="What to do, one line.")
    expect: str = Field(default="", max_length=500, description="What the user should see.")
    kb: str | None = Field(default=None, description="search: the knowledge base.")
    query: str | None = Field(default=None, description="search: the text searched for.")
    image: str | None = Field(default=None, description="search: a picture of samples/.")
    limit: int | None = Field(default=None, ge=1, le=100, description="search: hits wanted.")
    graph: str | None = Field(default=None, description="agent, router: the agent graph.")
    input: str | None = Field(default=None, description="agent: the request typed.")
    attachment: str | None = Field(default=None, description="agent: a picture of samples/.")
    deployment: str | None = Field(default=None, description="deployment: its name.")

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> ConsoleStep:
        required, optional = STEP_FIELDS[self.kind]
        missing = [f for f in required if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{_a(self.kind)} step needs {', '.join(missing)}")
        others = [
            f
            for f in ConsoleStep.model_fields
            if f not in ("kind", "title", "expect", *required, *optional)
            and getattr(self, f) is not None
        ]
        if others:
            raise ValueError(f"{_a(self.kind)} step has no {', '.join(others)}")
        if self.kind == "search" and self.query is None and self.image is None:
            raise ValueError("a search step needs a query or an image")
        return self

    def samples(self) -> list[str]:
        """The sample pictures this step uses."""
        return [f for f in (self.image, self.attachment) if f is not None]

    def to_dict(self) -> dict[str, Any]:
        """``kind``, ``title``, ``expect`` and the fields of its kind (None where unset)."""
        required, optional = STEP_FIELDS[self.kind]
        keys = ("kind", "title", "expect", *required, *optional)
        return {k: getattr(self, k) for k in keys}


class DemoFile(_Strict):
    """``demo.yaml``: what the bundle is and what ``demo up`` does with it."""

    title: str = Field(min_length=1, max_length=200)
    summary: str = Field(default="", max_length=2000)
    prepare: Prepare = Field(default_factory=Prepare)
    manifests: list[str] = Field(min_length=1, description="Applied in this order.")
    train: list[str] = Field(
        default_factory=list,
        description="Pipelines that train the domain's adapter (`qingliang pipelines run -f`).",
    )
    try_: list[str] = Field(
        default_factory=list, alias="try", description="Commands `demo up` prints to try."
    )
    console: list[ConsoleStep] = Field(
        default_factory=list, description="The walkthrough as the web console's steps."
    )


@dataclass(frozen=True)
class Bundle:
    """One domain's bundle, read from its ``demo.yaml``."""

    name: str
    root: Path
    spec: DemoFile

    @property
    def manifests(self) -> list[Path]:
        return [self.root / m for m in self.spec.manifests]

    @property
    def training(self) -> list[Path]:
        return [self.root / m for m in self.spec.train]

    def adapter_aliases(self) -> list[tuple[str, str]]:
        """``(deployment, alias)`` of each training pipeline's canary step that names an
        alias: where the domain's adapter is served (``qwen-coder:gov``). The desks call
        the alias, so ``demo up`` makes sure it exists before they are applied."""
        found = []
        for path in self.training:
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                steps = ((doc or {}).get("spec") or {}).get("steps") or []
                found += [
                    (str(st["deployment"]), str(st["alias"]))
                    for st in steps
                    if isinstance(st, dict) and st.get("type") == "canary" and st.get("alias")
                ]
        return list(dict.fromkeys(found))

    @classmethod
    def load(cls, root: Path) -> Bundle:
        """The bundle at ``root``; a bad ``demo.yaml`` names the file and the field."""
        path = root / "demo.yaml"
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise NotFound(f"{path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ManifestError([FieldIssue("", f"not valid YAML: {exc}")], str(path)) from None
        try:
            spec = DemoFile.model_validate(raw)
        except ValidationError as exc:
            issues = [
                FieldIssue(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()
            ]
            raise ManifestError(issues, str(path)) from None
        for name in spec.manifests + spec.train:
            if not (root / name).is_file():
                raise ManifestError([FieldIssue("manifests", f"no such file: {name}")], str(path))
        return cls(root.name, root, spec)

    def check_samples(self) -> None:
        """Raise :class:`ManifestError` naming a console step whose picture is not one of
        ``samples/`` (a file check, so not part of :meth:`load`)."""
        have = self.samples()
        for i, step in enumerate(self.spec.console):
            for name in step.samples():
                if name not in have:
                    raise ManifestError(
                        [FieldIssue(f"console.{i}", f"no sample picture {name!r} in samples/")],
                        str(self.root / "demo.yaml"),
                    )

    def samples(self) -> dict[str, Path]:
        """The bundle's sample pictures (image files directly in ``samples/``) by name."""
        folder = self.root / "samples"
        if not folder.is_dir():
            return {}
        return {
            p.name: p
            for p in sorted(folder.iterdir())
            if p.suffix.lower() in SAMPLE_TYPES and p.is_file() and not p.is_symlink()
        }

    def sample(self, name: str) -> tuple[Path, str]:
        """The sample picture ``name`` and its media type.

        Raises:
            NotFound: ``name`` is not an image file of this bundle's ``samples/`` (named,
                with the pictures there).
        """
        found = self.samples()
        if name not in found:
            raise NotFound(
                f"demo {self.name} has no sample picture {name!r}"
                f"{did_you_mean(name, list(found))}; its samples: {', '.join(found) or 'none'}"
            )
        return found[name], SAMPLE_TYPES[found[name].suffix.lower()]


def root_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env["QINGLIANG_DEMOS_DIR"]) if env.get("QINGLIANG_DEMOS_DIR") else DEFAULT_ROOT


def select(names: Sequence[str], root: Path | None = None) -> list[Bundle]:
    """The bundles ``names`` ask for (``all``: every domain), in :data:`DOMAINS` order.

    Raises:
        NotFound: an unknown name (with a "did you mean"), or a bundle missing on disk.
    """
    root = root or root_dir()
    wanted: list[str] = []
    for name in names or ["all"]:
        if name == "all":
            wanted += list(DOMAINS)
        elif name in DOMAINS:
            wanted.append(name)
        else:
            raise NotFound(
                f"no demo {name!r}{did_you_mean(name, [*DOMAINS, 'all'])}; "
                f"choose from {', '.join(DOMAINS)} or all"
            )
    ordered = [d for d in DOMAINS if d in wanted]
    missing = [d for d in ordered if not (root / d / "demo.yaml").is_file()]
    if missing:
        raise NotFound(f"demo bundle(s) not found under {root}: {', '.join(missing)}")
    bundles = [Bundle.load(root / d) for d in ordered]
    for b in bundles:
        b.check_samples()
    return bundles


# ------------------------------------------------------------------ prepare


def prepare(bundle: Bundle | Path) -> list[Path]:
    """Build what ``bundle``'s manifests read and the repository does not ship; returns
    the files built. Idempotent: a table newer than its CSV is left alone."""
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    built = []
    for item in b.spec.prepare.sqlite:
        built.append(csv_to_sqlite(b.root / item.csv, b.root / item.database, item.table))
    return built


def csv_to_sqlite(source: Path, database: Path, table: str) -> Path:
    """``source`` (CSV with a header) as ``table`` in ``database``, column types inferred
    (INTEGER, REAL, else TEXT). The table is replaced whole, in one transaction, only
    when the CSV is newer than the database or the table is missing."""
    if not source.is_file():
        raise NotFound(f"{source}: no such CSV file")
    if database.exists() and database.stat().st_mtime >= source.stat().st_mtime:
        with sqlite3.connect(database) as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)
            ).fetchone()
        if found:
            return database
    with source.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0]:
        raise ManifestError(
            [FieldIssue("csv", "the file is empty (a header row is needed)")], str(source)
        )
    header, body = rows[0], rows[1:]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise ManifestError(
            [FieldIssue("csv", f"line {bad[0]}: {len(body[bad[0] - 2])} fields, the header has "
                     f"{len(header)}")], str(source),
        )  # fmt: skip
    types = [_column_type([r[i] for r in body]) for i in range(len(header))]
    columns = ", ".join(f'"{h}" {t}' for h, t in zip(header, types, strict=True))
    database.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(database) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        conn.execute(f'CREATE TABLE "{table}" ({columns})')
        marks = ", ".join("?" for _ in header)
        conn.executemany(
            f'INSERT INTO "{table}" VALUES ({marks})',
            [[_value(v, t) for v, t in zip(r, types, strict=True)] for r in body],
        )
    return database


def _column_type(values: list[str]) -> str:
    present = [v for v in values if v.strip()]
    for kind, cast in (("INTEGER", int), ("REAL", float)):
        try:
            for v in present:
                cast(v)
        except ValueError:
            continue
        return kind if present else "TEXT"
    return "TEXT"


def _value(v: str, kind: str) -> Any:
    if not v.strip():
        return None
    return int(v) if kind == "INTEGER" else float(v) if kind == "REAL" else v


# ------------------------------------------------------------------ up and down


@dataclass(frozen=True)
class Managed:
    """What the demos created on this platform: ``{domain: [[kind, name], ...]}``."""

    path: Path

    def read(self) -> dict[str, list[list[str]]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise Conflict(f"{self.path} cannot be read ({exc}); remove it to start over") from None
        return data if isinstance(data, dict) else {}

    def write(self, data: dict[str, list[list[str]]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".demos.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    def owned(self) -> set[tuple[str, str]]:
        return {(k, n) for items in self.read().values() for k, n in items}


def objects(paths: Iterable[Path]) -> list[tuple[str, str]]:
    """``(kind, name)`` of every manifest in ``paths``, in order (validated)."""
    import qingliang.platform.control.kinds  # noqa: F401
    from qingliang.platform.manifests.loader import load_paths

    return [(item.kind, item.name) for item in load_paths(list(paths))]


Say = Callable[[str], None]


def up(
    bundles: list[Bundle],
    ctl: Any,
    home: Path,
    *,
    sync: Callable[[list[str]], None],
    say: Say = print,
) -> list[Any]:
    """Prepare and apply ``bundles`` (and the front desk, once all three domains are up)
    on the platform ``ctl`` controls; ``sync`` embeds the knowledge bases applied.

    Raises:
        Conflict: an object a bundle defines exists and was not made by a demo (named,
            with what to do); nothing is changed then.
    """
    record = Managed(home / RECORD)
    owned = record.owned()
    plan: list[tuple[str, list[Path]]] = [(b.name, b.manifests) for b in bundles]
    front = bundles[0].root.parent / FRONT_DESK if bundles else None
    up_now = {b.name for b in bundles} | set(record.read())
    if front is not None and front.is_file() and set(DOMAINS) <= up_now:
        plan.append(("front-desk", [front]))
    for _, paths in plan:
        for kind, name in objects(paths):
            if (kind, name) not in owned and ctl.store.get(kind, name) is not None:
                raise Conflict(
                    f"{kind}/{name} exists and was not created by a demo; delete it "
                    f"(qingliang delete {kind}/{name}) or keep it and skip this demo"
                )
    for b in bundles:
        _check_alias_free(b, ctl, owned)
    for b in bundles:
        for path in dict.fromkeys(prepare(b)):  # one line per database, however many tables
            say(f"{b.name}: prepared {path.relative_to(b.root)}")
    changes: list[Any] = []
    data = record.read()
    for b in bundles:
        _reserve_aliases(b, ctl, data, say)
        record.write(data)
    for domain, paths in plan:
        done = ctl.apply(paths, wait=True, progress=True)
        changes += done
        kept = [kn for kn in data.get(domain, []) if kn[0] in (ALIAS, RUN)]
        data[domain] = kept + [[c.kind, c.name] for c in done if [c.kind, c.name] not in kept]
        record.write(data)
        for c in done:
            say(f"{domain}: {c.kind}/{c.name} {c.action}")
        kbs = [c.name for c in done if c.kind == "KnowledgeBase"]
        if kbs:
            sync(kbs)
    return changes


#: Kinds of what ``demo up`` records besides manifests: an alias it created on a
#: deployment (``qwen-coder:gov``), and the training runs it started (their ids).
ALIAS, RUN = "Alias", "PipelineRun"


def _check_alias_free(b: Bundle, ctl: Any, owned: set[tuple[str, str]]) -> None:
    from qingliang.serving.traffic import MODEL_KIND, entry_of

    for dep, alias in b.adapter_aliases():
        row = ctl.store.get(MODEL_KIND, dep)
        if row is None:
            raise NotFound(
                f"demo {b.name} serves its adapter on the ModelDeployment {dep!r}, which is "
                "not applied: start the platform with `make up` (it applies deploy/defaults)"
            )
        if alias in entry_of(row).aliases and (ALIAS, f"{dep}:{alias}") not in owned:
            raise Conflict(
                f"{dep}:{alias} is an alias that was not created by a demo; remove it "
                f"(qingliang adapters alias {dep} {alias} --remove) or skip this demo"
            )


def _reserve_aliases(b: Bundle, ctl: Any, data: dict, say: Say) -> None:
    """Create the bundle's adapter aliases, empty (the base model answers until its
    pipeline promotes an adapter into them), and record them."""
    from qingliang.serving.traffic import MODEL_KIND, entry_of

    for dep, alias in b.adapter_aliases():
        if alias not in entry_of(ctl.store.get(MODEL_KIND, dep)).aliases:
            ctl.set_alias(dep, alias, {})
            say(
                f"{b.name}: alias {dep}:{alias} created "
                "(the base model answers until an adapter is promoted into it)"
            )
        item = [ALIAS, f"{dep}:{alias}"]
        if item not in data.setdefault(b.name, []):
            data[b.name].append(item)


def record_run(home: Path, domain: str, run_id: str) -> None:
    """Note a training run ``demo up`` started, so ``demo down`` can end it."""
    record = Managed(home / RECORD)
    data = record.read()
    data.setdefault(domain, []).append([RUN, run_id])
    record.write(data)


def runs_of(home: Path, names: Sequence[str]) -> list[str]:
    """The training runs ``demo up`` started for ``names`` (``all``: every domain)."""
    data = Managed(home / RECORD).read()
    domains = list(DOMAINS) if "all" in names else [n for n in names if n in DOMAINS]
    return [n for d in domains for k, n in data.get(d) or [] if k == RUN]


def _remove_alias(ctl: Any, home: Path, ref: str) -> bool:
    """Unload the adapters alias ``ref`` (``dep:alias``, created by a demo) sends requests
    to (its pipeline loaded them), then remove it. False when it is already gone."""
    from qingliang.serving.traffic import MODEL_KIND, entry_of

    dep, _, alias = ref.partition(":")
    row = ctl.store.get(MODEL_KIND, dep)
    if row is None or alias not in entry_of(row).aliases:
        return False
    for adapter in entry_of(row).aliases[alias]:
        ctl.set_adapter(dep, adapter, None)
    ctl.set_alias(dep, alias, None)
    _record_serving(home, ctl, dep)
    return True


def _record_serving(home: Path, ctl: Any, dep: str) -> None:
    """Tell the registry what ``dep`` serves once the demo's adapters are gone."""
    from qingliang.platform.lifecycle.registry import Registry
    from qingliang.serving.traffic import MODEL_KIND, entry_of

    entry = entry_of(ctl.store.get(MODEL_KIND, dep))
    shares = {entry.refs[a]: s for a, s in entry.routed_shares().items() if a in entry.refs}
    with Registry(home=home) as reg:
        try:
            now = reg.deployments.serving(dep)
        except NotFound:
            return  # no release ever recorded there
        models = [a.target for a in now if a.target_kind == "model"]
        if models:
            reg.deployments.set_serving(dep, model=models[0], adapters=shares)


def down(names: Sequence[str], ctl: Any, home: Path, *, say: Say = print) -> list[str]:
    """Remove what ``demo up`` created for ``names`` (``all``: every demo and the front
    desk); objects a user made are never touched. Returns ``KIND/NAME`` removed."""
    record = Managed(home / RECORD)
    data = record.read()
    domains = list(DOMAINS) if "all" in names else [n for n in names if n in DOMAINS]
    unknown = [n for n in names if n != "all" and n not in DOMAINS]
    if unknown:
        raise NotFound(f"no demo {unknown[0]!r}{did_you_mean(unknown[0], [*DOMAINS, 'all'])}")
    # The front desk names every desk: it goes first, whichever domain goes down.
    order = ["front-desk", *domains] if "front-desk" in data else domains
    removed: list[str] = []
    for domain in order:
        items = data.get(domain) or []
        # Graphs before the knowledge bases and aliases they name.
        rank = {"AgentGraph": 0, ALIAS: 1, "Dataset": 2}
        # In reverse order of creation: a graph that nests another goes before it.
        for kind, name in sorted(reversed(items), key=lambda kn: rank.get(kn[0], 3)):
            if kind == RUN:
                continue  # ended by the caller (pipelines are not the control plane's)
            if kind == ALIAS:
                if _remove_alias(ctl, home, name):
                    removed.append(f"{kind}/{name}")
                    say(f"{domain}: alias {name} removed, with the adapters it served")
                continue
            if ctl.store.get(kind, name) is None and kind in ("AgentGraph", "KnowledgeBase"):
                continue  # already gone
            try:
                ctl.delete([name], kind=kind)
            except NotFound:
                continue
            removed.append(f"{kind}/{name}")
            say(f"{domain}: {kind}/{name} deleted")
        data.pop(domain, None)
        record.write(data)
    return removed
