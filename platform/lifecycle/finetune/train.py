"""One LoRA / QLoRA training loop, shared by both methods.

:func:`preflight` checks a request before any weight is loaded: the settings, every
record, the base model directory (config and layer names, read from ``config.json``
and built on the meta device), the targeted layers and the rank, bitsandbytes for
``qlora``, and the output directory. :func:`train` then loads the base model the
method asks for, trains the adapter with AdamW on the assistant tokens, and writes
the adapter (``save_pretrained``) and ``metrics.json`` into the output directory.

The methods differ only in how the base model is loaded (see
:class:`~qingliang.platform.lifecycle.finetune.settings.TrainSettings.method`); the loop, the
loss, the schedule and the outputs are the same code.

Nothing is written to the output directory until the first adapter is saved (at the
end, or when ``should_stop()`` returns true), so a rejected or failed request leaves
no trace. A stopped run also leaves ``checkpoint/`` (adapter, optimizer, schedule and
random state) from which ``train(..., resume=True)`` continues with the same result as
an uninterrupted run; ``checkpoint_every`` writes it periodically too.

Example:
    >>> from qingliang.platform.lifecycle.finetune.train import LoraSettings, TrainSettings, train
    >>> records = [{"instruction": "Capital of France?", "output": "Paris."}] * 8
    >>> result = train("/models/tiny", records, "/tmp/adapter",  # doctest: +SKIP
    ...                TrainSettings(method="qlora", max_steps=4, lora=LoraSettings(r=4)))
    >>> result.train_loss[-1] < result.train_loss[0]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qingliang.platform.lifecycle.finetune import _checkpoint, _data, _model, _steps
from qingliang.platform.lifecycle.finetune.settings import (
    FineTuneFailed,
    InvalidFineTune,
    LoraSettings,
    TrainSettings,
    invalid,
)

__all__ = [
    "FineTuneFailed",
    "FineTunePlan",
    "InvalidFineTune",
    "LoraSettings",
    "ProgressCallback",
    "TrainResult",
    "TrainSettings",
    "peak_rss_mb",
    "preflight",
    "train",
]

logger = logging.getLogger(__name__)

#: Receives one dict per optimizer step (``kind="train"``: step, total_steps, epoch,
#: loss, learning_rate, tokens_per_s, elapsed_s, peak_rss_mb) and one per evaluation
#: (``kind="eval"``: step, total_steps, epoch, eval_loss, elapsed_s, peak_rss_mb).
ProgressCallback = Callable[[dict[str, Any]], None]

METRICS_FILE = "metrics.json"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB.

    ``VmHWM`` from ``/proc/self/status``, not ``ru_maxrss``: Linux keeps ``ru_maxrss``
    across ``execve``, so a worker started from a large parent (a Ray worker, a spawned
    process) would report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(frozen=True)
class FineTunePlan:
    """A checked request: what :func:`train` will do, decided before loading weights."""

    base_model: Path
    output_dir: Path
    settings: TrainSettings
    target_modules: tuple[str, ...]
    targeted_layers: int
    device: str
    train: tuple[_data.Conversation, ...]
    eval: tuple[_data.Conversation, ...]
    data_sha256: str
    resume_step: int = 0


@dataclass(frozen=True)
class TrainResult:
    """What a run produced. ``adapter_dir`` is None only when it stopped before step 1."""

    output_dir: Path
    adapter_dir: Path | None
    metrics_path: Path | None
    steps: int
    total_steps: int
    stopped: bool
    train_loss: tuple[float, ...]
    eval_loss: tuple[tuple[int, float], ...]
    final_eval_loss: float | None
    train_time_s: float
    peak_rss_mb: float
    data_sha256: str
    metrics: Mapping[str, Any] = field(default_factory=dict)


def preflight(
    base_model: str | Path,
    train_records: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    settings: TrainSettings,
    *,
    eval_records: Sequence[Mapping[str, Any]] = (),
    data_sha256: str | None = None,
    resume: bool = False,
) -> FineTunePlan:
    """Check everything that can be checked without loading weights; write nothing.

    Raises:
        InvalidFineTune: naming the bad field (``train.batch_size``, ``lora.r``,
            ``lora.target_modules[1]``, ``base_model``, ``output_dir``,
            ``train_records[3].messages[0].role``, ...).
    """
    if not isinstance(settings, TrainSettings):
        raise invalid("settings", "must be a TrainSettings")
    s = settings
    train_convs = _data.parse_records(train_records, "train_records")
    eval_convs = _data.parse_records(eval_records, "eval_records") if eval_records else []
    if s.eval_every and not eval_convs:
        raise invalid("train.eval_every", "is set but no eval_records were given")
    sha = data_sha256 or _data.data_sha256(train_records)

    base = Path(base_model).expanduser()
    _model.check_model_dir(base)
    out = Path(output_dir).expanduser()
    resume_step = _checkpoint.check_output_dir(out, resume, base, s, sha)

    layers = _model.linear_layers(base)
    names, selected = _model.resolve_targets(layers, s.lora.target_modules, s.lora.r)
    device = _model.resolve_device(s.device)
    if s.method == "qlora":
        problem = _model.bnb_problem(device)
        if problem:
            raise invalid("train.method", f"qlora needs bitsandbytes 4-bit here: {problem}")
    return FineTunePlan(
        base_model=base,
        output_dir=out,
        settings=s,
        target_modules=names,
        targeted_layers=len(selected),
        device=device,
        train=tuple(train_convs),
        eval=tuple(eval_convs),
        data_sha256=sha,
        resume_step=resume_step,
    )


def train(
    base_model: str | Path,
    train_records: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    settings: TrainSettings | None = None,
    *,
    eval_records: Sequence[Mapping[str, Any]] = (),
    data_sha256: str | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a LoRA adapter on ``train_records`` and save it into ``output_dir``.

    Args:
        base_model: a local Hugging Face model directory.
        train_records: chat or instruction records (see :mod:`._data`).
        output_dir: must be missing or empty, unless ``resume``; receives the adapter
            (``adapter_config.json``, ``adapter_model.safetensors``) and ``metrics.json``.
        settings: method, schedule and LoRA shape (default ``TrainSettings()``).
        eval_records: held-out records for the evaluation loss.
        data_sha256: the caller's content hash of the training data, recorded in
            ``metrics.json``; by default the sha256 of the records as JSON lines.
        on_progress: see :data:`ProgressCallback`.
        should_stop: polled before every optimizer step; when it returns true the
            adapter of the last completed step is saved and the run ends cleanly.
        resume: continue from ``output_dir/checkpoint`` when it exists.

    Raises:
        InvalidFineTune: the request is unusable (nothing was written).
        FineTuneFailed: the loss became non-finite (nothing was written but the
            periodic checkpoints of ``checkpoint_every``).
    """
    plan = preflight(
        base_model,
        train_records,
        output_dir,
        settings or TrainSettings(),
        eval_records=eval_records,
        data_sha256=data_sha256,
        resume=resume,
    )
    return _Run(plan, on_progress, should_stop).run()


class _Run:
    """One training run of a checked plan (state shared by the loop's steps)."""

    def __init__(
        self,
        plan: FineTunePlan,
        on_progress: ProgressCallback | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.plan = plan
        self.s = plan.settings
        self.on_progress = on_progress
        self.should_stop = should_stop or (lambda: False)
        self.history: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []
        self.prior_elapsed = 0.0
        self.loop_start = time.perf_counter()

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_progress is not None:
            self.on_progress(event)

    def run(self) -> TrainResult:
        p, s = self.plan, self.s
        started = time.perf_counter()
        examples, eval_examples, skipped, pad_id = self._tokenize()
        per_epoch = _data.steps_per_epoch(len(examples), s.batch_size, s.grad_accum)
        total = s.max_steps or s.epochs * per_epoch
        logger.info(
            "fine-tuning %s (%s, r=%d, %d layers) on %s: %d records, %d steps",
            p.base_model.name,
            s.method,
            s.lora.r,
            p.targeted_layers,
            p.device,
            len(examples),
            total,
        )
        done = self._build(total)
        train_batches = _steps.Batches(examples, pad_id, p.device)
        eval_batches = _steps.Batches(eval_examples, pad_id, p.device)
        load_s = time.perf_counter() - started
        self.loop_start = time.perf_counter()

        stopped = False
        epoch = 0.0
        for window in _data.windows(len(examples), s.batch_size, s.grad_accum, total, s.seed):
            if window.step <= done:
                epoch = window.epoch
                continue
            if self.should_stop():
                stopped = True
                break
            self._step(window, train_batches, total)
            done, epoch = window.step, window.epoch
            last = done == total
            if eval_examples and (last or (s.eval_every and done % s.eval_every == 0)):
                self._evaluate(eval_batches, done, total, epoch, self._elapsed())
            if s.checkpoint_every and done % s.checkpoint_every == 0 and not last:
                self._save_checkpoint(done, self._elapsed())
        return self._finish(done, total, stopped, load_s, skipped, len(examples))

    def _elapsed(self) -> float:
        """Seconds of training so far, the interrupted runs' before this one included."""
        return self.prior_elapsed + time.perf_counter() - self.loop_start

    def _tokenize(self) -> tuple[list, list, int, int]:
        """The train and eval examples, how many records were skipped, the pad token id."""
        from transformers import AutoTokenizer

        p, s = self.plan, self.s
        tokenizer = AutoTokenizer.from_pretrained(p.base_model)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        examples, skipped = _data.tokenize_all(tokenizer, p.train, s.max_seq_len)
        if not examples:
            raise invalid(
                "train_records",
                f"no record keeps an answer token within max_seq_len={s.max_seq_len}",
            )
        eval_examples, _ = _data.tokenize_all(tokenizer, p.eval, s.max_seq_len)
        return examples, eval_examples, skipped, pad_id

    def _build(self, total: int) -> int:
        """Load the model with its LoRA layers, the optimizer and the schedule, restored
        from the checkpoint when resuming; the step training starts after."""
        import torch
        from peft import LoraConfig, get_peft_model

        p, s = self.plan, self.s
        model = _model.load_for_training(p.base_model, s.method, p.device, s.gradient_checkpointing)
        torch.manual_seed(s.seed)
        lora = LoraConfig(
            r=s.lora.r,
            lora_alpha=s.lora.alpha,
            lora_dropout=s.lora.dropout,
            target_modules=list(p.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(model, lora)
        self.model.train()
        self.params = [q for q in self.model.parameters() if q.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=s.learning_rate, weight_decay=s.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _steps.lr_factor(s, total)
        )
        if not p.resume_step:
            return 0
        restored = _checkpoint.load(
            p.output_dir,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            device=p.device,
        )
        self.history, self.evals = restored["history"], restored["evals"]
        self.prior_elapsed = restored["elapsed"]
        logger.info("resuming at step %d from %s", p.resume_step, p.output_dir)
        return p.resume_step

    def _step(self, window: Any, train_batches: _steps.Batches, total: int) -> None:
        """One optimizer step over ``window``'s batches (gradient accumulation), reported."""
        import torch

        s = self.s
        t0 = time.perf_counter()
        batches = [train_batches.get(b) for b in window.batches]
        labelled = max(sum(_steps.labelled(b) for b in batches), 1)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        loss_total = 0.0
        for batch in batches:
            loss = _steps.loss_sum(self.model, batch) / labelled
            loss.backward()
            loss_total += float(loss.detach())
        if not math.isfinite(loss_total):
            raise FineTuneFailed(f"loss became {loss_total} at step {window.step}")
        if s.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm)
        lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        done = window.step
        step_s = time.perf_counter() - t0
        self.history.append({"step": done, "loss": loss_total, "learning_rate": lr})
        self._emit(
            {
                "kind": "train",
                "step": done,
                "total_steps": total,
                "epoch": window.epoch,
                "loss": loss_total,
                "learning_rate": lr,
                "tokens_per_s": tokens / step_s if step_s > 0 else 0.0,
                "elapsed_s": self._elapsed(),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
        logger.debug("step %d/%d loss %.4f", done, total, loss_total)

    def _finish(
        self, done: int, total: int, stopped: bool, load_s: float, skipped: int, records: int
    ) -> TrainResult:
        """Save the adapter (and a checkpoint when stopped early) and its metrics."""
        p = self.plan
        train_time = self._elapsed()
        if done == 0:
            logger.info("fine-tuning stopped before the first step; nothing saved")
            return self._result(None, None, 0, total, True, train_time, {})
        p.output_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(p.output_dir))
        if stopped:
            self._save_checkpoint(done, train_time)
        else:
            _checkpoint.remove(p.output_dir)
        metrics = self._metrics(done, total, stopped, train_time, load_s, skipped, records)
        path = p.output_dir / METRICS_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        logger.info(
            "fine-tuning %s after %d/%d steps in %.1f s; adapter in %s",
            "stopped" if stopped else "finished",
            done,
            total,
            train_time,
            p.output_dir,
        )
        return self._result(p.output_dir, path, done, total, stopped, train_time, metrics)

    def _evaluate(
        self, batches: _steps.Batches, step: int, total: int, epoch: float, t: float
    ) -> None:
        loss = _steps.eval_loss(self.model, batches, self.s.batch_size)
        self.evals.append({"step": step, "eval_loss": loss})
        self._emit(
            {
                "kind": "eval",
                "step": step,
                "total_steps": total,
                "epoch": epoch,
                "eval_loss": loss,
                "elapsed_s": t,
                "peak_rss_mb": peak_rss_mb(),
            }
        )

    def _metrics(
        self,
        steps: int,
        total: int,
        stopped: bool,
        train_time: float,
        load_s: float,
        skipped: int,
        records: int,
    ) -> dict[str, Any]:
        import importlib.metadata as md

        p = self.plan
        versions: dict[str, str | None] = {}
        for dist in ("torch", "transformers", "peft", "bitsandbytes"):
            try:
                versions[dist] = md.version(dist)
            except md.PackageNotFoundError:
                versions[dist] = None
        trainable = sum(q.numel() for q in self.model.parameters() if q.requires_grad)
        out: dict[str, Any] = {
            "base_model": str(p.base_model),
            "method": self.s.method,
            "device": p.device,
            "data_sha256": p.data_sha256,
            "records": records,
            "skipped_records": skipped,
            "eval_records": len(p.eval),
            "steps": steps,
            "total_steps": total,
            "stopped": stopped,
            "train_loss": self.history,
            "eval_loss": self.evals,
            "final_eval_loss": self.evals[-1]["eval_loss"] if self.evals else None,
            "train_time_s": train_time,
            "load_time_s": load_s,
            "peak_rss_mb": peak_rss_mb(),
            "target_modules": list(p.target_modules),
            "targeted_layers": p.targeted_layers,
            "trainable_params": trainable,
            "settings": _checkpoint.jsonable(asdict(self.s)),
            "versions": versions,
        }
        if p.device == "cuda":
            import torch

            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out

    def _result(
        self,
        adapter: Path | None,
        metrics_path: Path | None,
        steps: int,
        total: int,
        stopped: bool,
        train_time: float,
        metrics: dict[str, Any],
    ) -> TrainResult:
        return TrainResult(
            output_dir=self.plan.output_dir,
            adapter_dir=adapter,
            metrics_path=metrics_path,
            steps=steps,
            total_steps=total,
            stopped=stopped,
            train_loss=tuple(h["loss"] for h in self.history),
            eval_loss=tuple((int(e["step"]), e["eval_loss"]) for e in self.evals),
            final_eval_loss=self.evals[-1]["eval_loss"] if self.evals else None,
            train_time_s=train_time,
            peak_rss_mb=peak_rss_mb(),
            data_sha256=self.plan.data_sha256,
            metrics=metrics,
        )

    def _save_checkpoint(self, step: int, elapsed: float) -> None:
        p = self.plan
        _checkpoint.save(
            p.output_dir,
            step,
            _checkpoint.identity(p.base_model, self.s, p.data_sha256),
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            device=p.device,
            history=self.history,
            evals=self.evals,
            elapsed=elapsed,
        )
