"""Pipeline run log: events written per second by one RunStore (the cost of each
training step's progress event in a pipeline run). Prints JSON; no timed assertions.

    .venv/bin/python bench/runlog.py [--events 2000] [--repeats 3] [--store PATH.py]

``--store`` measures another version of ``platform/lifecycle/pipelines/runs.py`` (e.g. one written
out with ``git show REV:platform/lifecycle/pipelines/runs.py``), for before/after figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _store_module(path: Path | None) -> Any:
    if path is None:
        from qingliang.platform.lifecycle.pipelines import runs

        return runs
    spec = importlib.util.spec_from_file_location("runs_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["runs_under_test"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", type=Path, default=None, help="another runs.py to measure")
    args = parser.parse_args(argv)
    runs = _store_module(args.store)
    rates = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as root:
            store = runs.RunStore(Path(root))
            store.create("r1", "p", {}, root, "bench")
            started = time.perf_counter()
            for i in range(args.events):
                store.event("r1", "finetune", "progress", {"train_step": i, "loss": 1.0})
            rates.append(args.events / (time.perf_counter() - started))
            if hasattr(store, "close"):
                store.close()
    print(
        json.dumps(
            {
                "store": str(args.store or "platform/lifecycle/pipelines/runs.py"),
                "events": args.events,
                "repeats": args.repeats,
                "events_per_s_median": round(statistics.median(rates)),
                "events_per_s": [round(r) for r in rates],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
