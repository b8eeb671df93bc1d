"""Compile a validated ``ModelDeployment`` into an immutable :class:`DeploymentPlan`.

Compilation is pure: the hardware it plans for is passed in as a
:class:`HardwareProfile` (``HardwareProfile.detect()`` reads the host once, in the
entrypoint), so tests plan for an AVX-512 CPU or a GPU node from a laptop.

Example:
    >>> from qingliang.serving.manifest import ModelDeployment
    >>> md = ModelDeployment.model_validate({"apiVersion": "qingliang.io/v1",
    ...     "kind": "ModelDeployment", "metadata": {"name": "tiny"},
    ...     "spec": {"model": {"source": "/models/tiny"}}})
    >>> plan = compile_plan(md, HardwareProfile(cpu_isa="avx2", vllm=True))
    >>> (plan.engine, plan.dtype)
    ('vllm', 'float32')
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Literal

from qingliang.platform.errors import FieldIssue, ManifestError
from qingliang.serving.manifest import (
    EngineOptions,
    ModelDeployment,
    Placement,
    quantization_catalog,
)

CpuIsa = Literal["avx2", "avx512", "amx", "other"]


@dataclass(frozen=True)
class HardwareProfile:
    """What the node a deployment is planned for can do."""

    cpu_isa: CpuIsa = "avx2"
    vllm: bool = True
    gpus: int = 0

    @classmethod
    def detect(cls) -> HardwareProfile:
        """Read the host: CPU flags from /proc/cpuinfo, vLLM importable, CUDA devices."""
        isa: CpuIsa = "other"
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                flags = next((ln for ln in fh if ln.startswith("flags")), "")
            words = set(flags.split())
            if "amx_tile" in words and "amx_bf16" in words:
                isa = "amx"
            elif "avx512f" in words and "avx512_bf16" in words:
                isa = "avx512"
            elif "avx2" in words:
                isa = "avx2"
        except OSError:
            pass
        vllm = importlib.util.find_spec("vllm") is not None
        gpus = len([d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d])
        return cls(cpu_isa=isa, vllm=vllm, gpus=gpus)


@dataclass(frozen=True)
class DeploymentPlan:
    """Everything needed to start one deployment; no defaults left to decide."""

    name: str
    source: str
    engine: Literal["vllm", "transformers"]
    dtype: Literal["auto", "float32", "bfloat16", "float16"]
    accelerator: Literal["cpu", "gpu", "npu"]
    quantization: str | None
    engine_quantization: str | None
    lora_enabled: bool
    max_loras: int
    max_lora_rank: int
    adapters: tuple[tuple[str, str], ...]
    options: EngineOptions
    placement: Placement
    ray_actor_options: dict = field(hash=False)
    autoscaling_config: dict = field(hash=False)
    max_ongoing_requests: int = 32
    max_queued_requests: int = 64
    labels: tuple[tuple[str, str], ...] = ()
    description: str = ""
    model_path: str | None = None
    trust_remote_code: bool = False
    tokenizer: str | None = None
    #: Images one request may carry to the model itself (``spec.multimodal.image`` native);
    #: 0: the engine takes text only (OCR, if any, happens before the request reaches it).
    images_per_prompt: int = 0

    def with_model_path(self, path: str) -> DeploymentPlan:
        """A copy with the resolved local model path filled in."""
        return dataclasses.replace(self, model_path=path)

    @property
    def adapter_map(self) -> dict[str, str]:
        return dict(self.adapters)

    def to_dict(self) -> dict:
        """A JSON-safe dict (the Serve config's `args`); :meth:`from_dict` inverts it."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (EngineOptions, Placement)):
                value = value.model_dump(mode="json")
            elif isinstance(value, tuple):
                value = [list(v) for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DeploymentPlan:
        kw = dict(data)
        kw["options"] = EngineOptions.model_validate(kw["options"])
        kw["placement"] = Placement.model_validate(kw["placement"])
        kw["adapters"] = tuple(tuple(x) for x in kw.get("adapters", ()))
        kw["labels"] = tuple(tuple(x) for x in kw.get("labels", ()))
        return cls(**kw)


def _dtype(md: ModelDeployment, profile: HardwareProfile, engine: str) -> str:
    dtype = md.spec.engine.dtype
    if dtype != "auto":
        return dtype
    if md.spec.placement.accelerator != "cpu":
        return "auto"  # the checkpoint's own dtype on GPU / NPU
    # bf16 is emulated on AVX2-only CPUs: ~5x slower batched than fp32 (docs/models.md).
    return "bfloat16" if profile.cpu_isa in ("avx512", "amx") else "float32"


def _engine(md: ModelDeployment, profile: HardwareProfile, row: dict, source: str) -> str:
    """The engine ``md`` runs on: its ``spec.engine.kind``, ``auto`` resolved for ``profile``.

    Raises:
        ManifestError: vLLM is needed but not installed here.
    """
    spec = md.spec
    method = spec.quantization.method
    issues: list[FieldIssue] = []

    engine = spec.engine.kind
    if engine == "auto":
        engines = row.get("engines", ["vllm", "transformers"])
        # NPU, tensor parallelism and vLLM-only methods have no transformers fallback: plan
        # vllm even where it is missing, so the error below says what to install.
        needs_vllm = (
            "transformers" not in engines
            or spec.placement.accelerator == "npu"
            or spec.placement.tensor_parallel_size > 1
            or spec.placement.pipeline_parallel_size > 1
            or spec.multimodal.image.mode == "native"
        )
        if "vllm" not in engines:
            engine = "transformers"
        else:
            engine = "vllm" if (profile.vllm or needs_vllm) else "transformers"
    if engine == "vllm" and not profile.vllm:
        issues.append(
            FieldIssue(
                "spec.engine.kind",
                "vllm is not installed here; install the `cpu` or `gpu` extra or use "
                "kind: transformers",
            )
        )
    if method in ("fp8_per_channel",) and profile.cpu_isa == "avx2":
        # Works, but measured at 0.4 tokens/s on AVX2 (docs/models.md); allowed, not advised.
        pass
    if issues:
        raise ManifestError(issues, source or None)
    return engine


def _actor_options(p: Placement) -> dict:
    """Ray actor options of a replica placed as ``p`` (``spec.placement``)."""
    actor: dict = {"num_cpus": p.cpus}
    if p.accelerator == "gpu":
        # With tensor or pipeline parallelism vLLM spawns its own Ray workers, one per GPU.
        single = p.tensor_parallel_size * p.pipeline_parallel_size == 1
        actor["num_gpus"] = p.gpus if single else 0
    resources = dict(p.resources)
    if p.accelerator == "npu":
        resources["NPU"] = p.npus
    if resources:
        actor["resources"] = resources
    if p.accelerator_type:
        actor["accelerator_type"] = p.accelerator_type
    if p.memory_gib:
        actor["memory"] = int(p.memory_gib * 1024**3)
    return actor


def compile_plan(md: ModelDeployment, profile: HardwareProfile, source: str = "") -> DeploymentPlan:
    """Decide engine, dtype, resources and scaling for ``md`` on ``profile``.

    Raises:
        ManifestError: the manifest asks for something this profile cannot serve.
    """
    spec = md.spec
    method = spec.quantization.method
    row = quantization_catalog().get(method, {})
    engine = _engine(md, profile, row, source)
    p = spec.placement
    actor = _actor_options(p)
    a = spec.autoscaling
    autoscaling = {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "initial_replicas": a.initial_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
    }
    return DeploymentPlan(
        name=md.metadata.name,
        source=spec.model.source,
        engine=engine,  # type: ignore[arg-type]
        dtype=_dtype(md, profile, engine),  # type: ignore[arg-type]
        accelerator=p.accelerator,
        quantization=None if method == "none" else method,
        engine_quantization=row.get("vllm_name") if engine == "vllm" else None,
        lora_enabled=spec.lora.active,
        max_loras=spec.lora.max_adapters,
        max_lora_rank=spec.lora.max_rank,
        adapters=tuple(sorted(spec.lora.adapters.items())),
        options=spec.engine,
        placement=p,
        ray_actor_options=actor,
        autoscaling_config=autoscaling,
        max_ongoing_requests=spec.engine.max_concurrent_requests,
        max_queued_requests=spec.engine.max_queued_requests,
        labels=tuple(sorted(md.metadata.labels.items())),
        description=md.metadata.description,
        trust_remote_code=spec.model.trust_remote_code,
        tokenizer=spec.model.tokenizer,
        images_per_prompt=(
            spec.multimodal.image.max_per_prompt if spec.multimodal.image.mode == "native" else 0
        ),
    )
