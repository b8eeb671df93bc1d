"""The packaged chat models, for real: join, verify, convert, load with transformers.

Slow: converting Qwen2.5-Coder-0.5B takes about a minute, SmolLM2 about 30 s, and the
Qwen answer a few seconds more. Both conversions share one cache for the module.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from qingliang.serving.sources import MARKER, list_packaged, resolve_source

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QWEN = "qwen2.5-coder-0.5b-instruct"
SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def cache(packaged_cache: Path) -> Path:
    return packaged_cache


def _require(name: str) -> None:
    row = {r["name"]: r for r in list_packaged()}[name]
    if not row["installed"]:
        pytest.skip(f"packaged:{name} is not installed: {row['install']}")


def _resolve_twice(name: str, cache: Path) -> Path:
    started = time.perf_counter()
    out = resolve_source(f"packaged:{name}", cache, progress=False)
    first = time.perf_counter() - started
    sealed = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    started = time.perf_counter()
    assert resolve_source(f"packaged:{name}", cache, progress=False) == out
    again = time.perf_counter() - started
    print(f"\n{name}: converted in {first:.1f} s, cached lookup in {again * 1000:.1f} ms")
    # The second call reused the sealed copy: nothing in it was rewritten.
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == sealed
    # Only the sealed directory and its lock are left: no joined GGUF, no staging.
    assert sorted(p.name for p in cache.iterdir() if name in p.name) == sorted(
        [out.name, f".{out.name}.lock"]
    )
    return out


def _greedy(model_dir: Path, question: str, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_smollm2_converts_and_generates(cache: Path) -> None:
    _require(SMOL)
    out = _resolve_twice(SMOL, cache)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    marker = json.loads((out / MARKER).read_text())
    assert marker["source_sha256"].startswith("b179c9523d0e")
    answer = _greedy(out, "What is the capital of France?", 12)
    assert answer.strip()


def test_qwen_converts_and_knows_the_capital_of_france(cache: Path) -> None:
    _require(QWEN)
    out = _resolve_twice(QWEN, cache)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["eos_token_id"] == 151645
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{QWEN}: cache directory {size / 1e9:.2f} GB")
    answer = _greedy(out, "What is the capital of France?", 16)
    assert "Paris" in answer, answer
