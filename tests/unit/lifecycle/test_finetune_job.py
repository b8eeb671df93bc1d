"""FineTuneJob runs: real DatasetStore, real training on the tiny Llama, real registry.
The steps run on the InlineExecutor; tests/integration/test_pipelines.py runs them as Ray
tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qingliang.platform.errors import BadRequest, Conflict, NotFound
from qingliang.platform.lifecycle.data.manifest import Dataset
from qingliang.platform.lifecycle.data.store import DatasetStore
from qingliang.platform.lifecycle.finetune.job import run_job
from qingliang.platform.lifecycle.pipelines.executor import (
    InlineExecutor,
    StepFailed,
    run_to_result,
)
from qingliang.platform.lifecycle.registry import Registry
from qingliang.serving.tiny_model import build_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("job") / "tiny")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A data directory holding one cut of dataset `faq` (40 records)."""
    home = tmp_path / "home"
    src = tmp_path / "src"
    src.mkdir()
    with (src / "faq.jsonl").open("w") as fh:
        for i in range(40):
            fh.write(
                json.dumps(
                    {
                        "instruction": f"What is code {i * 7919 % 1000} for?",
                        "output": f"Code {i * 7919 % 1000} is for service {i}.",
                    }
                )
                + "\n"
            )
    ds = Dataset.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "Dataset",
            "metadata": {"name": "faq"},
            "spec": {
                "format": "instruction",
                "sources": [{"path": "faq.jsonl"}],
                "governance": [{"step": "schema"}],
                "split": {"eval_fraction": 0.25},
            },
        }
    )
    DatasetStore.for_home(home).cut(ds, src, actor="test")
    return home


def job(tiny: Path, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "base_model": {"source": str(tiny), "name": "tiny-llama"},
        "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        "train": {"max_steps": 4, "learning_rate": 0.01, "batch_size": 4, "max_seq_len": 48},
        "data": {"dataset": "faq", "max_eval_records": 4},
        "output": {"adapter": "faq-bot"},
    }
    body.update(spec)
    return {
        "apiVersion": "qingliang.io/v1",
        "kind": "FineTuneJob",
        "metadata": {"name": "faq-lora"},
        "spec": body,
    }


def run(home: Path, manifest: dict, **kw: Any) -> dict[str, Any]:
    events: list[dict] = []
    out = run_to_result(
        InlineExecutor(),
        run_job,
        {"job": manifest, "home": str(home), "base_dir": ".", **kw},
        on_event=events.append,
    )
    out["events"] = events
    return out


def test_job_trains_registers_adapter_and_lineage(home: Path, tiny: Path) -> None:
    out = run(home, job(tiny))
    assert out["job"] == "faq-lora-1" and out["adapter"] == "faq-bot@1" and not out["reused"]
    steps = [e["train_step"] for e in out["events"] if e["kind"] == "progress"]
    assert steps[-1] == 4
    adapter_dir = Path(out["adapter_path"])
    assert (adapter_dir / "adapter_config.json").is_file()
    assert adapter_dir == home / "adapters" / "faq-bot" / "faq-lora-1"
    version = DatasetStore.for_home(home).get("faq")
    with Registry(home=home) as reg:
        j = reg.get_job("faq-lora-1")
        assert j.status == "succeeded" and j.method == "lora" and j.base_model == "tiny-llama"
        assert j.train == (f"faq@{version.version}",) and j.eval == j.train
        assert j.settings["lora"]["r"] == 4
        assert j.metrics["steps"] == 4 and "final_train_loss" in j.metrics
        adapter = reg.get_adapter("faq-bot@1")
        assert adapter.job == "faq-lora-1" and adapter.status == "registered"
        lineage = reg.lineage("adapter", "faq-bot@1")
        assert f"faq@{version.version}" in lineage.refs("dataset_version")


def test_same_job_name_reuses_and_a_new_run_registers_the_next_version(
    home: Path, tiny: Path
) -> None:
    first = run(home, job(tiny))
    weights = Path(first["adapter_path"]) / "adapter_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = run(home, job(tiny), job_name=first["job"])
    assert again["reused"] and again["adapter"] == "faq-bot@1"
    assert not [e for e in again["events"] if e["kind"] == "progress"]
    assert weights.stat().st_mtime_ns == stamp
    second = run(home, job(tiny))
    assert (second["job"], second["adapter"]) == ("faq-lora-2", "faq-bot@2")


def test_a_job_rejected_by_the_checks_before_training_writes_nothing(
    home: Path, tiny: Path
) -> None:
    bad = job(tiny, lora={"r": 4, "target_modules": ["nope_proj"]})
    with pytest.raises(BadRequest, match="nope_proj"):
        run(home, bad, job_name="faq-bad")
    with Registry(home=home) as reg:
        assert reg.list_jobs() == [] and reg.list_base_models() == []
        assert reg.list_dataset_versions() == []
    assert not (home / "adapters" / "faq-bot").exists()
    # Nothing was recorded, so the name is free once the manifest is fixed.
    assert run(home, job(tiny), job_name="faq-bad")["adapter"] == "faq-bot@1"


def test_failed_job_is_recorded_and_not_rerun_under_its_name(home: Path, tiny: Path) -> None:
    # Passes the checks, then fails in training: no record keeps an answer token.
    short = job(tiny, train={"max_steps": 4, "batch_size": 4, "max_seq_len": 8})
    with pytest.raises(BadRequest, match="max_seq_len=8"):
        run(home, short, job_name="faq-bad")
    with Registry(home=home) as reg:
        failed = reg.get_job("faq-bad")
        assert failed.status == "failed" and "max_seq_len=8" in (failed.error or "")
        assert reg.list_adapters("faq-bot") == []
    with pytest.raises(Conflict, match="failed earlier"):
        run(home, job(tiny), job_name="faq-bad")


def test_missing_dataset_or_model_is_named_before_anything_is_registered(
    home: Path, tiny: Path, tmp_path: Path
) -> None:
    with pytest.raises(BadRequest, match=r"spec.data: .*'nope'.*apply the Dataset manifest"):
        run(home, job(tiny, data={"dataset": "nope"}))
    missing = job(tiny, base_model={"source": str(tmp_path / "no-model")})
    with pytest.raises(BadRequest, match="spec.base_model.source"):
        run(home, missing)
    with Registry(home=home) as reg, pytest.raises(NotFound):
        reg.get_job("faq-lora-1")


def test_cli_finetune_run_prints_progress_and_the_registered_adapter(
    home: Path, tiny: Path, tmp_path: Path
) -> None:
    import yaml

    from qingliang.platform.cli.main import app

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job(tiny)))
    env = {"QINGLIANG_HOME": str(home)}
    out = CliRunner().invoke(app, ["finetune", "run", "-f", str(path), "--inline"], env=env)
    assert out.exit_code == 0, out.output
    assert "[job] step 4/4 loss" in out.output
    assert "faq-bot@1 registered (job faq-lora-1, 4 steps" in out.output
    path.write_text(yaml.safe_dump(job(tiny, data={"dataset": "nope"})))
    bad = CliRunner().invoke(app, ["finetune", "run", "-f", str(path), "--inline"], env=env)
    assert bad.exit_code == 1 and "apply the Dataset manifest first" in bad.output


def test_executor_passes_events_and_keeps_error_classes() -> None:
    def step(emit: Any, *, fail: str) -> str:
        emit({"kind": "log", "message": "working"})
        if fail == "conflict":
            raise Conflict("already there", param="job")
        if fail == "bug":
            raise KeyError("oops")
        return "done"

    seen: list[dict] = []
    assert run_to_result(InlineExecutor(), step, {"fail": ""}, on_event=seen.append) == "done"
    assert seen == [{"kind": "log", "message": "working"}]
    with pytest.raises(Conflict, match="already there") as info:
        run_to_result(InlineExecutor(), step, {"fail": "conflict"})
    assert info.value.param == "job"
    with pytest.raises(StepFailed, match="KeyError: 'oops'"):
        run_to_result(InlineExecutor(), step, {"fail": "bug"})


def test_run_to_result_reads_a_step_stream_to_its_end() -> None:
    """A stream left at its result would be closed early, and RayExecutor cancels the
    task of a stream closed early (force: its worker is killed): the analysis → promote
    steps of a pipeline then ran the second task on a dying worker."""
    from qingliang.platform.lifecycle.pipelines.executor import run_to_result

    seen: list[str] = []

    class Executor:
        def stream(self, fn: Any, kwargs: Any, resources: Any) -> Any:
            try:
                yield {"kind": "log", "message": "working"}
                yield {"kind": "result", "value": 42}
                seen.append("ended")  # the task's own end, after its last event
            except GeneratorExit:
                seen.append("abandoned")
                raise

    events: list[dict] = []
    assert run_to_result(Executor(), print, {}, on_event=events.append) == 42
    assert seen == ["ended"]
    assert events == [{"kind": "log", "message": "working"}]
