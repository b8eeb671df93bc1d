"""Fine-tuning measurements for a benchmark script (private helpers).

:func:`measure` runs the shared LoRA / QLoRA loop
(:func:`qingliang.platform.lifecycle.finetune.train.train`) for a few optimizer steps in a fresh
``spawn`` process, so its peak RSS belongs to that run alone, and returns step times,
throughput and memory. The first ``warmup`` steps are left out of the medians (the first
step pays one-off costs). The data is a fixed set of bilingual records cut to
``seq_len`` tokens, so every micro-batch is ``batch_size x seq_len`` tokens.

Run directly for the tiny model and a model directory of your choice::

    $ .venv/bin/python bench/_finetune.py                       # tiny Llama, both methods
    $ .venv/bin/python bench/_finetune.py /path/to/hf-model 2 64  # + that model, 2 steps

Example:
    >>> m = measure("/tmp/tiny", "qlora", steps=6, seq_len=64, warmup=2)  # doctest: +SKIP
    >>> m["step_s_median"], m["rss_during_steps_median_mb"], m["peak_rss_mb"]  # doctest: +SKIP
    (0.018, 572.6, 573.1)
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

_TEXT = (
    "Qingliang deploys quantised, LoRA-fine-tuned models with vLLM on Ray. "
    "轻量平台用 YAML 清单部署模型, 并在 Ray 集群上编排微调、数据治理和多智能体工作流。 "
    "A request passes the gateway, the learned router, the agents and the knowledge layer. "
)


def records(n: int = 8) -> list[dict[str, Any]]:
    """``n`` instruction records whose answers are long enough to fill any ``seq_len``."""
    return [
        {"instruction": f"Describe the platform, part {i}.", "output": _TEXT * 40} for i in range(n)
    ]


def _status_mb(key: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_now_mb() -> float:
    """Current resident memory of this process in MiB (``VmRSS``)."""
    return _status_mb("VmRSS")


def rss_peak_mb() -> float:
    """Peak resident memory of this process so far in MiB (``VmHWM``)."""
    return _status_mb("VmHWM")


def trim_heap() -> bool:
    """Give the C heap's free memory back to the OS (glibc ``malloc_trim``); False if absent.

    Loading keeps transient copies of the weights (bf16 as read, fp32, and for QLoRA the
    unquantised weights); glibc keeps the freed memory in the process, so without this the
    RSS during steps still counts them (~1.1 GiB for Qwen2.5-0.5B with QLoRA).
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _child(queue: Any, kwargs: dict[str, Any]) -> None:
    try:
        queue.put(("ok", _run(**kwargs)))
    except BaseException as exc:  # report anything to the parent, then exit
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _run(
    model_dir: str,
    method: str,
    steps: int,
    seq_len: int,
    batch_size: int,
    r: int,
    threads: int,
    warmup: int,
    trim: bool,
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from qingliang.platform.lifecycle.finetune.train import LoraSettings, TrainSettings, train

    rss_after_import = rss_now_mb()
    events: list[dict[str, Any]] = []
    step_rss: list[float] = []
    untrimmed: list[float] = []

    def on_progress(event: dict[str, Any]) -> None:
        events.append(event)
        if trim and not untrimmed:  # once, at the end of the first step
            untrimmed.append(rss_now_mb())
            trim_heap()
        step_rss.append(rss_now_mb())

    settings = TrainSettings(
        method=method,  # type: ignore[arg-type]
        learning_rate=1e-4,
        max_steps=steps,
        batch_size=batch_size,
        max_seq_len=seq_len,
        lora=LoraSettings(r=r, alpha=2 * r, dropout=0.05),
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qingliang-ft-bench-") as tmp:
        result = train(
            model_dir,
            records(max(8, batch_size)),
            Path(tmp) / "out",
            settings,
            on_progress=on_progress,
        )
        metrics = dict(result.metrics)
    total_s = time.perf_counter() - started
    # VmHWM, not ru_maxrss (train's peak_rss_mb): the spawned child is forked, then
    # exec'd, and Linux carries the parent's high-water mark over into ru_maxrss.
    peak = max(rss_peak_mb(), *step_rss)
    elapsed = [e["elapsed_s"] for e in events if e["kind"] == "train"]
    step_s = [b - a for a, b in zip([0.0, *elapsed], elapsed, strict=False)]
    tokens = [e["tokens_per_s"] for e in events if e["kind"] == "train"]
    # The measured steps: those after the warm-up (all of them if there are no others).
    skip = warmup if len(step_s) > warmup else 0
    measured_rss = step_rss[skip:] or step_rss
    return {
        "model": Path(model_dir).name,
        "method": method,
        "steps": result.steps,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "r": r,
        "threads": threads,
        "trainable_params": metrics["trainable_params"],
        "load_s": metrics["load_time_s"],
        "total_s": total_s,
        "warmup": skip,
        "step_s": step_s,
        "first_step_s": step_s[0],
        "step_s_median": statistics.median(step_s[skip:]),
        "step_s_median_after_first": statistics.median(step_s[1:] or step_s),
        "tokens_per_s_median": statistics.median(tokens[skip:]),
        "loss": list(result.train_loss),
        "rss_after_import_mb": rss_after_import,
        "rss_step_mb": step_rss,
        "rss_first_step_untrimmed_mb": untrimmed[0] if untrimmed else None,
        "rss_during_steps_median_mb": statistics.median(measured_rss),
        "rss_during_steps_max_mb": max(measured_rss),
        "peak_rss_mb": peak,
        "ru_maxrss_mb": result.peak_rss_mb,
        "versions": metrics["versions"],
    }


def measure(
    model_dir: str | Path,
    method: str,
    steps: int,
    seq_len: int,
    *,
    batch_size: int = 2,
    r: int = 8,
    threads: int = 1,
    warmup: int = 1,
    trim: bool = True,
    timeout_s: float = 1800,
) -> dict[str, Any]:
    """Train ``steps`` steps of ``method`` on ``model_dir`` in a fresh process; timings.

    Returns every step time (``step_s``) and the median of those after the first
    ``warmup`` (``step_s_median``; all steps when there are no more than ``warmup``),
    tokens/s (median of the same steps), load time, and memory in MiB: the RSS after
    importing torch/transformers/peft, the RSS at the end of every step
    (``rss_step_mb``) with the median and maximum over the measured steps, and the peak
    RSS of the process (``VmHWM``; it may be set while loading the model). The
    ``ru_maxrss_mb`` that training reports is kept for reference: it starts at the
    parent's RSS when the child was forked, so it is no measure of this run.

    With ``trim`` (the default) the process gives its freed heap back to the OS once,
    at the end of the first step (:func:`trim_heap`; the RSS just before is
    ``rss_first_step_untrimmed_mb``), so the RSS of the later steps is the memory
    training holds rather than what loading left behind.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    kwargs = {
        "model_dir": str(model_dir),
        "method": method,
        "steps": steps,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "r": r,
        "threads": threads,
        "warmup": warmup,
        "trim": trim,
    }
    proc = ctx.Process(target=_child, args=(queue, kwargs))
    proc.start()
    deadline = time.monotonic() + timeout_s
    status, value = "error", f"no result within {timeout_s} s"
    try:
        while time.monotonic() < deadline:
            try:
                status, value = queue.get(timeout=2)
                break
            except Empty:
                if not proc.is_alive():  # died without reporting (OOM kill, crash)
                    status, value = "error", f"the child exited with code {proc.exitcode}"
                    break
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status != "ok":
        raise RuntimeError(f"fine-tuning measurement failed: {value}")
    return value


def main(argv: list[str]) -> None:
    from qingliang.serving.tiny_model import build_tiny_llama

    results = []
    with tempfile.TemporaryDirectory(prefix="qingliang-tiny-") as tmp:
        tiny = build_tiny_llama(Path(tmp) / "tiny")
        for method in ("lora", "qlora"):
            results.append(measure(tiny, method, steps=10, seq_len=128, batch_size=4, warmup=2))
    if argv:
        model = argv[0]
        steps = int(argv[1]) if len(argv) > 1 else 2
        seq_len = int(argv[2]) if len(argv) > 2 else 64
        for method in ("lora", "qlora"):
            results.append(measure(model, method, steps=steps, seq_len=seq_len, warmup=1))
    for res in results:
        res.pop("versions", None)
        print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])
