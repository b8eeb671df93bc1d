"""vLLM on an NVIDIA GPU behind the same Engine protocol (skipped without a GPU).

Run on a GPU machine with the `gpu` extra installed: `python -m pytest tests/gpu`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if not _has_gpu():
    pytest.skip("no NVIDIA GPU on this machine", allow_module_level=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qingliang.serving.tiny_model import build_tiny_adapter, build_tiny_llama

    root = tmp_path_factory.mktemp("gpu-models")
    base = build_tiny_llama(root / "tiny")
    build_tiny_adapter(base, root / "adapter")
    return root


def _plan(tiny: Path, **engine: object):
    from qingliang.serving.manifest import ModelDeployment
    from qingliang.serving.plan import HardwareProfile, compile_plan

    md = ModelDeployment.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "ModelDeployment",
            "metadata": {"name": "tiny-gpu"},
            "spec": {
                "model": {"source": str(tiny / "tiny")},
                "engine": {"max_model_len": 256, "gpu_memory_utilization": 0.3, **engine},
                "lora": {"enabled": True, "max_rank": 8},
                "placement": {"accelerator": "gpu", "gpus": 1},
            },
        }
    )
    plan = compile_plan(md, HardwareProfile.detect())
    return plan.with_model_path(str(tiny / "tiny"))


async def test_vllm_on_gpu_serves_base_and_adapter(tiny: Path) -> None:
    from qingliang.serving.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(_plan(tiny, dtype="float32"))
    await engine.start()
    try:
        body = {
            "model": "tiny-gpu",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 8,
            "temperature": 0,
        }
        base = await engine.chat(body, adapter=None)
        await engine.load_adapter("a", str(tiny / "adapter"))
        adapted = await engine.chat(body, adapter="a")
        assert adapted["model"] == "tiny-gpu:a"
        assert (
            adapted["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]
        )
        again = await engine.chat(body, adapter=None)
        assert again["choices"][0]["message"] == base["choices"][0]["message"]
    finally:
        await engine.shutdown()


def test_gpu_plan_uses_the_gpu_profile(tiny: Path) -> None:
    plan = _plan(tiny)
    assert plan.engine == "vllm" and plan.accelerator == "gpu"
    assert plan.ray_actor_options["num_gpus"] == 1
    assert shutil.which("nvidia-smi") is not None
