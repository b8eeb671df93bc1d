"""What every domain bundle's training must hold, checked the same way for the three:
its release pipeline, its fine-tune job and its dataset, cut in a fresh store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401  (FineTuneJob, Pipeline)
from qingliang.platform.control import demos
from qingliang.platform.lifecycle.data._governance import is_eval
from qingliang.platform.lifecycle.data.store import DatasetStore
from qingliang.platform.manifests.loader import load_paths

KINDS = ("dataset", "finetune", "pipeline")


def check_training(bundle: Path, adapter: str, sft: Path, tmp_path: Path) -> dict[str, Any]:
    """The bundle trains ``adapter`` on the pairs of ``sft`` and releases it behind
    ``qwen-coder:<adapter>``; its dataset keeps every pair and splits them by the manifest's
    rule, none lost and none in both splits. Returns the loaded manifests by kind."""
    b = demos.Bundle.load(bundle)
    assert [p.name for p in b.training] == ["train-pipeline.yaml"]
    loaded = {i.kind: i.manifest for i in load_paths([bundle / f"train-{k}.yaml" for k in KINDS])}
    job, dataset, pipeline = loaded["FineTuneJob"], loaded["Dataset"], loaded["Pipeline"]
    assert job.spec.output.adapter == adapter
    assert job.spec.data.dataset == dataset.metadata.name
    assert [s.type for s in pipeline.spec.steps] == [
        "govern", "finetune", "evaluate", "approval", "canary", "promote"
    ]  # fmt: skip
    # Released behind the alias the desk calls; `demo up` creates it first.
    (canary,) = [s for s in pipeline.spec.steps if s.type == "canary"]
    assert (canary.deployment, canary.alias) == ("qwen-coder", adapter)
    assert b.adapter_aliases() == [("qwen-coder", adapter)]

    store = DatasetStore(tmp_path / "datasets", env={"QL_SALT": "pepper"})
    v = store.cut(dataset, bundle, actor="tester")
    pairs = [json.loads(line)["messages"] for line in sft.read_text("utf-8").splitlines()]
    assert v.quarantined == 0 and v.records == len(pairs), v
    train = store.read(dataset.metadata.name, v.version, "train")
    held = store.read(dataset.metadata.name, v.version, "eval")
    # The split is a keyed hash of each record's id (the store's own secret): which pairs
    # are held out differs from store to store, but the rule, and that both sides have
    # records, do not.
    split = dataset.spec.split
    assert train and held, v
    assert all(is_eval(r["id"], split.eval_fraction, split.seed) for r in held)
    assert not any(is_eval(r["id"], split.eval_fraction, split.seed) for r in train)
    kept = sorted(json.dumps(r["messages"], sort_keys=True) for r in train + held)
    assert kept == sorted(json.dumps(p, sort_keys=True) for p in pairs)
    return loaded
