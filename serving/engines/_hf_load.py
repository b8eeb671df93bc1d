"""Loading a model and its LoRA adapters for the transformers engine: the helpers.

Example:
    >>> same_path("/models/a/", "/models/a")
    True
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from qingliang.platform.errors import BadRequest, EngineError
from qingliang.serving.engines._hf_request import is_int
from qingliang.serving.plan import DeploymentPlan

logger = logging.getLogger(__name__)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


class _DropBnbCastWarning(logging.Filter):
    """bitsandbytes logs "inputs will be cast to float16" on every int8 matmul on CPU."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will be cast from" not in record.getMessage()


def quiet_bnb_int8_warning() -> None:
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropBnbCastWarning) for f in bnb_logger.filters):
        bnb_logger.addFilter(_DropBnbCastWarning())


def context_length(plan: DeploymentPlan, config: Any) -> int:
    native: int | None = None
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(getattr(config, attr, None), int):
            native = getattr(config, attr)
            break
    wanted = plan.options.max_model_len
    if wanted and native and wanted > native:
        raise EngineError(
            f"{plan.name}: spec.engine.max_model_len {wanted} exceeds the model's "
            f"{native} positions ({plan.model_path}/config.json)"
        )
    length = wanted or native
    if not length:
        raise EngineError(
            f"{plan.name}: the model config states no context length; set spec.engine.max_model_len"
        )
    return length


def eos_ids_of(generation_config: Any, tok: Any) -> set[int]:
    ids: set[int] = set()
    for value in (generation_config.eos_token_id, tok.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def adapter_config(name: str, path: str, max_rank: int) -> dict:
    cfg_path = Path(path) / "adapter_config.json"
    try:
        config = json.loads(cfg_path.read_text("utf-8"))
    except FileNotFoundError:
        raise BadRequest(
            f"adapter {name!r}: no adapter_config.json in {path} (expected a PEFT adapter "
            "directory saved with save_pretrained)",
            param="adapter",
        ) from None
    except (OSError, ValueError) as exc:
        raise BadRequest(
            f"adapter {name!r}: cannot read {cfg_path}: {exc}", param="adapter"
        ) from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise BadRequest(
            f"adapter {name!r} at {path} is not a LoRA adapter (peft_type {kind!r})",
            param="adapter",
        )
    rank: Any = config.get("r")
    if not is_int(rank) or rank < 1:
        raise BadRequest(
            f"adapter {name!r}: adapter_config.json has no valid rank `r`", param="adapter"
        )
    if rank > max_rank:
        raise BadRequest(
            f"adapter {name!r} has LoRA rank {rank}, above this deployment's max_lora_rank "
            f"{max_rank} (spec.lora.max_rank)",
            param="adapter",
        )
    return config


def same_path(a: str, b: str) -> bool:
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def strip_lora_layers(model: Any) -> None:
    """Replace PEFT tuner layers left in ``model`` by a failed first load with their base."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config
