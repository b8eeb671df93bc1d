"""The ``Pipeline`` manifest kind: data → adapter → approval → canary → service, as steps.

A pipeline is an ordered list of typed steps. ``qingliang pipelines run`` compiles it
into a durable LangGraph graph (:mod:`qingliang.platform.lifecycle.pipelines.service`), one node
per step, each run as a Ray task:

``govern``    cut a version of a ``Dataset`` manifest (PII, dedup, quality; see docs/data.md)
``finetune``  train a ``FineTuneJob`` on that version; registers the adapter ``name@N``
``evaluate``  score adapter and base on the held-out split; ``thresholds`` gate the rest
``merge``     merge the adapter into its base (a standalone model, registered as merged from
              the adapter) and optionally save a 4-bit NF4 copy of it
``approval``  wait for a person (``qingliang pipelines approve``); approving marks the
              adapter ``approved`` in the registry
``canary``    load the adapter into a deployment and give it ``share`` of its traffic
``promote``   after an approval (``mode: approval``), or once the canary has held
              ``hold_s`` and its served requests pass ``analysis`` (``mode: auto``), give
              the adapter the whole share and unload the version it replaces; a rejection
              or a failed analysis rolls the canary back

Validation is pure and checks the order as a whole (a canary needs an approved adapter,
so an ``approval`` before it; ``evaluate`` needs a ``finetune`` before it, …). Files named
by ``dataset`` / ``job`` are read when the run starts.

Example:
    >>> p = Pipeline.model_validate({
    ...     "apiVersion": "qingliang.io/v1", "kind": "Pipeline",
    ...     "metadata": {"name": "gov-desk"},
    ...     "spec": {"steps": [
    ...         {"type": "govern", "dataset": "dataset-gov.yaml"},
    ...         {"type": "finetune", "job": "finetune-gov.yaml"},
    ...         {"type": "evaluate", "thresholds": {"rouge_l": 0.2}},
    ...         {"type": "approval"},
    ...         {"type": "canary", "deployment": "gov-chat", "share": 0.1},
    ...         {"type": "promote"}]}})
    >>> [s.name for s in p.spec.steps]
    ['govern', 'finetune', 'evaluate', 'approval', 'canary', 'promote']
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from qingliang.agents.manifest import Checkpointer
from qingliang.platform.manifests.base import BaseMetadata, Envelope, Strict, valid_name
from qingliang.serving.manifest import ADAPTER_RE

STEP_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
METRICS = ("exact_match", "rouge_l", "rules")


class Metadata(BaseMetadata):
    name: str = Field(description="Pipeline name: `qingliang pipelines status` lists runs by it.")
    description: str = Field(default="", description="Free text, shown with the runs.")


class _Step(Strict):
    name: str = Field(default="", description="Step name, unique in the pipeline (default: type).")

    @field_validator("name")
    @classmethod
    def _step_name(cls, v: str) -> str:
        if v and not STEP_NAME_RE.match(v):
            raise ValueError(
                f"{v!r} is not a step name: a lower-case letter, then up to 31 letters, "
                "digits, '_' or '-'"
            )
        return v


def _manifest_path(v: str) -> str:
    if not v.strip() or not v.endswith((".yaml", ".yml")):
        raise ValueError(f"{v!r} is not a manifest file (.yaml / .yml)")
    return v


class GovernStep(_Step):
    type: Literal["govern"] = Field(description="Cut a dataset version.")
    dataset: str = Field(
        description="A Dataset manifest file (relative paths start at the pipeline's folder)."
    )

    @field_validator("dataset")
    @classmethod
    def _path(cls, v: str) -> str:
        return _manifest_path(v)


class FinetuneStep(_Step):
    type: Literal["finetune"] = Field(description="Train an adapter.")
    job: str = Field(
        description="A FineTuneJob manifest file. After a `govern` step the job trains on the "
        "version that step cut, which must be of the same dataset."
    )
    cpus: float | None = Field(
        default=None, gt=0, description="CPUs for the Ray task (default: the job's)."
    )

    @field_validator("job")
    @classmethod
    def _path(cls, v: str) -> str:
        return _manifest_path(v)


class EvaluateStep(_Step):
    type: Literal["evaluate"] = Field(description="Score adapter and base on held-out data.")
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Minimum adapter score per metric (exact_match, rouge_l, rules); "
        "a miss stops the pipeline as `gated`.",
    )
    beat_base: list[str] = Field(
        default_factory=list,
        description="Metrics on which the adapter must score at least the base model.",
    )
    max_records: int = Field(default=32, ge=1, le=10_000, description="Held-out records scored.")
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Answer length cap.")

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        for metric, value in v.items():
            if metric not in METRICS:
                raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{metric}: threshold must be in [0, 1], got {value}")
        return v

    @field_validator("beat_base")
    @classmethod
    def _beat(cls, v: list[str]) -> list[str]:
        for metric in v:
            if metric not in METRICS:
                raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        return v


class MergeStep(_Step):
    type: Literal["merge"] = Field(description="Merge the adapter into its base model.")
    quantize: Literal["none", "bnb-nf4"] = Field(
        default="none",
        description="`bnb-nf4`: also save a 4-bit NF4 copy (bitsandbytes, double "
        "quantisation), registered as a quantised artifact; the transformers engine serves "
        "it (vLLM's CPU build rejects bitsandbytes).",
    )


#: Who may approve: by default not the one who started the run.
_SELF_APPROVAL = (
    "Whether the one who started the run (the same API key, or the same user at the "
    "command line) may approve it; by default someone else must."
)


class ApprovalStep(_Step):
    type: Literal["approval"] = Field(description="Wait for a person to approve or reject.")
    message: str = Field(default="", description="Shown to the approver.")
    allow_self_approval: bool = Field(default=False, description=_SELF_APPROVAL)


class CanaryStep(_Step):
    type: Literal["canary"] = Field(description="Give the adapter a share of a deployment.")
    deployment: str = Field(description="An applied ModelDeployment with LoRA enabled.")
    share: float = Field(
        gt=0,
        lt=1,
        description="Share of the deployment's traffic for the new adapter: of the traffic "
        "the adapter's previous version had, or of the base model's when it had none.",
    )
    alias: str | None = Field(
        default=None,
        description="Canary within an alias (`spec.lora.aliases`): the requests that name "
        '`model="<deployment>:<alias>"` are split between the adapters the alias sends '
        "them to and the new one, and promote points the alias at the new one. For adapters "
        "that clients and agents call by name (e.g. one per domain on a shared base model); "
        "unset: the bare deployment's canary traffic.",
    )

    @field_validator("deployment")
    @classmethod
    def _dep(cls, v: str) -> str:
        return valid_name(v)

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str | None) -> str | None:
        if v is not None and not ADAPTER_RE.match(v):
            raise ValueError(
                f"alias {v!r} is invalid: 1-64 letters, digits, '.', '_' or '-', no ':'"
            )
        return v


class CanaryAnalysis(Strict):
    min_requests: int = Field(
        default=20,
        ge=0,
        le=1_000_000,
        description="Requests the canary must have answered or failed before it is judged; "
        "0 promotes after `hold_s` without looking.",
    )
    max_error_rate: float = Field(
        default=0.05, ge=0, le=1, description="Highest share of server errors on the canary."
    )
    max_error_rate_increase: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="How far the canary's error rate may exceed the baseline's (the "
        "versions it replaces, or the base model), when the baseline has `min_requests`.",
    )
    max_latency_ratio: float | None = Field(
        default=None,
        gt=0,
        description="Highest canary mean latency as a multiple of the baseline's "
        "(unset: latency is reported, not judged).",
    )
    max_wait_s: float = Field(
        default=3600,
        ge=0,
        le=7 * 86400,
        description="Roll back as inconclusive when the canary has not had `min_requests` "
        "this many seconds after it started.",
    )
    interval_s: float = Field(
        default=10, gt=0, le=3600, description="How often the figures are read."
    )


class PromoteStep(_Step):
    type: Literal["promote"] = Field(description="Make the canary the served version.")
    mode: Literal["approval", "auto"] = Field(
        default="approval",
        description="`approval`: wait for `pipelines approve` (reject rolls back); `auto`: "
        "promote when the canary has held `hold_s` and passes `analysis`, roll back when "
        "it fails it.",
    )
    hold_s: float = Field(
        default=0,
        ge=0,
        le=7 * 86400,
        description="auto: the least time, from the canary's start, before promotion.",
    )
    analysis: CanaryAnalysis = Field(
        default_factory=CanaryAnalysis,
        description="auto: what the canary must show, against its baseline, to be promoted.",
    )
    allow_self_approval: bool = Field(default=False, description="approval: " + _SELF_APPROVAL)

    @model_validator(mode="after")
    def _auto_only(self) -> PromoteStep:
        # Compared with the defaults, not the fields given: a stored run's manifest is
        # dumped with every default written out.
        extra = [
            name
            for name, given, default in (
                ("analysis", self.analysis, CanaryAnalysis()),
                ("hold_s", self.hold_s, 0),
            )
            if given != default
        ]
        if self.mode == "approval" and extra:
            raise ValueError(
                f"{' and '.join(extra)} apply to `mode: auto`; with `mode: approval` a person "
                "decides (the canary's figures are shown to them)"
            )
        return self


Step = Annotated[
    GovernStep | FinetuneStep | EvaluateStep | MergeStep | ApprovalStep | CanaryStep | PromoteStep,
    Field(discriminator="type"),
]


class PipelineSpec(Strict):
    steps: list[Step] = Field(min_length=1, description="The steps, run in this order.")
    checkpointer: Checkpointer = Field(
        default_factory=Checkpointer,
        description="Where the run's state is kept: SQLite in the data directory or "
        "PostgreSQL (`dsn_env`).",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("steps"), list):
            steps = []
            for s in data["steps"]:
                if isinstance(s, dict) and not s.get("name") and isinstance(s.get("type"), str):
                    s = {**s, "name": s["type"]}
                steps.append(s)
            data = {**data, "steps": steps}
        return data

    @model_validator(mode="after")
    def _order(self) -> PipelineSpec:
        problems = []
        seen: dict[str, int] = {}
        kinds: list[str] = []
        for i, step in enumerate(self.steps):
            if step.name in seen:
                problems.append(f"@steps.{i}.name: {step.name!r} is already step {seen[step.name]}")
            seen[step.name] = i
            need = {
                "evaluate": ("finetune",),
                "merge": ("finetune",),
                "approval": ("finetune",),
                "canary": ("finetune", "approval"),
                "promote": ("canary",),
            }.get(step.type, ())
            for kind in need:
                if kind not in kinds:
                    problems.append(f"@steps.{i}: a {step.type} step needs a {kind} step before it")
            if step.type == "finetune" and "finetune" in kinds:
                problems.append(f"@steps.{i}: one finetune step per pipeline")
            if step.type == "govern" and "finetune" in kinds:
                problems.append(f"@steps.{i}: govern must come before finetune")
            if step.type in ("canary", "promote", "merge") and step.type in kinds:
                problems.append(f"@steps.{i}: one {step.type} step per pipeline")
            kinds.append(step.type)
        if problems:
            raise ValueError("\n".join(problems))
        return self


class Pipeline(Envelope):
    kind: Literal["Pipeline"] = Field(description="Always Pipeline.")
    metadata: Metadata = Field(description="Name, labels and description.")
    spec: PipelineSpec = Field(description="The steps and where run state is kept.")
