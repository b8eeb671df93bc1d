"""vLLM hosted in-process, behind the :class:`~qingliang.serving.engine.Engine` protocol.

vLLM's own OpenAI serving classes (``OpenAIServingChat``, ``OpenAIServingCompletion``,
``OpenAIServingModels``) do the chat templates, tool-call parsing, sampling
parameters, length checks and SSE formatting; this module builds them exactly as
vLLM's API server does (its argument parser and ``init_app_state``) from a typed
:class:`DeploymentPlan`, and translates their ``ErrorResponse`` objects into our
exception tree. Their SSE strings are read once here, into typed
:class:`~qingliang.serving.engine.StreamChunk` objects. Why in-process rather than
``ray.serve.llm``: docs/serving.md.

Adapters are registered under ``"<deployment>:<adapter>"`` so the ``model`` field of
every response is exactly what the client asked for.

Example:
    >>> engine = VLLMEngine(plan.with_model_path("/models/tiny"))  # doctest: +SKIP
    >>> await engine.start()                                         # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from pydantic_core import from_json

from qingliang.platform.errors import BadRequest, EngineError, NotFound, did_you_mean, from_status
from qingliang.serving.engine import EngineOutput, StreamChunk
from qingliang.serving.families import default_tool_call_parser, read_config
from qingliang.serving.plan import DeploymentPlan
from qingliang.serving.responses_toolcalls import recover_responses
from qingliang.serving.toolcalls import recover
from qingliang.serving.vllm_args import vllm_argv

logger = logging.getLogger(__name__)


def engine_argv(plan: DeploymentPlan, model_config: dict[str, Any] | None = None) -> list[str]:
    """vLLM API-server arguments for ``plan``: its typed fields, then ``vllm_args``.

    ``model_config`` is the checkpoint's ``config.json`` (:func:`read_config`): it picks
    the tool-call parser when the manifest names none (:mod:`qingliang.serving.families`).
    """
    if not plan.model_path:
        raise EngineError(f"{plan.name}: the model source was not resolved to a local path")
    o = plan.options
    parser = o.tool_call_parser or default_tool_call_parser(model_config or {})
    argv = [
        "--model",
        plan.model_path,
        "--served-model-name",
        plan.name,
        "--dtype",
        plan.dtype,
        "--max-num-seqs",
        str(o.max_num_seqs),
        "--seed",
        str(o.seed),
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        parser,
    ]
    if o.reasoning_parser:
        argv += ["--reasoning-parser", o.reasoning_parser]
    if "enable-prefix-caching" not in o.vllm_args:
        # vLLM 0.32's own default for a generative model on GPU and x86 CPU; written out so
        # the deployment's setting does not hang on vLLM's (docs/serving.md).
        argv.append("--enable-prefix-caching")
    if o.max_model_len:
        argv += ["--max-model-len", str(o.max_model_len)]
    if o.max_num_batched_tokens:
        argv += ["--max-num-batched-tokens", str(o.max_num_batched_tokens)]
    if o.enforce_eager:
        argv.append("--enforce-eager")
    if plan.images_per_prompt:
        argv += ["--limit-mm-per-prompt", json.dumps({"image": plan.images_per_prompt})]
    if plan.engine_quantization:
        argv += ["--quantization", plan.engine_quantization]
    if plan.trust_remote_code:
        argv.append("--trust-remote-code")
    if plan.tokenizer:
        argv += ["--tokenizer", plan.tokenizer]
    if plan.lora_enabled:
        argv += [
            "--enable-lora",
            "--max-loras",
            str(plan.max_loras),
            "--max-lora-rank",
            str(_vllm_rank(plan.max_lora_rank)),
        ]
    if plan.accelerator == "cpu":
        # In-process, no worker subprocesses: ~8 s to ready for a tiny model (MODELS.md).
        argv += ["--distributed-executor-backend", "uni"]
    else:
        argv += [
            "--tensor-parallel-size",
            str(plan.placement.tensor_parallel_size),
            "--gpu-memory-utilization",
            str(o.gpu_memory_utilization),
        ]
        pp = plan.placement.pipeline_parallel_size
        if pp > 1:
            argv += ["--pipeline-parallel-size", str(pp)]
        if plan.placement.tensor_parallel_size * pp > 1:
            argv += ["--distributed-executor-backend", "ray"]
    return argv + vllm_argv(o.vllm_args)


def stats_enabled(plan: DeploymentPlan) -> bool:
    """Engine statistics are on unless ``vllm_args`` sets ``disable-log-stats: true``."""
    return not plan.options.vllm_args.get("disable-log-stats", False)


def _vllm_rank(rank: int) -> int:
    """vLLM accepts only these max_lora_rank values; round up to the next one."""
    allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    return next((r for r in allowed if r >= rank), allowed[-1])


def cpu_environment(plan: DeploymentPlan) -> dict[str, str]:
    """Environment vLLM's CPU build reads at import / engine start."""
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CONFIGURE_LOGGING": "0",
        # One line of engine statistics a minute while busy (vLLM logs idle ones at
        # DEBUG); the figures themselves are metrics (docs/serving.md).
        "VLLM_LOG_STATS_INTERVAL": str(STATS_LOG_INTERVAL_S),
    }
    if plan.accelerator == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(plan.options.kv_cache_gib or 1)
        # With the in-process (`uni`) executor vLLM does no thread binding of its own
        # (VLLM_CPU_OMP_THREADS_BIND applies only to its multiprocessing executor): the
        # engine computes on torch's intra-op threads, i.e. OMP_NUM_THREADS — which Ray
        # pre-sets to the actor's num_cpus. Measured: the replica ran on 1 thread while
        # `cpu_threads: 2` was asked for.
        env["OMP_NUM_THREADS"] = str(cpu_threads(plan))
    return env


def cpu_threads(plan: DeploymentPlan) -> int:
    """Threads the CPU engine computes on: `cpu_threads`, else the replica's CPUs."""
    return plan.options.cpu_threads or max(1, int(plan.placement.cpus))


#: Seconds between two engine-statistics log lines (vLLM's VLLM_LOG_STATS_INTERVAL).
STATS_LOG_INTERVAL_S = 60


#: Variables that must win over what the hosting process (a Ray worker) already set.
_FORCED = ("OMP_NUM_THREADS",)


#: How :func:`start_phases_line` starts (benchmarks find the line in the replica's log).
START_PHASES = "engine start phases"


def start_phases_line(name: str, marks: list[tuple[str, float]]) -> str:
    """One log line with the seconds each phase of an engine's start took, and the wall
    clock of each mark (so a benchmark can place them after ``qingliang up`` launched)."""
    steps = " | ".join(
        f"{label} +{at - before:.2f} s"
        for (_, before), (label, at) in zip(marks, marks[1:], strict=False)
    )
    stamps = " ".join(f"{at:.3f}" for _, at in marks)
    return (
        f"{START_PHASES} of {name}: {steps}; total {marks[-1][1] - marks[0][1]:.2f} s "
        f"[unix {stamps}]"
    )


class VLLMEngine:
    """vLLM's AsyncLLM plus its OpenAI serving layer, in this process."""

    def __init__(self, plan: DeploymentPlan) -> None:
        self.plan = plan
        self._llm: Any = None
        self._chat: Any = None
        self._completion: Any = None
        self._responses: Any = None
        self._models: Any = None
        self._max_model_len = plan.options.max_model_len or 0
        self._stats_task: asyncio.Task | None = None
        #: (phase, unix time) marks of the last start (logged: :func:`start_phases_line`).
        self.start_phases: list[tuple[str, float]] = []

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def _lora_name(self, adapter: str) -> str:
        return f"{self.plan.name}:{adapter}"

    async def start(self) -> None:
        marks = [("begin", time.time())]
        for key, value in cpu_environment(self.plan).items():
            if key in _FORCED:
                os.environ[key] = value
            else:
                os.environ.setdefault(key, value)
        if self.plan.accelerator == "cpu":
            import torch

            # In case torch was imported (and its pool sized) before OMP_NUM_THREADS was set.
            torch.set_num_threads(cpu_threads(self.plan))
        try:
            from starlette.datastructures import State
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.entrypoints.launchers.api_server.app_state import init_app_state
            from vllm.entrypoints.launchers.cli_args import (
                make_arg_parser,
                validate_parsed_serve_args,
            )
            from vllm.usage.usage_lib import UsageContext
            from vllm.utils.argparse_utils import FlexibleArgumentParser
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise EngineError(f"vLLM is not importable here: {exc}") from exc
        marks.append(("vllm imported", time.time()))

        argv = engine_argv(self.plan, read_config(self.plan.model_path))
        logger.debug("vLLM args for %s: %s", self.plan.name, argv)
        try:
            args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
            validate_parsed_serve_args(args)
            engine_args = AsyncEngineArgs.from_cli_args(args)
            vllm_config = engine_args.create_engine_config(
                usage_context=UsageContext.OPENAI_API_SERVER
            )
            marks.append(("configured", time.time()))
            stats = stats_enabled(self.plan)
            self._llm = AsyncLLM.from_vllm_config(
                vllm_config=vllm_config,
                usage_context=UsageContext.OPENAI_API_SERVER,
                stat_loggers=_ray_stat_loggers() if stats else None,
                disable_log_stats=not stats,
            )
            marks.append(("engine core ready (weights + KV cache + warm-up)", time.time()))
            state = State()
            tasks = await self._llm.get_supported_tasks()
            await init_app_state(self._llm, state, args, tasks)
            marks.append(("serving state ready", time.time()))
        except SystemExit as exc:  # argparse exits on bad arguments
            raise EngineError(f"{self.plan.name}: vLLM rejected its arguments {argv}") from exc
        except Exception as exc:
            await self.shutdown()
            raise EngineError(f"{self.plan.name}: vLLM failed to start: {exc}") from exc
        self._chat = state.openai_serving_chat
        self._completion = state.openai_serving_completion
        self._responses = getattr(state, "openai_serving_responses", None)
        self._models = state.openai_serving_models
        self._max_model_len = int(vllm_config.model_config.max_model_len)
        for name, path in self.plan.adapters:
            await self.load_adapter(name, path)
        marks.append(("adapters loaded", time.time()))
        if stats:
            self._stats_task = asyncio.create_task(self._log_stats())
        self.start_phases = marks
        logger.info("%s", start_phases_line(self.plan.name, marks))

    async def _run(
        self,
        handler: Any,
        request_cls: Any,
        body: dict,
        adapter: str | None,
        *,
        events: bool = False,
    ):
        if handler is None:
            raise EngineError(f"{self.plan.name}: engine is not started")
        body = dict(body)
        body["model"] = self._lora_name(adapter) if adapter else self.plan.name
        if adapter and self._lora_name(adapter) not in self._models.lora_requests:
            raise NotFound(
                f"adapter {adapter!r} is not loaded on deployment {self.plan.name!r}",
                param="model",
            )
        _reject_unknown_fields(body, request_cls)
        from pydantic import ValidationError

        try:
            request = request_cls.model_validate(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BadRequest(f"{where}: {first['msg']}", param=where) from None
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.exception_handling.error_response import (
            create_error_response,
        )
        from vllm.exceptions import VLLMClientError

        try:
            result = await handler(request, None)
        except (VLLMClientError, ValueError) as exc:
            # vLLM's own server maps these to 4xx in an exception handler; so do we.
            result = create_error_response(exc)
        if isinstance(result, ErrorResponse):
            raise from_status(result.error.code, result.error.message, param=result.error.param)
        if events:  # the Responses API: pydantic objects, dumped as vLLM's server does
            if hasattr(result, "model_dump"):
                return result.model_dump(mode="json", by_alias=True)
            return _response_events(result)
        if hasattr(result, "model_dump"):
            return result.model_dump(exclude_none=True)
        return _chunks(result)

    async def chat(self, body: dict, *, adapter: str | None) -> EngineOutput:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        handler = self._chat.create_chat_completion if self._chat else None
        output = await self._run(handler, ChatCompletionRequest, body, adapter)
        if not self.plan.options.lenient_tool_calls:
            return output
        # Small models often write a call as plain JSON, which the parser leaves as text.
        return recover(body, output)

    async def completion(self, body: dict, *, adapter: str | None) -> EngineOutput:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        handler = self._completion.create_completion if self._completion else None
        return await self._run(handler, CompletionRequest, body, adapter)

    async def responses(self, body: dict, *, adapter: str | None) -> EngineOutput:
        """OpenAI's Responses API through vLLM's ``OpenAIServingResponses``.

        For a model without harmony (not gpt-oss) vLLM renders ``input`` and
        ``instructions`` with the chat template, parses tool calls with the deployment's
        parser into ``function_call`` items, and streams typed ``response.*`` events.
        A call the parser left as text is recovered as for chat (``lenient_tool_calls``).
        """
        from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

        handler = self._responses.create_responses if self._responses else None
        output = await self._run(handler, ResponsesRequest, body, adapter, events=True)
        if not self.plan.options.lenient_tool_calls:
            return output
        return recover_responses(body, output)

    async def load_adapter(self, name: str, path: str) -> None:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        if not self.plan.lora_enabled:
            raise BadRequest(
                f"deployment {self.plan.name!r} was started without LoRA support "
                "(set spec.lora.enabled: true or list adapters in its manifest)"
            )
        full = self._lora_name(name)
        current = self._models.lora_requests.get(full)
        if current is not None and current.lora_path == path:
            return
        _check_adapter_dir(path, self.plan.max_lora_rank)
        if current is None and len(self._models.lora_requests) >= self.plan.max_loras:
            raise BadRequest(
                f"deployment {self.plan.name!r} already has {self.plan.max_loras} adapters "
                "(spec.lora.max_adapters); unload one first"
            )
        request = LoadLoRAAdapterRequest(
            lora_name=full, lora_path=path, load_inplace=current is not None
        )
        result = await self._models.load_lora_adapter(request)
        if isinstance(result, ErrorResponse):
            raise from_status(result.error.code, f"adapter {name!r}: {result.error.message}")
        logger.info("deployment %s: adapter %s loaded", self.plan.name, name)

    async def unload_adapter(self, name: str) -> None:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        full = self._lora_name(name)
        lora = self._models.lora_requests.get(full) if self._models else None
        if lora is None:
            raise NotFound(f"adapter {name!r} is not loaded on deployment {self.plan.name!r}")
        await self._models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=full))
        try:
            await self._llm.remove_lora(lora.lora_int_id)
        except Exception:  # already evicted from the engine's LRU cache
            logger.debug("remove_lora(%s) found nothing to free", full, exc_info=True)
        logger.info("deployment %s: adapter %s unloaded", self.plan.name, name)

    def adapters(self) -> dict[str, str]:
        if self._models is None:
            return {}
        prefix = f"{self.plan.name}:"
        return {k.removeprefix(prefix): v.lora_path for k, v in self._models.lora_requests.items()}

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineError(f"{self.plan.name}: engine is not started")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineError(f"{self.plan.name}: engine is unhealthy: {exc}") from exc

    async def _log_stats(self) -> None:
        """vLLM's engine-statistics line, as its API server writes it (INFO while busy,
        DEBUG while idle), every ``VLLM_LOG_STATS_INTERVAL`` seconds."""
        interval = float(os.environ.get("VLLM_LOG_STATS_INTERVAL", STATS_LOG_INTERVAL_S))
        while self._llm is not None:
            await asyncio.sleep(max(interval, 1.0))
            try:
                if self._llm is not None:
                    await self._llm.do_log_stats()
            except Exception:
                logger.debug("engine stats logging failed", exc_info=True)

    async def shutdown(self) -> None:
        task, self._stats_task = self._stats_task, None
        if task is not None:
            task.cancel()
        llm, self._llm = self._llm, None
        self._chat = self._completion = self._responses = self._models = None
        if llm is not None:
            try:
                llm.shutdown()
            except Exception:
                logger.warning("vLLM shutdown raised", exc_info=True)


def _ray_stat_loggers() -> list[Any] | None:
    """vLLM's metrics through Ray's (``RayPrometheusStatLogger``): inside a Ray worker they
    reach the node's metrics export port as ``ray_vllm_*``, tagged ``model_name`` (the
    deployment's name) and ``ReplicaId``. Outside Ray: vLLM's default loggers."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger
    except ImportError:
        return None
    return [RayPrometheusStatLogger]


def _check_adapter_dir(path: str, max_rank: int) -> None:
    from pathlib import Path

    cfg = Path(path) / "adapter_config.json"
    if not cfg.is_file():
        raise BadRequest(f"adapter path {path!r} has no adapter_config.json (not a PEFT adapter)")
    try:
        rank = int(json.loads(cfg.read_text(encoding="utf-8")).get("r", 0))
    except (ValueError, OSError) as exc:
        raise BadRequest(f"adapter {path!r}: unreadable adapter_config.json: {exc}") from None
    if rank > max_rank:
        raise BadRequest(f"adapter {path!r} has rank {rank}, above spec.lora.max_rank {max_rank}")


async def _chunks(gen: AsyncGenerator[str, None]) -> AsyncIterator[StreamChunk]:
    """vLLM's SSE strings as typed chunks, each parsed once; an error event raised.

    vLLM writes each event with ``model_dump_json`` and ends with ``data: [DONE]``,
    which is dropped (the gateway writes it). vLLM reports failures inside a stream as
    a ``data: {"error": ...}`` event; we raise instead (STYLE.md: never yield error
    objects inside streams), and the gateway ends the stream with an OpenAI-format
    error event. Closing this stream closes vLLM's, which aborts the request.
    """
    async with contextlib.aclosing(gen):
        async for event in gen:
            if not event.startswith("data: {"):
                continue  # "data: [DONE]"
            try:
                data = from_json(event[6:])  # json.loads' result, in a third of its time
            except ValueError:
                raise EngineError(f"unreadable stream event: {event.strip()[:200]}") from None
            if next(iter(data), None) == "error":
                err = data["error"]
                try:
                    code = int(err.get("code", 500))
                except (ValueError, TypeError, AttributeError):
                    raise EngineError(event.strip()) from None
                raise from_status(code, str(err.get("message")))
            yield StreamChunk.of(data)


async def _response_events(gen: AsyncGenerator[Any, None]) -> AsyncIterator[StreamChunk]:
    """vLLM's Responses events (pydantic objects, not SSE text) as typed chunks.

    Each is dumped as vLLM's own server writes it (by alias); the gateway writes the SSE,
    with the ``event:`` line the Responses stream has. A failure event (``type: error``)
    is raised, as in :func:`_chunks`. Closing this stream closes vLLM's.
    """
    async with contextlib.aclosing(gen):
        async for event in gen:
            data = event.model_dump(mode="json", by_alias=True)
            if data.get("type") == "error" or isinstance(data.get("error"), dict):
                err = data.get("error") if isinstance(data.get("error"), dict) else data
                try:
                    code = int(err.get("code") or 500)
                except (ValueError, TypeError):
                    code = 500
                raise from_status(code, str(err.get("message")), param=err.get("param"))
            yield StreamChunk.of(data)


def _reject_unknown_fields(body: dict, request_cls: Any) -> None:
    """vLLM's request models accept unknown fields (and only log them); we refuse them,
    so a misspelt or removed option is a 400 rather than a silent 200."""

    known = set(request_cls.model_fields)
    for field in request_cls.model_fields.values():
        if field.alias:
            known.add(field.alias)
    unknown = sorted(set(body) - known)
    if unknown:
        more = did_you_mean(unknown[0], sorted(known))
        raise BadRequest(f"unknown field {unknown[0]!r}{more}", param=unknown[0])
