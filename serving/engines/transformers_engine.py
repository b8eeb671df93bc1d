"""The CPU fallback engine: Hugging Face transformers + PEFT behind the ``Engine`` protocol.

It serves where vLLM cannot: a host without vLLM, or bitsandbytes quantisation
(``bnb_nf4`` / ``bnb_int8``, which vLLM 0.32+ lacks). It speaks the same OpenAI body
shapes as vLLM's server (ids, chunks, usage, error messages) so clients cannot tell
the two apart, and refuses (400, naming the parameter) what it cannot honour rather
than silently ignoring it.

Limits, by design: **one sequence at a time**. Requests are serialised with an
``asyncio.Lock`` (FIFO) and each runs ``model.generate`` in the engine's single worker
thread, so the event loop never blocks; ``n`` must be 1, no logprobs, no tool calls.
LoRA adapters are PEFT adapters on one shared model; a request picks its adapter (or
the base model, with the adapters disabled) while it holds the lock.

Example:
    >>> engine = TransformersEngine(plan.with_model_path("/models/tiny"))  # doctest: +SKIP
    >>> await engine.start()                                               # doctest: +SKIP
    >>> out = await engine.completion({"model": "tiny", "prompt": "The quick",
    ...                                "max_tokens": 8}, adapter=None)     # doctest: +SKIP
    >>> out["choices"][0]["finish_reason"]                                 # doctest: +SKIP
    'length'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qingliang.platform.errors import BadRequest, EngineError, NotFound
from qingliang.serving.engine import EngineOutput, StreamChunk, Usage
from qingliang.serving.engines._hf_load import (
    adapter_config,
    context_length,
    eos_ids_of,
    quiet_bnb_int8_warning,
    same_path,
    set_threads,
    strip_lora_layers,
)
from qingliang.serving.engines._hf_request import (
    CHAT_KEYS,
    COMPLETION_KEYS,
    Request,
    build_request,
    check_keys,
    is_int,
    message_of,
)
from qingliang.serving.engines._hf_run import Run, usage_of
from qingliang.serving.manifest import ADAPTER_RE
from qingliang.serving.plan import DeploymentPlan

logger = logging.getLogger(__name__)


class TransformersEngine:
    """Serve one ``DeploymentPlan`` with transformers (+ PEFT, + bitsandbytes) in-process.

    The constructor does no I/O; :meth:`start` loads the model. See the module
    docstring for the one-sequence-at-a-time contract.
    """

    def __init__(self, plan: DeploymentPlan) -> None:
        self._plan = plan
        self._model: Any = None  # the transformers model (LoRA layers injected in place)
        self._peft: Any = None  # the PeftModel wrapping it once an adapter is loaded
        self._tok: Any = None
        self._device: Any = None
        self._eos_ids: set[int] = set()
        self._defaults: dict[str, Any] = {}
        self._max_len: int | None = None
        self._vocab = 0
        self._pad_id: int | None = None
        self._adapters: dict[str, str] = {}  # name → path, as loaded
        # name → PEFT adapter name: PEFT keys modules by adapter name, so "v1.2" would fail
        # and "a" (a substring of "lora_") would trip its weight-loading heuristics.
        self._peft_names: dict[str, str] = {}
        self._serial = 0
        self._lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._runs: set[Run] = set()

    # ----------------------------------------------------------------- lifecycle

    @property
    def max_model_len(self) -> int:
        """Context length in tokens: the plan's, else the model's once started (0 before).

        Never raises: ``isinstance(engine, Engine)`` evaluates this property.
        """
        return self._max_len or self._plan.options.max_model_len or 0

    async def start(self) -> None:
        """Load tokenizer, model and the plan's adapters. Raises EngineError on failure."""
        if self._model is not None:
            return
        plan = self._plan
        if not plan.model_path:
            raise EngineError(f"{plan.name}: the model source was not resolved to a local path")
        threads = plan.options.cpu_threads
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"tf-{plan.name}",
            initializer=set_threads,
            initargs=(threads,),
        )
        try:
            await self._in_worker(self._load)
            for name, path in plan.adapters:
                await self.load_adapter(name, path)
        except BaseException as exc:
            await self.shutdown()
            if isinstance(exc, EngineError) or not isinstance(exc, Exception):
                raise
            raise EngineError(f"{plan.name}: cannot start: {exc}") from exc
        logger.info(
            "%s: transformers engine ready (%s, dtype %s, quantization %s, max_model_len %d)",
            plan.name,
            plan.model_path,
            plan.dtype,
            plan.quantization,
            self._max_len,
        )

    def _load(self) -> None:
        plan = self._plan
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        set_threads(plan.options.cpu_threads)
        torch.manual_seed(plan.options.seed)
        if plan.accelerator == "cpu":
            device = torch.device("cpu")
        elif plan.accelerator == "gpu" and torch.cuda.is_available():
            device = torch.device("cuda")
        else:
            raise EngineError(
                f"{plan.name}: the transformers engine cannot use accelerator "
                f"{plan.accelerator!r} here (cuda available: {torch.cuda.is_available()})"
            )
        dtype: Any = "auto" if plan.dtype == "auto" else getattr(torch, plan.dtype)
        if plan.dtype == "auto" and device.type == "cpu":
            dtype = torch.float32
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": plan.trust_remote_code}
        if plan.quantization in ("bnb_nf4", "bnb_int8"):
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise EngineError(
                    f"{plan.name}: quantization {plan.quantization} needs the bitsandbytes "
                    "package (pip install 'bitsandbytes>=0.45')"
                )
            compute = dtype if isinstance(dtype, torch.dtype) else None
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
                )
                if plan.quantization == "bnb_nf4"
                else BitsAndBytesConfig(load_in_8bit=True)
            )
            kwargs["device_map"] = {"": device}
            quiet_bnb_int8_warning()
        elif plan.quantization:
            raise EngineError(
                f"{plan.name}: quantization {plan.quantization!r} is not available in the "
                "transformers engine (it serves bnb_nf4 and bnb_int8; use engine vllm)"
            )
        try:
            tok = AutoTokenizer.from_pretrained(
                plan.tokenizer or plan.model_path, trust_remote_code=plan.trust_remote_code
            )
            model: Any = AutoModelForCausalLM.from_pretrained(plan.model_path, **kwargs)
        except Exception as exc:
            what = f" with {plan.quantization} on {device.type}" if plan.quantization else ""
            raise EngineError(
                f"{plan.name}: cannot load {plan.model_path}{what}: {type(exc).__name__}: {exc}"
            ) from exc
        if "device_map" not in kwargs:
            model.to(device)
        model.eval()
        self._max_len = context_length(plan, model.config)
        self._eos_ids = eos_ids_of(model.generation_config, tok)
        gc = model.generation_config
        # vLLM's default: sampling fields from generation_config.json, unless requested.
        self._defaults = {
            k: getattr(gc, k)
            for k in ("temperature", "top_p", "top_k", "repetition_penalty")
            if getattr(gc, k, None) is not None
        }
        self._vocab = int(getattr(model.config.get_text_config(), "vocab_size", None) or len(tok))
        pad = tok.pad_token_id
        self._pad_id = pad if pad is not None else min(self._eos_ids, default=None)
        self._tok, self._model, self._device = tok, model, device

    async def check_health(self) -> None:
        """Raise EngineError unless the model is loaded and the worker thread is alive."""
        if self._model is None or self._executor is None:
            raise EngineError(f"{self._plan.name}: the engine is not running")

    async def shutdown(self) -> None:
        """Stop running generations, free the model and the worker thread (idempotent)."""
        executor, self._executor = self._executor, None  # from here check_health fails
        for run in list(self._runs):
            run.cancel.set()  # generation stops at its next token
        if executor is not None:
            # Not the lock: a stream its client stopped reading may hold it until collected.
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        self._peft = self._model = self._tok = None
        self._adapters.clear()
        self._peft_names.clear()
        import gc

        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ adapters

    async def _in_worker(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the worker thread (the only thread that touches the model)."""
        if self._executor is None:
            raise EngineError(f"{self._plan.name}: the engine is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def adapters(self) -> dict[str, str]:
        """Adapters currently servable: name → path."""
        return dict(self._adapters)

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a PEFT LoRA adapter under ``name`` (idempotent for the same path)."""
        plan = self._plan
        await self.check_health()
        if not plan.lora_enabled:
            raise BadRequest(
                f"deployment {plan.name!r} was started without LoRA; set spec.lora.enabled: "
                "true to load adapters",
                param="adapter",
            )
        if not ADAPTER_RE.match(name):
            raise BadRequest(
                f"adapter name {name!r} is invalid: 1-64 letters, digits, '.', '_' or '-'",
                param="adapter",
            )
        config = adapter_config(name, path, plan.max_lora_rank)
        async with self._lock:
            known = self._adapters.get(name)
            if known is not None and same_path(known, path):
                return
            if known is None and len(self._adapters) >= plan.max_loras:
                raise BadRequest(
                    f"cannot load adapter {name!r}: {len(self._adapters)} adapters are loaded "
                    f"and max_loras is {plan.max_loras} (spec.lora.max_adapters); unload one",
                    param="adapter",
                )
            self._serial += 1
            peft_name = f"adapter{self._serial}"
            await self._in_worker(self._load_adapter_sync, name, peft_name, path)
            # A new path for a loaded name replaces it: the new weights are loaded under
            # a fresh internal name first, so requests never see the adapter missing.
            previous = self._peft_names.get(name)
            self._adapters[name], self._peft_names[name] = path, peft_name
            if previous is not None:
                await self._in_worker(self._drop_adapter_sync, previous)
        logger.info("%s: loaded adapter %s (r=%s) from %s", plan.name, name, config["r"], path)

    def _load_adapter_sync(self, name: str, peft_name: str, path: str) -> None:
        from peft import PeftModel

        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(
                    self._model, path, adapter_name=peft_name, is_trainable=False
                )
            else:
                self._peft.load_adapter(path, adapter_name=peft_name, is_trainable=False)
        except Exception as exc:
            self._drop_adapter_sync(peft_name, failed=True)
            raise BadRequest(
                f"adapter {name!r} at {path} cannot be loaded on {self._plan.name}: "
                f"{type(exc).__name__}: {exc}",
                param="adapter",
            ) from exc
        self._peft.eval()

    async def unload_adapter(self, name: str) -> None:
        """Stop serving adapter ``name``; unknown names raise NotFound."""
        async with self._lock:
            if name not in self._adapters:
                raise NotFound(
                    f"adapter {name!r} is not loaded in deployment {self._plan.name!r}",
                    param="adapter",
                )
            peft_name = self._peft_names.pop(name)
            del self._adapters[name]
            try:
                await self._in_worker(self._drop_adapter_sync, peft_name)
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError(
                    f"{self._plan.name}: unloading adapter {name!r} failed: {exc}"
                ) from exc
        logger.info("%s: unloaded adapter %s", self._plan.name, name)

    def _drop_adapter_sync(self, peft_name: str, failed: bool = False) -> None:
        peft = self._peft
        if peft is None:
            if failed:
                strip_lora_layers(self._model)  # a failed first load may leave layers behind
            return
        others = [a for a in peft.peft_config if a != peft_name]
        if not others:
            # PEFT cannot run with zero adapters: unwrap back to the plain model.
            self._model, self._peft = peft.unload(), None
            return
        if peft_name in peft.peft_config:
            peft.set_adapter(others[0], inference_mode=True)
            peft.delete_adapter(peft_name)

    @contextlib.contextmanager
    def _using(self, adapter: str | None) -> Iterator[Any]:
        """The model to generate with, set to ``adapter`` (None: adapters disabled)."""
        if self._peft is None:
            yield self._model
        elif adapter is None:
            with self._peft.disable_adapter():
                yield self._peft
        else:
            self._peft.set_adapter(self._peft_names[adapter], inference_mode=True)
            yield self._peft

    # --------------------------------------------------------------- generation

    async def chat(self, body: dict, *, adapter: str | None) -> EngineOutput:
        """Serve an OpenAI chat-completions body (``messages``; chat template applied)."""
        await self.check_health()
        check_keys(body, CHAT_KEYS)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("`messages` must be a non-empty list", param="messages")
        if getattr(self._tok, "chat_template", None) is None:
            raise BadRequest(
                f"model {self._plan.name!r} has no chat template; use /v1/completions",
                param="messages",
            )
        extra = body.get("chat_template_kwargs") or {}
        if not isinstance(extra, dict):
            raise BadRequest(
                "`chat_template_kwargs` must be an object", param="chat_template_kwargs"
            )
        try:
            text = self._tok.apply_chat_template(
                [message_of(m) for m in messages],
                tokenize=False,
                add_generation_prompt=True,
                **extra,
            )
        except BadRequest:
            raise
        except Exception as exc:  # jinja2 TemplateError, raise_exception() in templates
            raise BadRequest(f"chat template failed: {exc}", param="messages") from exc
        ids = self._tok(text, add_special_tokens=False)["input_ids"]
        return await self._serve("chat", body, ids, adapter, "messages")

    async def completion(self, body: dict, *, adapter: str | None) -> EngineOutput:
        """Serve an OpenAI completions body (one prompt: text or token ids)."""
        await self.check_health()
        check_keys(body, COMPLETION_KEYS)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = self._tok(prompt)["input_ids"]
        elif isinstance(prompt, list) and prompt and all(is_int(t) for t in prompt):
            ids = list(prompt)
            if max(ids) >= self._vocab or min(ids) < 0:
                raise BadRequest("`prompt` holds token ids outside the vocabulary", param="prompt")
        else:
            raise BadRequest(
                "`prompt` must be one string or one list of token ids (the transformers "
                "engine serves one prompt per request)",
                param="prompt",
            )
        return await self._serve("completion", body, ids, adapter, "prompt")

    async def _serve(
        self, kind: str, body: dict, ids: list[int], adapter: str | None, what: str
    ) -> EngineOutput:
        if not ids:
            raise BadRequest(f"the {what} is empty after tokenization", param=what)
        self._check_adapter(adapter)
        req = build_request(
            kind,
            body,
            ids,
            adapter,
            what,
            max_len=self._max_len,
            model_name=self._plan.name,
            defaults=self._defaults,
        )
        logger.debug(
            "%s: %s %s prompt=%d max_tokens=%d",
            self._plan.name,
            kind,
            req.id,
            len(ids),
            req.max_tokens,
        )
        if req.stream:
            return self._stream(req)
        return await self._respond(req)

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self._adapters:
            raise NotFound(
                f"adapter {adapter!r} is not loaded in deployment {self._plan.name!r}",
                param="model",
            )

    async def _events(self, req: Request) -> AsyncGenerator[tuple, None]:
        """Run one generation in the worker thread; yield ("delta", text), then ("end", run)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple] = asyncio.Queue()

        def post(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody listens any more
                run.cancel.set()

        await self._lock.acquire()
        run = Run(req, self._tok, self._eos_ids, post)
        future = None
        try:
            executor = self._executor
            if executor is None:
                raise EngineError(f"{self._plan.name}: the engine is not running")
            self._check_adapter(req.adapter)  # it may have been unloaded while we queued
            self._runs.add(run)
            future = loop.run_in_executor(executor, self._generate_sync, run)
            while True:
                event = await queue.get()
                if event[0] == "error":
                    raise event[1]
                yield event
                if event[0] == "end":
                    return
        finally:
            run.cancel.set()  # the client stopped reading, or we are done: stop generating
            self._runs.discard(run)
            if future is None or future.done():
                self._lock.release()
            else:
                future.add_done_callback(lambda _f: self._lock.release())

    def _generate_sync(self, run: Run) -> None:
        """Worker thread: ``model.generate`` with ``run`` as stopping criterion."""
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        req = run.req
        try:
            config = GenerationConfig(
                max_new_tokens=req.max_tokens,
                num_beams=1,
                num_return_sequences=1,
                eos_token_id=sorted(self._eos_ids) or None,
                pad_token_id=self._pad_id,
                **req.sampling,
            )
            ids = torch.tensor([req.prompt_ids], dtype=torch.long, device=self._device)
            # A seed applies to this request only: fork the RNG so the global stream goes on.
            rng: Any = contextlib.nullcontext()
            if req.seed is not None:
                cuda = [self._device] if self._device.type == "cuda" else []
                rng = torch.random.fork_rng(devices=cuda)
            with rng, torch.inference_mode(), self._using(req.adapter) as model:
                if req.seed is not None:
                    torch.manual_seed(req.seed)
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([run]),
                )
            if run.finish_reason is None:  # cancelled, or generate ended on its own
                run.finish_reason = "length" if run.n_tokens >= req.max_tokens else "stop"
                run._flush()
            run.post(("end", run))
        except Exception as exc:
            logger.exception("%s: generation %s failed", self._plan.name, req.id)
            err = EngineError(f"{self._plan.name}: generation failed: {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            run.post(("error", err))

    async def _respond(self, req: Request) -> dict:
        parts: list[str] = []
        run: Run | None = None
        async with contextlib.aclosing(self._events(req)) as events:
            async for event in events:
                if event[0] == "delta":
                    parts.append(event[1])
                else:
                    run = event[1]
        assert run is not None
        text = "".join(parts)
        choice: dict[str, Any] = {"index": 0}
        if req.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=run.finish_reason, stop_reason=run.stop_reason)
        return {
            "id": req.id,
            "object": "chat.completion" if req.kind == "chat" else "text_completion",
            "created": req.created,
            "model": req.model,
            "choices": [choice],
            "usage": usage_of(req, run),
        }

    async def _stream(self, req: Request) -> AsyncIterator[StreamChunk]:
        """Chunks shaped like vLLM's events: role chunk, one per text delta, finish, usage."""
        chat = req.kind == "chat"
        head = {
            "id": req.id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": req.created,
            "model": req.model,
        }

        def chunk(
            delta: str | None, finish: str | None = None, stop: str | None = None
        ) -> StreamChunk:
            choice: dict[str, Any] = {"index": 0}
            if chat:
                choice["delta"] = {} if delta is None else {"content": delta}
            else:
                choice["text"] = delta or ""
            choice.update(logprobs=None, finish_reason=finish)
            if finish is not None:
                choice["stop_reason"] = stop
            return StreamChunk({**head, "choices": [choice]})

        async with contextlib.aclosing(self._events(req)) as events:
            if chat:
                first = {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                yield StreamChunk({**head, "choices": [first]})
            async for event in events:
                if event[0] == "delta":
                    yield chunk(event[1])
                    continue
                run: Run = event[1]
                yield chunk(None, run.finish_reason, run.stop_reason)
                if req.include_usage:
                    usage = usage_of(req, run)
                    yield StreamChunk({**head, "choices": [], "usage": usage}, Usage(**usage))


# ---------------------------------------------------------------------- helpers
