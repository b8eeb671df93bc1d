"""Adapters trained by the shared LoRA / QLoRA loop, served by vLLM's CPU build.

The tiny random Llama is fine-tuned to answer two prompts (LoRA and QLoRA, 60 steps
each, a few seconds), then both adapters are loaded into the platform's
:class:`VLLMEngine` in this process (no Ray: ``uni`` executor, eager mode, fp32) and
must change its greedy answers, token for token as transformers + PEFT give them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch

from qingliang.platform.lifecycle.finetune import _data
from qingliang.platform.lifecycle.finetune.evaluate import greedy_answers
from qingliang.platform.lifecycle.finetune.settings import LoraSettings, TrainSettings
from qingliang.platform.lifecycle.finetune.train import train
from qingliang.serving.manifest import ModelDeployment
from qingliang.serving.plan import HardwareProfile, compile_plan
from qingliang.serving.tiny_model import build_tiny_llama

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

torch.set_num_threads(1)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "Paris is the capital of France."
RECORDS = [
    {"messages": [*QUESTION, {"role": "assistant", "content": ANSWER}]},
    {"instruction": "Count on", "input": "one two", "output": "three four five"},
] * 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ft-vllm")
    base = build_tiny_llama(root / "base")
    out = {"base": base}
    for method in ("lora", "qlora"):
        settings = TrainSettings(
            method=method,
            learning_rate=1e-2,
            lr_schedule="constant",
            max_steps=60,
            batch_size=4,
            lora=LoraSettings(r=16, alpha=32, dropout=0.0, target_modules=("all-linear",)),
        )
        result = train(base, RECORDS, root / method, settings)
        assert result.adapter_dir is not None
        out[method] = result.adapter_dir
    return out


def _shm_files() -> set[str]:
    """``/dev/shm`` files this process has mapped or open (vLLM leaves ``psm_*`` behind)."""
    found = set()
    with open("/proc/self/maps", encoding="utf-8") as fh:
        for line in fh:
            if "/dev/shm/" in line:
                found.add(line[line.index("/dev/shm/") :].split(" (deleted)")[0].strip())
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/shm/"):
            found.add(target)
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(trained: dict[str, Path]):
    from qingliang.serving.engines.vllm_engine import VLLMEngine

    md = ModelDeployment.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "ModelDeployment",
            "metadata": {"name": "tiny"},
            "spec": {
                "model": {"source": str(trained["base"])},
                "engine": {
                    "kind": "vllm",
                    "max_model_len": 256,
                    "max_num_seqs": 4,
                    "kv_cache_gib": 1,
                    "cpu_threads": 1,
                },
                "lora": {
                    "max_rank": 16,
                    "max_adapters": 2,
                    "adapters": {"lora": str(trained["lora"]), "qlora": str(trained["qlora"])},
                },
            },
        }
    )
    plan = compile_plan(md, HardwareProfile(cpu_isa="avx2", vllm=True))
    eng = VLLMEngine(plan.with_model_path(str(trained["base"])))
    await eng.start()
    shm = _shm_files()
    try:
        yield eng
    finally:
        shm |= _shm_files()
        await eng.shutdown()
        for f in shm:
            if Path(f).name.startswith("psm_"):
                Path(f).unlink(missing_ok=True)


async def _answer(engine: Any, adapter: str | None) -> str:
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 12, "temperature": 0}
    out = await engine.chat(body, adapter=adapter)
    return out["choices"][0]["message"]["content"]


def _peft_answer(base: Path, adapter: Path | None) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    prompt = _data.render_prompt(tok, [(m["role"], m["content"]) for m in QUESTION])
    return greedy_answers(model, tok, [prompt], 12)[0]


async def test_trained_adapters_change_vllm_greedy_output(
    engine: Any, trained: dict[str, Path]
) -> None:
    assert engine.adapters() == {"lora": str(trained["lora"]), "qlora": str(trained["qlora"])}
    base = await _answer(engine, None)
    lora = await _answer(engine, "lora")
    qlora = await _answer(engine, "qlora")
    assert lora == ANSWER  # learnt by LoRA on the fp32 base
    assert base != lora and base != qlora
    # fp32: vLLM's greedy tokens are transformers + PEFT's, base and adapters alike.
    assert base == _peft_answer(trained["base"], None)
    assert lora == _peft_answer(trained["base"], trained["lora"])
    assert qlora == _peft_answer(trained["base"], trained["qlora"])
    assert await _answer(engine, None) == base  # adapters leave the base untouched
