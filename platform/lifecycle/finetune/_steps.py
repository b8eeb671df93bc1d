"""The arithmetic of one optimizer step, shared by both methods: learning-rate schedule,
micro-batches on the device, the summed loss over answer tokens, evaluation loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qingliang.platform.lifecycle.finetune import _data
from qingliang.platform.lifecycle.finetune.settings import TrainSettings


def lr_factor(settings: TrainSettings, total: int) -> Callable[[int], float]:
    """Learning-rate multiplier for the step after ``done`` completed steps."""
    warmup = math.ceil(settings.warmup_ratio * total)

    def factor(done: int) -> float:
        k = done + 1
        if k <= warmup:
            return k / (warmup + 1)
        frac = (k - warmup - 1) / max(1, total - warmup)
        if settings.lr_schedule == "linear":
            return 1.0 - frac
        if settings.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        return 1.0

    return factor


class Batches:
    """Tokenised examples collated on demand and moved to the device."""

    def __init__(self, examples: list[_data.Example], pad_id: int, device: str) -> None:
        self.examples = examples
        self.pad_id = pad_id
        self.device = device

    def get(self, indices: Sequence[int]) -> dict[str, Any]:
        batch = _data.collate([self.examples[i] for i in indices], self.pad_id)
        return {k: v.to(self.device) for k, v in batch.items()}


def loss_sum(model: Any, batch: Mapping[str, Any]) -> Any:
    """Summed next-token cross-entropy over the labelled tokens of one micro-batch."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = logits[:, :-1, :].float()
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]),
        labels.reshape(-1),
        ignore_index=_data.IGNORE,
        reduction="sum",
    )


def labelled(batch: Mapping[str, Any]) -> int:
    return int((batch["labels"][:, 1:] != _data.IGNORE).sum())


def eval_loss(model: Any, batches: Batches, batch_size: int) -> float:
    """Mean loss per labelled token over all evaluation examples."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(batches.examples), batch_size):
            batch = batches.get(range(i, min(i + batch_size, len(batches.examples))))
            total += float(loss_sum(model, batch))
            tokens += labelled(batch)
    model.train()
    return total / max(tokens, 1)
