"""Fine-tuning settings and errors: plain frozen dataclasses, checked without any I/O.

Importing this module loads neither torch nor transformers, so a manifest layer can
build and check settings cheaply. LoRA and QLoRA differ only in
:attr:`TrainSettings.method`; everything else is shared by the one training loop in
:mod:`qingliang.platform.lifecycle.finetune.train`.

Errors::

    BadRequest (qingliang.platform.errors)
    └── InvalidFineTune        a setting, record or path is unusable (lists every issue)
    QingliangError
    └── FineTuneFailed         training started but could not go on (e.g. loss became NaN)

Example:
    >>> from qingliang.platform.lifecycle.finetune.settings import LoraSettings, TrainSettings
    >>> TrainSettings(method="qlora", max_steps=10, lora=LoraSettings(r=4)).lora.alpha
    16
    >>> try:
    ...     TrainSettings(batch_size=0)
    ... except InvalidFineTune as exc:
    ...     print(exc.param, "|", exc)
    train.batch_size | train.batch_size: must be an integer from 1 to 1024, got 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from qingliang.platform.errors import BadRequest, FieldIssue, QingliangError

Method = Literal["lora", "qlora"]
Schedule = Literal["linear", "cosine", "constant"]
Device = Literal["auto", "cpu", "cuda"]

METHODS: tuple[str, ...] = ("lora", "qlora")
SCHEDULES: tuple[str, ...] = ("linear", "cosine", "constant")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

#: ``target_modules`` value that selects every linear layer except the output head.
ALL_LINEAR = "all-linear"


class InvalidFineTune(BadRequest):
    """A fine-tuning request that cannot run; ``issues`` names every bad field.

    ``param`` (the OpenAI error field) is the first bad field's path.
    """

    def __init__(self, issues: list[FieldIssue]) -> None:
        self.issues = list(issues)
        super().__init__(
            "\n".join(i.render(None) for i in self.issues),
            param=self.issues[0].path if self.issues else None,
        )


class FineTuneFailed(QingliangError):
    """Training started but could not continue (non-finite loss, device failure)."""


def invalid(path: str, message: str) -> InvalidFineTune:
    """One-issue :class:`InvalidFineTune`."""
    return InvalidFineTune([FieldIssue(path, message)])


def _int_in(issues: list[FieldIssue], path: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        issues.append(FieldIssue(path, f"must be an integer from {lo} to {hi}, got {value!r}"))


def _float_in(
    issues: list[FieldIssue],
    path: str,
    value: object,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > lo if lo_open else value >= lo)
        and (value < hi if hi_open else value <= hi)
    )
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        issues.append(FieldIssue(path, f"must be a number in {lb}{lo}, {hi}{rb}, got {value!r}"))


def _choice(issues: list[FieldIssue], path: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        issues.append(FieldIssue(path, f"must be one of {', '.join(choices)}; got {value!r}"))


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter's shape.

    Attributes:
        r: rank of the low-rank update (1-1024; also at most the smallest dimension of a
            targeted layer, checked against the model by ``preflight``).
        alpha: scaling numerator; the update is scaled by ``alpha / r``.
        dropout: dropout on the adapter's input, in [0, 1).
        target_modules: module-name suffixes to adapt (``"q_proj"`` matches
            ``model.layers.0.self_attn.q_proj``), or ``("all-linear",)``.

    Example:
        >>> LoraSettings(r=8, target_modules=["q_proj", "v_proj"]).target_modules
        ('q_proj', 'v_proj')
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list | str):
            value = self.target_modules
            object.__setattr__(
                self, "target_modules", (value,) if isinstance(value, str) else tuple(value)
            )
        issues = self.issues("lora")
        if issues:
            raise InvalidFineTune(issues)

    def issues(self, prefix: str) -> list[FieldIssue]:
        """Every problem with these values, paths under ``prefix`` (pure)."""
        out: list[FieldIssue] = []
        _int_in(out, f"{prefix}.r", self.r, 1, 1024)
        _float_in(out, f"{prefix}.alpha", self.alpha, 0, 1e6, lo_open=True)
        _float_in(out, f"{prefix}.dropout", self.dropout, 0.0, 1.0, hi_open=True)
        mods = self.target_modules
        if not isinstance(mods, tuple) or not mods:
            out.append(FieldIssue(f"{prefix}.target_modules", "must list at least one module"))
        else:
            for i, m in enumerate(mods):
                if not isinstance(m, str) or not m.strip() or m != m.strip():
                    out.append(
                        FieldIssue(f"{prefix}.target_modules[{i}]", f"bad module name {m!r}")
                    )
            if ALL_LINEAR in mods and len(mods) > 1:
                out.append(
                    FieldIssue(f"{prefix}.target_modules", f"{ALL_LINEAR!r} must stand alone")
                )
        return out


@dataclass(frozen=True)
class TrainSettings:
    """How to train. ``method`` is the only difference between LoRA and QLoRA.

    Attributes:
        method: ``"lora"`` trains on the base in fp32 (CPU) / bf16 (GPU); ``"qlora"``
            loads the base 4-bit NF4 with double quantisation (bitsandbytes) and
            prepares it with ``peft.prepare_model_for_kbit_training``.
        learning_rate: peak AdamW learning rate, in (0, 1].
        epochs: passes over the data, unless ``max_steps`` is set.
        max_steps: total optimizer steps; when set it overrides ``epochs`` (the data
            is cycled as often as needed), as in transformers' ``TrainingArguments``.
        batch_size: records per micro-batch (padded to the batch's longest record).
        grad_accum: micro-batches per optimizer step.
        max_seq_len: tokens kept per record (longer records are cut at the end; a
            record left with no answer token is skipped and counted).
        warmup_ratio: share of the steps with a linear warm-up, in [0, 1).
        weight_decay: AdamW weight decay, in [0, 1].
        seed: seeds the adapter's initialisation, dropout and the data order.
        eval_every: evaluate every N optimizer steps (0: only after the last step);
            needs ``eval_records``.
        lr_schedule: decay after warm-up: ``linear`` or ``cosine`` to 0, or ``constant``.
        max_grad_norm: gradient clipping norm (``None``: no clipping).
        gradient_checkpointing: recompute activations in the backward pass (less
            memory, ~30 % slower).
        checkpoint_every: also save a resumable checkpoint every N steps (0: only
            when stopped); see ``train(resume=True)``.
        device: ``auto`` picks CUDA when available, else the CPU.

    Example:
        >>> TrainSettings(learning_rate=1e-3, max_steps=20).method
        'lora'
    """

    method: Method = "lora"
    learning_rate: float = 2e-4
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 512
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 0
    lr_schedule: Schedule = "linear"
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0
    device: Device = "auto"
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        issues = self.issues("train")
        if issues:
            raise InvalidFineTune(issues)

    def issues(self, prefix: str) -> list[FieldIssue]:
        """Every problem with these values, paths under ``prefix`` (pure)."""
        out: list[FieldIssue] = []
        p = prefix
        _choice(out, f"{p}.method", self.method, METHODS)
        _float_in(out, f"{p}.learning_rate", self.learning_rate, 0.0, 1.0, lo_open=True)
        _int_in(out, f"{p}.epochs", self.epochs, 1, 10_000)
        if self.max_steps is not None:
            _int_in(out, f"{p}.max_steps", self.max_steps, 1, 10_000_000)
        _int_in(out, f"{p}.batch_size", self.batch_size, 1, 1024)
        _int_in(out, f"{p}.grad_accum", self.grad_accum, 1, 1024)
        _int_in(out, f"{p}.max_seq_len", self.max_seq_len, 8, 1_048_576)
        _float_in(out, f"{p}.warmup_ratio", self.warmup_ratio, 0.0, 1.0, hi_open=True)
        _float_in(out, f"{p}.weight_decay", self.weight_decay, 0.0, 1.0)
        _int_in(out, f"{p}.seed", self.seed, 0, 2**32 - 1)
        _int_in(out, f"{p}.eval_every", self.eval_every, 0, 10_000_000)
        _choice(out, f"{p}.lr_schedule", self.lr_schedule, SCHEDULES)
        if self.max_grad_norm is not None:
            _float_in(out, f"{p}.max_grad_norm", self.max_grad_norm, 0.0, 1e6, lo_open=True)
        if not isinstance(self.gradient_checkpointing, bool):
            out.append(FieldIssue(f"{p}.gradient_checkpointing", "must be true or false"))
        _int_in(out, f"{p}.checkpoint_every", self.checkpoint_every, 0, 10_000_000)
        _choice(out, f"{p}.device", self.device, DEVICES)
        if not isinstance(self.lora, LoraSettings):
            out.append(FieldIssue(f"{p}.lora", "must be a LoraSettings"))
        return out
