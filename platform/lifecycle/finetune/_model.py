"""The base model: what a checkpoint directory holds, which layers it has (without its
weights), whether bitsandbytes 4-bit works here, and loading it for LoRA or QLoRA."""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qingliang.platform.errors import FieldIssue, closest
from qingliang.platform.lifecycle.finetune.settings import ALL_LINEAR, InvalidFineTune, invalid

logger = logging.getLogger(__name__)

_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
#: Layers ``all-linear`` leaves out, as peft does: the output head.
_HEADS = ("lm_head", "embed_out", "output")


@dataclass(frozen=True)
class Linear:
    """One linear layer of the model: full name and (in, out) features."""

    name: str
    in_features: int
    out_features: int


def check_model_dir(path: Path, field: str = "base_model") -> dict[str, Any]:
    """Check that ``path`` is a Hugging Face causal-LM directory; return its config.json.

    Reads only small files: ``config.json`` and the names of weight / tokenizer files.
    """
    if not path.exists():
        raise invalid(field, f"{path} does not exist")
    if not path.is_dir():
        raise invalid(field, f"{path} is not a directory")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise invalid(field, f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise invalid(field, f"{cfg_file}: unreadable config.json: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise invalid(field, f"{cfg_file} has no model_type")
    if not any(any(path.glob(g)) for g in _WEIGHT_GLOBS):
        raise invalid(field, f"{path} holds no weights (*.safetensors or pytorch_model*.bin)")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise invalid(field, f"{path} holds no tokenizer files")
    return config


def linear_layers(path: Path, field: str = "base_model") -> list[Linear]:
    """The model's linear layers, from its config alone (built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError) as exc:
        raise invalid(
            field, f"{path}: not a causal language model transformers knows: {exc}"
        ) from None
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            out.append(Linear(name, mod.in_features, mod.out_features))
        elif isinstance(mod, Conv1D):  # GPT-2 style: weight is (in, out)
            out.append(Linear(name, mod.weight.shape[0], mod.weight.shape[1]))
    return out


def _matches(name: str, key: str) -> bool:
    """peft's rule for a target module name: the full name or its dotted suffix."""
    return name == key or name.endswith("." + key)


def resolve_targets(
    layers: list[Linear], target_modules: tuple[str, ...], r: int, prefix: str = "lora"
) -> tuple[tuple[str, ...], list[Linear]]:
    """(module names to give peft, the layers they select); checks names and rank.

    Raises:
        InvalidFineTune: a name matches no linear layer (the available names are
            listed) or ``r`` exceeds a targeted layer's smaller dimension.
    """
    available = sorted({x.name.rsplit(".", 1)[-1] for x in layers} - set(_HEADS))
    names = tuple(available) if target_modules == (ALL_LINEAR,) else target_modules
    issues = []
    for i, key in enumerate(names):
        if not any(_matches(x.name, key) for x in layers):
            near = closest(key, available)
            more = f"did you mean {near!r}? " if near else ""
            issues.append(
                FieldIssue(
                    f"{prefix}.target_modules[{i}]",
                    f"{key!r} is no linear layer of this model; {more}"
                    f"available: {', '.join(available)}",
                )
            )
    if issues:
        raise InvalidFineTune(issues)
    selected = [x for x in layers if any(_matches(x.name, k) for k in names)]
    smallest = min(selected, key=lambda x: min(x.in_features, x.out_features))
    dim = min(smallest.in_features, smallest.out_features)
    if r > dim:
        raise invalid(
            f"{prefix}.r",
            f"{r} is larger than the smallest targeted layer dimension {dim} "
            f"({smallest.name}: {smallest.in_features} -> {smallest.out_features})",
        )
    return names, selected


def resolve_device(requested: str, field: str = "train.device") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise invalid(field, "cuda was requested but no CUDA device is visible")
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested


def compute_dtype(device: str) -> Any:
    """fp32 on CPU; bf16 on a GPU that has it (else fp32)."""
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@functools.cache
def bnb_problem(device: str) -> str | None:
    """Why bitsandbytes 4-bit NF4 cannot train here, or None when it can.

    Quantises a small matrix with double quantisation and runs a forward and backward
    pass through ``bitsandbytes.matmul_4bit`` on ``device``. Cached per process.
    """
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnbf
        import torch
    except Exception as exc:  # ImportError, or a broken native library at import
        return f"bitsandbytes is not importable: {type(exc).__name__}: {exc}"
    try:
        dtype = compute_dtype(device)
        w = torch.randn(64, 64, device=device, dtype=dtype)
        q, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        x = torch.randn(2, 64, device=device, dtype=dtype, requires_grad=True)
        y = bnb.matmul_4bit(x, q.t(), quant_state=state)
        y.float().sum().backward()
        ref = x.detach() @ bnbf.dequantize_4bit(q, state).t()
        if not torch.allclose(y.detach().float(), ref.float(), atol=1e-2, rtol=1e-2):
            return "bitsandbytes 4-bit matmul gives wrong results on this device"
        if x.grad is None or not torch.isfinite(x.grad).all():
            return "bitsandbytes 4-bit matmul has no usable gradient on this device"
    except Exception as exc:
        return f"bitsandbytes 4-bit NF4 failed on {device}: {type(exc).__name__}: {exc}"
    return None


def load_for_training(path: Path, method: str, device: str, gradient_checkpointing: bool) -> Any:
    """The base model ready for adapters: fp32/bf16 for ``lora``; 4-bit NF4 with double
    quantisation and ``prepare_model_for_kbit_training`` for ``qlora``."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": 0} if device == "cuda" else "cpu"
    model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    gc_kwargs = {"use_reentrant": False}
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
    else:
        model = model.to(device)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model
