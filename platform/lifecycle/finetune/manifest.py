"""The ``FineTuneJob`` manifest kind: train a LoRA / QLoRA adapter on a dataset version.

A job names its base model, a governed dataset (a ``Dataset`` that has been cut: the
latest version, or one by id), the method (``lora`` or ``qlora``: the one training loop,
different settings), the LoRA shape and the hyper-parameters, and the adapter name its
output is registered under. ``qingliang finetune run job.yaml`` runs it as a Ray task
(:mod:`qingliang.platform.lifecycle.finetune.job`); a ``Pipeline`` runs it as one of its steps.

Validation is pure: the settings are checked by the same code the training loop uses
(:class:`~qingliang.platform.lifecycle.finetune.settings.TrainSettings`), so a rank that is out of
range fails here with its path, before any file or model is looked at. Whether the base
model exists, whether the target modules are in it and whether the rank fits its layers
is checked by ``preflight`` before the weights load.

Example:
    >>> job = FineTuneJob.model_validate({
    ...     "apiVersion": "qingliang.io/v1", "kind": "FineTuneJob",
    ...     "metadata": {"name": "hotline-lora"},
    ...     "spec": {"base_model": {"source": "packaged:qwen2.5-coder-0.5b-instruct"},
    ...              "method": "qlora", "data": {"dataset": "gov-hotline"},
    ...              "output": {"adapter": "hotline"}}})
    >>> job.settings().method, job.settings().lora.r
    ('qlora', 8)
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from qingliang.platform.lifecycle.finetune.settings import (
    ALL_LINEAR,
    InvalidFineTune,
    LoraSettings,
    TrainSettings,
)
from qingliang.platform.manifests.base import BaseMetadata, Envelope, Strict, valid_name

API_VERSION = "qingliang.io/v1"
#: Registry names: letters, digits, '.', '_', '-' (no '@', ':' or '/').
REGISTRY_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")
#: Adapter names as a deployment loads them: ``<adapter>-v<version>`` must stay a valid
#: deployment adapter name, so the adapter name is kept shorter.
ADAPTER_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?\Z")
VERSION_RE = re.compile(r"^(latest|(sha256:)?[0-9a-f]{6,64})\Z")


class Metadata(BaseMetadata):
    name: str = Field(description="Job name; registry job names are `<name>-<n>`.")
    description: str = Field(default="", description="Free text, shown by `finetune status`.")


class BaseModelRef(Strict):
    source: str = Field(
        description="`packaged:<name>`, a local Hugging Face directory (relative paths start "
        "at the manifest's folder) or `hub:<org>/<repo>`; same forms as a ModelDeployment.",
        min_length=1,
    )
    name: str | None = Field(
        default=None,
        description="Registry name of the base model (default: derived from the source).",
    )

    @field_validator("name")
    @classmethod
    def _registry_name(cls, v: str | None) -> str | None:
        if v is not None and not REGISTRY_NAME_RE.match(v):
            raise ValueError(
                f"{v!r} is not a registry name: 1-128 letters, digits, '.', '_' or '-'"
            )
        return v


class DataRef(Strict):
    dataset: str = Field(description="A Dataset that has been applied (cut) at least once.")
    version: str = Field(
        default="latest",
        description="`latest` or a version id (`sha256:<hex>` or a unique hex prefix).",
    )
    max_train_records: int | None = Field(
        default=None, ge=1, description="Use only the first N training records."
    )
    max_eval_records: int = Field(
        default=64, ge=0, description="Held-out records used for evaluation (0: none)."
    )

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return valid_name(v)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not VERSION_RE.match(v):
            raise ValueError(f"{v!r}: use `latest` or a version id such as sha256:9f86d08…")
        return v


class LoraOptions(Strict):
    r: int = Field(default=8, ge=1, le=1024, description="Rank of the low-rank update.")
    alpha: int = Field(default=16, gt=0, description="Scaling numerator (update × alpha / r).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description=f"Module-name suffixes to adapt, or [{ALL_LINEAR}].",
    )


class TrainOptions(Strict):
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak AdamW rate.")
    epochs: int = Field(default=1, ge=1, le=10_000, description="Passes over the data.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Optimizer steps; overrides `epochs` when set."
    )
    batch_size: int = Field(default=4, ge=1, le=1024, description="Records per micro-batch.")
    grad_accum: int = Field(default=1, ge=1, le=1024, description="Micro-batches per step.")
    max_seq_len: int = Field(default=512, ge=8, description="Tokens kept per record.")
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="Share of warm-up steps.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    seed: int = Field(default=0, ge=0, description="Seeds initialisation and data order.")
    eval_every: int = Field(default=0, ge=0, description="Eval loss every N steps (0: at end).")
    lr_schedule: Literal["linear", "cosine", "constant"] = Field(
        default="linear", description="Decay after warm-up."
    )
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="Gradient clipping.")
    gradient_checkpointing: bool = Field(default=False, description="Less memory, slower.")
    checkpoint_every: int = Field(
        default=10,
        ge=0,
        description="Save a resumable checkpoint every N steps: a job (or pipeline) killed "
        "mid-training resumes from the last one (0: only when stopped).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="`auto`: CUDA when present, else the CPU."
    )


class EvaluateOptions(Strict):
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Answer length cap.")
    must_match: list[str] = Field(
        default_factory=list, description="Regexes every good answer matches (rule checks)."
    )
    must_not_match: list[str] = Field(
        default_factory=list, description="Regexes no good answer matches (rule checks)."
    )

    @field_validator("must_match", "must_not_match")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regex: {exc}") from None
        return v


class Output(Strict):
    adapter: str = Field(
        description="Registry name of the adapter; each run registers the next version "
        "(`<adapter>@1`, `@2`, …) and deployments load it as `<adapter>-v<N>`."
    )

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, v: str) -> str:
        if not ADAPTER_NAME_RE.match(v):
            raise ValueError(
                f"{v!r} is not a valid adapter name: 1-48 lower-case letters, digits and '-', "
                "starting and ending with a letter or digit"
            )
        return v


class Resources(Strict):
    cpus: float = Field(default=1, gt=0, description="CPUs reserved for the Ray task.")
    gpus: float = Field(default=0, ge=0, description="GPUs reserved for the Ray task.")


class FineTuneJobSpec(Strict):
    base_model: BaseModelRef = Field(description="The model the adapter is trained on.")
    method: Literal["lora", "qlora"] = Field(
        default="lora",
        description="`lora` (16/32-bit base) or `qlora` (4-bit NF4 base, bitsandbytes).",
    )
    lora: LoraOptions = Field(default_factory=LoraOptions, description="Adapter shape.")
    train: TrainOptions = Field(default_factory=TrainOptions, description="Hyper-parameters.")
    data: DataRef = Field(description="The governed dataset version to train on.")
    evaluate: EvaluateOptions = Field(
        default_factory=EvaluateOptions, description="How the held-out split is scored."
    )
    output: Output = Field(description="Where the result is registered.")
    resources: Resources = Field(default_factory=Resources, description="Ray resources.")


class FineTuneJob(Envelope):
    kind: Literal["FineTuneJob"] = Field(description="Always FineTuneJob.")
    metadata: Metadata = Field(description="Name and labels.")
    spec: FineTuneJobSpec = Field(description="What to train, on what, into what.")

    @model_validator(mode="after")
    def _settings(self) -> FineTuneJob:
        try:
            self.settings()
        except InvalidFineTune as exc:
            raise ValueError("; ".join(i.render(None) for i in exc.issues)) from None
        return self

    def settings(self) -> TrainSettings:
        """The training loop's settings (pure; raises InvalidFineTune)."""
        s = self.spec
        return TrainSettings(
            method=s.method,
            lora=LoraSettings(
                r=s.lora.r,
                alpha=s.lora.alpha,
                dropout=s.lora.dropout,
                target_modules=tuple(s.lora.target_modules),
            ),
            **s.train.model_dump(),
        )
