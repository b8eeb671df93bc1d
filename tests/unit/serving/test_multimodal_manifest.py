"""``spec.multimodal``: how a deployment declares images, what the plan, vLLM's arguments
and the gateway's view of the deployment make of it."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from qingliang.serving.engines.vllm_engine import engine_argv
from qingliang.serving.manifest import ModelDeployment
from qingliang.serving.plan import HardwareProfile, compile_plan
from qingliang.serving.traffic import entry_of_body

VLLM = HardwareProfile(cpu_isa="avx512", vllm=True)
NO_VLLM = HardwareProfile(cpu_isa="avx2", vllm=False)


def deployment(**spec: object) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m"},
            "spec": {"model": {"source": "/models/m"}, **spec},
        }
    )


@pytest.mark.parametrize(
    ("written", "mode", "count"),
    [
        (None, "reject", 4),
        ({"image": "ocr"}, "ocr", 4),
        ({"image": "reject"}, "reject", 4),
        ({"image": {"max_per_prompt": 2}}, "native", 2),
        ({"image": {"mode": "native"}}, "native", 4),
        ({"image": {"mode": "ocr", "max_per_prompt": 1}}, "ocr", 1),
        ({}, "reject", 4),
    ],
)
def test_the_ways_to_write_it(written: dict | None, mode: str, count: int) -> None:
    md = deployment(**({} if written is None else {"multimodal": written}))
    image = md.spec.multimodal.image
    assert (image.mode, image.max_per_prompt) == (mode, count)
    # what the gateway reads back from the stored manifest says the same
    entry = entry_of_body("m", md.model_dump(mode="json"))
    assert (entry.image_mode, entry.max_images) == (mode, count)


@pytest.mark.parametrize(
    ("written", "says"),
    [
        ({"image": "vision"}, "native"),
        ({"image": {"max_per_prompt": 0}}, "greater than or equal to 1"),
        ({"image": {"max_per_prompt": 65}}, "less than or equal to 64"),
        ({"image": {"mode": "ocr", "colour": True}}, "colour"),
        ({"audio": "ocr"}, "audio"),
    ],
)
def test_mistakes_are_named(written: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        deployment(multimodal=written)


def test_native_images_need_vllm() -> None:
    with pytest.raises(ValidationError, match="image native needs engine vllm"):
        deployment(engine={"kind": "transformers"}, multimodal={"image": {"max_per_prompt": 2}})
    # OCR is done by the gateway: any engine takes it
    assert deployment(engine={"kind": "transformers"}, multimodal={"image": "ocr"})


def test_native_images_choose_vllm_and_set_its_image_limit() -> None:
    plan = compile_plan(deployment(multimodal={"image": {"max_per_prompt": 3}}), VLLM)
    assert plan.engine == "vllm" and plan.images_per_prompt == 3
    argv = engine_argv(plan.with_model_path("/models/m"))
    assert json.loads(argv[argv.index("--limit-mm-per-prompt") + 1]) == {"image": 3}


@pytest.mark.parametrize("image", ["ocr", "reject"])
def test_text_models_get_no_image_limit(image: str) -> None:
    plan = compile_plan(deployment(multimodal={"image": image}), VLLM)
    assert plan.images_per_prompt == 0
    assert "--limit-mm-per-prompt" not in engine_argv(plan.with_model_path("/models/m"))
    # and an OCR deployment runs where vLLM is not installed
    assert compile_plan(deployment(multimodal={"image": image}), NO_VLLM).engine == "transformers"
