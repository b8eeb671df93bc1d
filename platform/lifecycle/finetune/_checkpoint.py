"""Resumable checkpoints of a stopped or long run: ``<output_dir>/checkpoint/``.

``state.pt`` holds the adapter weights, optimizer and schedule state, the random-number
state and the loss history; ``state.json`` the step reached and what the run was
(base model, data hash, settings), which a resumed run must match exactly.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from qingliang.platform.errors import FieldIssue
from qingliang.platform.lifecycle.finetune.settings import InvalidFineTune, TrainSettings, invalid

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(obj))


def identity(base: Path, settings: TrainSettings, data_sha256: str) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint."""
    return {
        "base_model": str(base),
        "data_sha256": data_sha256,
        "settings": jsonable(asdict(settings)),
    }


def check_output_dir(out: Path, resume: bool, base: Path, settings: TrainSettings, sha: str) -> int:
    """0 for a fresh run (``out`` missing or empty), or the step a checkpoint stopped at.

    Raises:
        InvalidFineTune: ``out`` is in use, or its checkpoint is for another run.
    """
    if out.exists() and not out.is_dir():
        raise invalid("output_dir", f"{out} exists and is not a directory")
    meta_file = out / CHECKPOINT_DIR / "state.json"
    if resume and meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise invalid("output_dir", f"{meta_file}: unreadable checkpoint: {exc}") from None
        want = identity(base, settings, sha)
        issues = []
        if meta.get("settings") != want["settings"]:
            issues.append(FieldIssue("train", "differs from the settings of the checkpoint"))
        if meta.get("data_sha256") != sha:
            issues.append(FieldIssue("train_records", "differ from the checkpoint's data"))
        if meta.get("base_model") != want["base_model"]:
            issues.append(FieldIssue("base_model", f"checkpoint used {meta.get('base_model')}"))
        if issues:
            raise InvalidFineTune(issues)
        return int(meta["step"])
    if out.is_dir() and any(out.iterdir()):
        hint = " and holds no checkpoint to resume" if resume else ""
        raise invalid("output_dir", f"{out} is not empty{hint}")
    return 0


def save(
    out: Path,
    step: int,
    ident: dict[str, Any],
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    device: str,
    history: list[dict[str, float]],
    evals: list[dict[str, float]],
    elapsed: float,
) -> None:
    """Write ``out/checkpoint`` for ``step`` (the state file atomically, then the step)."""
    import torch
    from peft import get_peft_model_state_dict

    ckpt = out / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    state = {
        "adapter": get_peft_model_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device == "cuda" else [],
        "history": history,
        "evals": evals,
        "elapsed": elapsed,
    }
    torch.save(state, ckpt / "state.pt.tmp")
    os.replace(ckpt / "state.pt.tmp", ckpt / "state.pt")
    meta = {"step": step, **ident}
    (ckpt / "state.json.tmp").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(ckpt / "state.json.tmp", ckpt / "state.json")
    logger.debug("checkpoint at step %d in %s", step, ckpt)


def load(out: Path, *, model: Any, optimizer: Any, scheduler: Any, device: str) -> dict[str, Any]:
    """Restore adapter, optimizer, schedule and RNG; return history, evals, elapsed."""
    import torch
    from peft import set_peft_model_state_dict

    ckpt = out / CHECKPOINT_DIR
    state = torch.load(ckpt / "state.pt", map_location=device, weights_only=True)
    set_peft_model_state_dict(model, state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"].cpu())
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda_rng"]])
    return {
        "history": list(state["history"]),
        "evals": list(state["evals"]),
        "elapsed": float(state["elapsed"]),
    }


def remove(out: Path) -> None:
    """Drop the checkpoint of a run that finished."""
    import shutil

    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
