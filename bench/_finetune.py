"""Fine-tuning measurements for a benchmark script (private helpers).

:func:`measure` runs the shared LoRA / QLoRA loop
(:func:`qingliang.platform.finetune.train.train`) for a few optimizer steps in a fresh
``spawn`` process, so its peak RSS belongs to that run alone, and returns step times,
throughput and memory. The data is a fixed set of bilingual records cut to
``seq_len`` tokens, so every micro-batch is ``batch_size x seq_len`` tokens.

Run directly for the tiny model and a model directory of your choice::

    $ .venv/bin/python bench/_finetune.py                       # tiny Llama, both methods
    $ .venv/bin/python bench/_finetune.py /path/to/hf-model 2 64  # + that model, 2 steps

Example:
    >>> m = measure("/tmp/tiny", "qlora", steps=4, seq_len=64)  # doctest: +SKIP
    >>> sorted(m)[:3]                                             # doctest: +SKIP
    ['batch_size', 'load_s', 'method']
"""

from __future__ import annotations

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


def rss_now_mb() -> float:
    """Current resident memory of this process in MiB (``VmRSS``)."""
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


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
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from qingliang.platform.finetune.train import (
        LoraSettings,
        TrainSettings,
        peak_rss_mb,
        train,
    )

    rss_after_import = peak_rss_mb()
    events: list[dict[str, Any]] = []
    step_rss: list[float] = []

    def on_progress(event: dict[str, Any]) -> None:
        events.append(event)
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
    elapsed = [e["elapsed_s"] for e in events if e["kind"] == "train"]
    step_s = [b - a for a, b in zip([0.0, *elapsed], elapsed, strict=False)]
    later = step_s[1:] or step_s
    tokens = [e["tokens_per_s"] for e in events if e["kind"] == "train"]
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
        "step_s": step_s,
        "first_step_s": step_s[0],
        "step_s_median_after_first": statistics.median(later),
        "tokens_per_s_median": statistics.median(tokens),
        "loss": list(result.train_loss),
        "rss_after_import_mb": rss_after_import,
        "peak_rss_mb": result.peak_rss_mb,
        "rss_during_steps_max_mb": max(step_rss, default=0.0),
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
    timeout_s: float = 1800,
) -> dict[str, Any]:
    """Train ``steps`` steps of ``method`` on ``model_dir`` in a fresh process; timings.

    Returns step times (``step_s``; the first includes one-off warm-up), the median
    of the later ones, tokens/s, load time, and peak RSS of the process (MiB), with
    the RSS already taken after importing torch/transformers/peft and the largest
    current RSS seen at the end of a step (the peak may be set while loading).
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
            results.append(measure(tiny, method, steps=10, seq_len=128, batch_size=4))
    if argv:
        model = argv[0]
        steps = int(argv[1]) if len(argv) > 1 else 2
        seq_len = int(argv[2]) if len(argv) > 2 else 64
        for method in ("lora", "qlora"):
            results.append(measure(model, method, steps=steps, seq_len=seq_len))
    for res in results:
        res.pop("versions", None)
        print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])
