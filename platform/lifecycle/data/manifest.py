"""The ``Dataset`` manifest kind: where training records come from and how they are governed.

A Dataset names its sources (JSONL, CSV or Parquet files and globs, gateway conversation
exports, reviewers' corrections), the record format (``chat`` or ``instruction``), an
ordered list of governance steps (``schema``, ``pii``, ``dedup``, ``quality``), the
train/eval split and how long versions are kept. Applying it cuts an immutable version
(:class:`qingliang.platform.lifecycle.data.store.DatasetStore`).

Validation here is pure: no file, glob or environment variable is looked at. Whether the
sources exist and whether ``salt_env`` is set is decided when a version is cut.

Errors inside ``governance`` name the step by its position, as ``loader`` prints them::

    gov.yaml: spec.governance[1].threshold: Input should be less than or equal to 1

Example:
    >>> from qingliang.platform.lifecycle.data.manifest import Dataset
    >>> ds = Dataset.model_validate({
    ...     "apiVersion": "qingliang.io/v1", "kind": "Dataset",
    ...     "metadata": {"name": "gov-sft"},
    ...     "spec": {"format": "instruction", "sources": [{"path": "data/*.jsonl"}]}})
    >>> [s.step for s in ds.spec.governance], ds.spec.split.eval_fraction
    (['schema', 'pii', 'dedup', 'quality'], 0.1)
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from qingliang.platform.errors import did_you_mean
from qingliang.platform.lifecycle.data.dedup import DedupSettings
from qingliang.platform.lifecycle.data.pii import BUILTIN_KINDS, PiiPattern
from qingliang.platform.lifecycle.data.quality import QualitySettings
from qingliang.platform.manifests.base import BaseMetadata, Envelope, Strict

API_VERSION = "qingliang.io/v1"
#: Environment variable names: what ``salt_env`` holds (never the salt itself).
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_GLOB_CHARS = re.compile(r"[*?\[]")

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")
ColumnName = Annotated[str, Field(min_length=1, max_length=256)]
Label = Annotated[str, Field(min_length=1, max_length=128)]


class Metadata(BaseMetadata):
    name: str = Field(description="Dataset name: `qingliang data versions NAME`, fine-tune jobs.")
    description: str = Field(default="", description="Shown in `qingliang data versions`.")


class Columns(Strict):
    """Which field of a row holds what (CSV and Parquet columns, JSONL keys)."""

    messages: ColumnName = Field(
        default="messages",
        description="Chat rows: the list of {role, content} messages (a JSON string in CSV).",
    )
    instruction: ColumnName = Field(default="instruction", description="The task or question.")
    input: ColumnName | None = Field(
        default="input",
        description="Optional context appended to the instruction; a row or file without this "
        "column has none. Null: never read.",
    )
    output: ColumnName = Field(default="output", description="The reference answer.")
    system: ColumnName | None = Field(
        default=None, description="Chat format: a column holding a system prompt (optional)."
    )
    id: ColumnName | None = Field(
        default="id", description="The source's own record id, kept as `metadata.source_id`."
    )
    metadata: list[ColumnName] = Field(
        default_factory=list,
        description="Further columns copied into each record's `metadata` (e.g. `category`).",
    )


class Source(Strict):
    path: str = Field(
        min_length=1,
        description="A file, or a glob (`data/**/*.jsonl`), relative to the manifest's folder.",
    )
    kind: Literal["records", "gateway_logs", "corrections"] = Field(
        default="records",
        description="`records`: training records; `gateway_logs`: a JSONL export of gateway "
        "conversations ({messages, response?, tenant?, model?, ...}); `corrections`: JSONL of "
        "reviewers' corrections ({record_id or messages, output, reviewer}).",
    )
    format: Literal["auto", "jsonl", "csv", "parquet"] = Field(
        default="auto",
        description="File format; `auto` goes by suffix (.jsonl/.ndjson, .csv/.tsv, "
        ".parquet/.pq). gateway_logs and corrections are always JSONL.",
    )
    columns: Columns | None = Field(
        default=None, description="records only: overrides `spec.columns` for this source."
    )
    delimiter: str | None = Field(
        default=None,
        min_length=1,
        max_length=1,
        description="CSV cell separator (default `,`, tab for `.tsv`).",
    )
    encoding: str = Field(
        default="utf-8", min_length=1, description="Text encoding of JSONL / CSV (BOM skipped)."
    )
    tenants: list[Label] = Field(
        default_factory=list,
        description="gateway_logs only: keep conversations of these tenants; empty keeps all.",
    )
    models: list[Label] = Field(
        default_factory=list,
        description="gateway_logs only: keep conversations with these models; empty keeps all.",
    )

    @field_validator("path")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}: use a codec such as utf-8") from None
        return v

    @model_validator(mode="after")
    def _by_kind(self) -> Source:
        if self.kind != "records":
            if self.format not in ("auto", "jsonl"):
                raise ValueError(f"format: a {self.kind} source is JSONL (got {self.format!r})")
            if self.columns is not None:
                raise ValueError(f"columns: applies to records sources, not {self.kind}")
            if self.delimiter is not None:
                raise ValueError(f"delimiter: applies to CSV records, not {self.kind}")
        if self.kind != "gateway_logs" and (self.tenants or self.models):
            raise ValueError("tenants / models filter gateway_logs sources only")
        if self.delimiter is not None and self.format not in ("auto", "csv"):
            raise ValueError(f"delimiter: applies to CSV, not {self.format}")
        if self.delimiter in ('"', "\n", "\r"):
            raise ValueError(f"delimiter: {self.delimiter!r} cannot be a delimiter")
        return self

    @property
    def is_glob(self) -> bool:
        return bool(_GLOB_CHARS.search(self.path))


# --------------------------------------------------------------------- governance steps


class SchemaStep(Strict):
    """Content rules on normalised records; failures go to the quarantine."""

    step: Literal["schema"] = Field(description="Always `schema`.")
    enabled: bool = Field(default=True, description="Off: records are only parsed.")
    roles: tuple[Role, ...] = Field(
        default=ROLES, min_length=1, description="Message roles allowed (chat)."
    )
    require_assistant_last: bool = Field(
        default=True, description="A conversation must end with an assistant message."
    )
    max_messages: int = Field(
        default=200, ge=2, le=10_000, description="Most messages in one conversation."
    )


class PiiPatternSpec(Strict):
    kind: str = Field(description="Name of the pattern, `[a-z][a-z0-9_]*`, not a built-in kind.")
    regex: str = Field(description="Python regular expression (must not match empty text).")
    replacement: str | None = Field(
        default=None, description="What `tag` mode writes (default `[KIND]`)."
    )

    @model_validator(mode="after")
    def _compiles(self) -> PiiPatternSpec:
        PiiPattern(self.kind, self.regex, self.replacement)  # raises ValueError, pure
        return self

    def build(self) -> PiiPattern:
        return PiiPattern(self.kind, self.regex, self.replacement)


class PiiStep(Strict):
    """Detect and redact personal data in every message / field."""

    step: Literal["pii"] = Field(description="Always `pii`.")
    enabled: bool = Field(default=True, description="Off: text is stored as read.")
    kinds: tuple[str, ...] | None = Field(
        default=None,
        description=f"Built-in detectors to run ({', '.join(BUILTIN_KINDS)}); null runs all, "
        "[] runs only `patterns`.",
    )
    patterns: list[PiiPatternSpec] = Field(
        default_factory=list, description="Custom patterns, run after the built-ins."
    )
    mode: Literal["tag", "mask", "hash"] = Field(
        default="tag",
        description="`tag`: `[PHONE]`; `mask`: `138****8000`; `hash`: `[PHONE:<hmac>]` under "
        "the salt named by `salt_env` (one value, one token).",
    )
    salt_env: str | None = Field(
        default=None,
        description="hash mode: NAME of the environment variable holding the salt (the salt "
        "itself never goes in a manifest).",
    )
    roles: tuple[Role, ...] = Field(
        default=ROLES, min_length=1, description="Chat: the roles whose messages are scanned."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("salt", "secret", "key"):
                if key in data:
                    raise ValueError(
                        f"`{key}` is not accepted: never put a secret in a manifest; set "
                        "`salt_env` to the name of an environment variable that holds it"
                    )
        return data

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for k in v or ():
            if k not in BUILTIN_KINDS:
                hint = did_you_mean(k, BUILTIN_KINDS)
                raise ValueError(f"unknown PII kind {k!r}{hint}; known: {', '.join(BUILTIN_KINDS)}")
        return v

    @field_validator("salt_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        # Never echo the value: a user who misread the field may have pasted the salt.
        if v is not None and not ENV_NAME_RE.match(v):
            raise ValueError(
                "must be the NAME of an environment variable (letters, digits and '_'), "
                "not the salt itself"
            )
        return v

    @model_validator(mode="after")
    def _mode(self) -> PiiStep:
        if self.mode == "hash" and self.salt_env is None:
            raise ValueError("mode hash needs `salt_env` (the variable holding the salt)")
        if self.mode != "hash" and self.salt_env is not None:
            raise ValueError("salt_env applies only to mode hash")
        seen: set[str] = set()
        for i, p in enumerate(self.patterns):
            if p.kind in seen:
                raise ValueError(f"patterns[{i}]: kind {p.kind!r} is given twice")
            seen.add(p.kind)
        if self.kinds == () and not self.patterns:
            raise ValueError("kinds is [] and there are no patterns: nothing to detect")
        return self


class DedupStep(DedupSettings):
    """Exact and near-duplicate removal (every setting of `DedupSettings`)."""

    step: Literal["dedup"] = Field(description="Always `dedup`.")
    enabled: bool = Field(default=True, description="Off: duplicates are kept.")
    scope: Literal["conversation", "prompt"] = Field(
        default="conversation",
        description="`conversation`: all messages; `prompt`: all but the assistant's (one "
        "answer per question).",
    )

    def settings(self) -> DedupSettings:
        return DedupSettings(**self.model_dump(include=set(DedupSettings.model_fields)))


class QualityStep(QualitySettings):
    """Rule-based quality filter (every setting of `QualitySettings`)."""

    step: Literal["quality"] = Field(description="Always `quality`.")
    enabled: bool = Field(default=True, description="Off: no record is filtered.")
    scope: Literal["conversation", "prompt", "output"] = Field(
        default="conversation",
        description="Text checked: all messages, the non-assistant ones, or the assistant's.",
    )

    def settings(self) -> QualitySettings:
        return QualitySettings(**self.model_dump(include=set(QualitySettings.model_fields)))


GovernanceStep = SchemaStep | PiiStep | DedupStep | QualityStep
STEPS: dict[str, type[BaseModel]] = {
    "schema": SchemaStep,
    "pii": PiiStep,
    "dedup": DedupStep,
    "quality": QualityStep,
}


def _default_governance() -> list[GovernanceStep]:
    return [
        SchemaStep(step="schema"),
        PiiStep(step="pii"),
        DedupStep(step="dedup"),
        QualityStep(step="quality"),
    ]


class Split(Strict):
    eval_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of records held out for evaluation."
    )
    seed: int = Field(
        default=0, ge=0, description="Mixed into each record's hash; another seed, another split."
    )


class Retention(Strict):
    max_versions: int | None = Field(
        default=None, ge=1, description="Versions kept (newest first); null keeps all."
    )
    max_age_days: float | None = Field(
        default=None, gt=0, description="Versions older than this are removed; null: no limit."
    )


class DatasetSpec(Strict):
    format: Literal["chat", "instruction"] = Field(
        default="chat",
        description='`chat`: {"messages": [{role, content}, ...]}; `instruction`: '
        "{instruction, input?, output}. Every source is converted to it.",
    )
    sources: list[Source] = Field(min_length=1, description="Where records come from.")
    columns: Columns = Field(
        default_factory=Columns, description="Field names in CSV / Parquet / JSONL rows."
    )
    governance: list[GovernanceStep] = Field(
        default_factory=_default_governance,
        description="Steps run in this order; each `{step: NAME, enabled: bool, ...}`.",
    )
    split: Split = Field(default_factory=Split, description="Train / eval split.")
    retention: Retention = Field(default_factory=Retention, description="Which versions stay.")

    @model_validator(mode="before")
    @classmethod
    def _steps(cls, data: Any) -> Any:
        # Each step is validated by the model its `step` names, so an error reads
        # `spec.governance[1].threshold` (not pydantic's union path).
        if not isinstance(data, dict) or not isinstance(data.get("governance"), list):
            return data
        steps: list[BaseModel] = []
        issues: list[str] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(data["governance"]):
            at = f"governance[{i}]"
            if not isinstance(raw, dict):
                issues.append(f"@{at}: must be a mapping with `step`, got {type(raw).__name__}")
                continue
            name = raw.get("step")
            if name is None:
                issues.append(f"@{at}.step: required key is missing; one of {', '.join(STEPS)}")
                continue
            if not isinstance(name, str) or name not in STEPS:
                hint = did_you_mean(str(name), STEPS)
                issues.append(f"@{at}.step: unknown step {name!r}{hint}; known: {', '.join(STEPS)}")
                continue
            if name in seen:
                issues.append(f"@{at}.step: {name!r} is already governance[{seen[name]}]")
                continue
            seen[name] = i
            try:
                steps.append(STEPS[name].model_validate(raw))
            except ValidationError as exc:
                issues.extend(f"@{at}{sub}: {msg}" for sub, msg in _step_issues(STEPS[name], exc))
        if issues:
            raise ValueError("\n".join(issues))
        return {**data, "governance": steps}

    @model_validator(mode="after")
    def _some_records(self) -> DatasetSpec:
        if all(s.kind == "corrections" for s in self.sources):
            raise ValueError(
                "sources: corrections need at least one records or gateway_logs source"
            )
        seen: dict[tuple[str, str], int] = {}
        for i, s in enumerate(self.sources):
            key = (s.kind, s.path)
            if key in seen:
                raise ValueError(f"sources: source {i} repeats source {seen[key]} ({s.path!r})")
            seen[key] = i
        return self

    def step(self, name: str) -> GovernanceStep | None:
        """The governance step called ``name``, or None."""
        return next((s for s in self.governance if s.step == name), None)


class Dataset(Envelope):
    kind: Literal["Dataset"] = Field(description="Always `Dataset`.")
    metadata: Metadata = Field(description="Name, labels and description.")
    spec: DatasetSpec = Field(description="Sources, format, governance, split, retention.")


def _step_issues(model: type[BaseModel], exc: ValidationError) -> list[tuple[str, str]]:
    """(``.field[i]`` path, message) per error, worded like the manifest loader's."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        sub = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if loc:
            msg = msg.removeprefix(f"{loc[-1]}: ")  # the settings' messages repeat the field
        if err["type"] == "extra_forbidden":
            allowed = sorted(
                info.alias or n for n, info in _model_at(model, loc[:-1]).model_fields.items()
            )
            msg = "unknown key" + did_you_mean(str(loc[-1]), allowed)
            msg += f"; allowed here: {', '.join(allowed)}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "literal_error":
            msg = f"{err.get('input')!r} is not allowed: {msg[0].lower()}{msg[1:]}"
        out.append((sub, msg))
    return out


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(str(part))
        if info is None:
            return current
        ann = info.annotation
        inner = next(
            (
                a
                for a in (ann, *getattr(ann, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if inner is None:
            # list[Model]: one level further down
            for a in getattr(ann, "__args__", ()):
                inner = next(
                    (
                        b
                        for b in getattr(a, "__args__", (a,))
                        if isinstance(b, type) and issubclass(b, BaseModel)
                    ),
                    None,
                )
                if inner:
                    break
        if inner is None:
            return current
        current = inner
    return current
