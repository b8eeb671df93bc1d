"""What prefix caching (on by default, docs/serving.md "vLLM engine options") buys on
vLLM's CPU build: the time to answer requests that share a long system prompt, with
``enable-prefix-caching`` on (the platform's default) and off (``vllm_args``).

Each setting runs in its own process through the platform's own engine
(:class:`~qingliang.serving.engines.vllm_engine.VLLMEngine`, the argv a deployment gets):
the packaged Qwen2.5-Coder-0.5B (converted once by ``qingliang up``; ``--model`` names
another folder), a ~1,000-token system prompt, then ``--requests`` questions one after
another, each answered with one token (so the time is the prefill's). The first request
fills the cache; the table shows the later ones' median.

Run: ``.venv/bin/python bench/prefix_cache.py`` (about 3 minutes on 2 cores). Nothing is
asserted: the figures go to bench/RESULTS.md with the machine and the date.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SYSTEM = (
    "You are the help desk of a city's public services. Answer in one short sentence. "
    + " ".join(
        f"Rule {i}: requests about service {i} go to office {i % 7}, open weekdays from "
        f"{8 + i % 3} to {17 + i % 2}, and need form F-{100 + i}."
        for i in range(45)
    )
)


def default_model() -> Path | None:
    home = Path(os.environ.get("QINGLIANG_HOME", Path.home() / ".qingliang"))
    found = sorted((home / "models").glob("qwen2.5-coder-0.5b-instruct-*"))
    return found[0] if found else None


async def run(model: Path, caching: bool, requests: int) -> dict:
    from qingliang.serving.engines.vllm_engine import VLLMEngine
    from qingliang.serving.manifest import ModelDeployment
    from qingliang.serving.plan import HardwareProfile, compile_plan

    md = ModelDeployment.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "ModelDeployment",
            "metadata": {"name": "bench"},
            "spec": {
                "model": {"source": str(model)},
                "engine": {
                    "max_model_len": 2048,
                    "kv_cache_gib": 2,
                    "cpu_threads": 2,
                    "vllm_args": {
                        "enable-prefix-caching": caching,
                        "enable-prompt-tokens-details": True,  # usage says what was cached
                    },
                },
                "placement": {"cpus": 2},
            },
        }
    )
    plan = compile_plan(md, HardwareProfile.detect()).with_model_path(str(model))
    engine = VLLMEngine(plan)
    await engine.start()
    times, cached, prompt_tokens = [], [], 0
    try:
        for i in range(requests):
            body = {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Where do I take a request about service {i}?"},
                ],
                "max_tokens": 1,
                "temperature": 0,
            }
            start = time.perf_counter()
            out = await engine.chat(body, adapter=None)
            times.append(time.perf_counter() - start)
            prompt_tokens = out["usage"]["prompt_tokens"]
            details = out["usage"].get("prompt_tokens_details") or {}
            cached.append(int(details.get("cached_tokens") or 0))
    finally:
        await engine.shutdown()
    return {"caching": caching, "first_s": times[0], "later_s": times[1:],
            "cached": cached[1:], "prompt_tokens": prompt_tokens}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    model = args.model or default_model()
    if model is None:
        sys.exit("no converted Qwen2.5-Coder-0.5B under $QINGLIANG_HOME/models: run qingliang up")
    if args.child:
        result = asyncio.run(run(model, args.child == "on", args.requests))
        print("RESULT " + json.dumps(result))
        return
    rows = []
    for mode in ("on", "off"):
        cmd = [sys.executable, __file__, "--child", mode, "--model", str(model),
               "--requests", str(args.requests)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:]))
    print(f"{platform.node()} {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, "
          f"model {model.name}, prompt {rows[0]['prompt_tokens']} tokens")  # fmt: skip
    print("| prefix caching | first request | later requests, median | min | max | cached tokens |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        later, mode = r["later_s"], "on" if r["caching"] else "off"
        print(f"| {mode} | {r['first_s']:.2f} s | {statistics.median(later):.3f} s | "
              f"{min(later):.3f} s | {max(later):.3f} s | "
              f"{statistics.median(r['cached']):.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
