"""Pipelines end to end in one process: real DatasetStore, real peft/transformers training
on the tiny Llama, real registry (SQLite), real LangGraph with its SQLite checkpointer.
Steps run on the InlineExecutor here; tests/integration/test_pipelines.py runs them as Ray
tasks and puts the adapter into a canary on a real deployment."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
from qingliang.platform.errors import (
    ClusterError,
    Conflict,
    Forbidden,
    ManifestError,
    NotFound,
    ResolveError,
)
from qingliang.platform.lifecycle.data.store import DatasetStore
from qingliang.platform.lifecycle.pipelines.executor import InlineExecutor, StepFailed
from qingliang.platform.lifecycle.pipelines.service import PipelineService
from qingliang.platform.lifecycle.registry import Registry
from qingliang.platform.manifests.loader import parse_documents
from qingliang.serving.tiny_model import build_tiny_llama

REPO = Path(__file__).resolve().parents[3]
_VOCABULARY = (
    "permit licence passport housing tax pension clinic school parking garbage water power "
    "grant visa marriage birth death business lease subsidy appeal fine refund complaint "
    "vaccine library museum transit bicycle bridge road noise tree park flood fire police "
    "court notary archive census election benefit disability veteran student teacher farm "
    "harbour airport railway market hawker food hygiene inspection building elevator"
)
WORDS = _VOCABULARY.split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("pl") / "tiny")


def write_project(
    root: Path, tiny: Path, *, steps: int = 8, every: int = 4, extra: str = ""
) -> Path:
    """A dataset, a fine-tune job and a pipeline manifest under ``root``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    with (root / "data" / "qa.jsonl").open("w") as fh:
        rng = random.Random(7)
        for i in range(60):
            topic = " ".join(rng.sample(WORDS, 6))
            q = f"How do I handle {topic}?"
            a = f"For {topic}, visit office {i % 5} with form R{i} and your ID card."
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            fh.write(json.dumps({"messages": msgs}) + "\n")
        fh.write("{not json\n")  # quarantined, never silently dropped
    (root / "dataset.yaml").write_text(
        """apiVersion: qingliang.io/v1
kind: Dataset
metadata: {name: permits}
spec:
  format: chat
  sources: [{path: data/qa.jsonl}]
  governance:
    - {step: schema}
    - {step: pii}
    - {step: dedup}
    - {step: quality, min_chars: 5, languages: [en]}
  split: {eval_fraction: 0.2, seed: 0}
"""
    )
    (root / "job.yaml").write_text(
        f"""apiVersion: qingliang.io/v1
kind: FineTuneJob
metadata: {{name: permits-lora}}
spec:
  base_model: {{source: {tiny}, name: tiny-llama}}
  lora: {{r: 8, target_modules: [all-linear]}}
  train: {{max_steps: {steps}, learning_rate: 0.01, batch_size: 4, max_seq_len: 64,
          lr_schedule: constant, checkpoint_every: {every}}}
  data: {{dataset: permits, max_eval_records: 4}}
  output: {{adapter: permits-bot}}
"""
    )
    (root / "pipeline.yaml").write_text(
        f"""apiVersion: qingliang.io/v1
kind: Pipeline
metadata: {{name: permits-release}}
spec:
  steps:
    - {{type: govern, dataset: dataset.yaml}}
    - {{type: finetune, job: job.yaml}}
    - {{type: evaluate, max_records: 4, max_new_tokens: 8{extra}}}
    - {{type: approval, message: "ship it?"}}
"""
    )
    return root / "pipeline.yaml"


def load_pipeline(path: Path) -> Any:
    [item] = parse_documents(path.read_text(), str(path))
    return item.manifest


def events(svc: PipelineService, run_id: str, kind: str | None = None) -> list[dict]:
    out = [e.to_dict() for e in svc.runs.events(run_id)]
    return [e for e in out if kind is None or e["kind"] == kind]


# -- manifests -------------------------------------------------------------------------


def _issues(text: str) -> dict[str, str]:
    with pytest.raises(ManifestError) as info:
        parse_documents(text, "p.yaml")
    return {i.path: i.message for i in info.value.issues}


PIPE = "apiVersion: qingliang.io/v1\nkind: Pipeline\nmetadata: {name: p}\nspec:\n  steps:\n"


def test_steps_out_of_order_are_named_by_position() -> None:
    issues = _issues(
        PIPE
        + "    - {type: evaluate}\n"
        + "    - {type: finetune, job: j.yaml}\n"
        + "    - {type: canary, deployment: chat, share: 0.1}\n"
    )
    assert "needs a finetune step before it" in issues["spec.steps.0"]
    assert "needs a approval step before it" in issues["spec.steps.2"]


def test_duplicate_step_names_and_unknown_metrics_are_refused() -> None:
    issues = _issues(
        PIPE
        + "    - {type: finetune, job: j.yaml}\n"
        + "    - {type: evaluate, name: check, thresholds: {bleu: 0.5}}\n"
        + "    - {type: approval, name: check}\n"
    )
    assert any("unknown metric 'bleu'" in m for m in issues.values())
    issues = _issues(
        PIPE
        + "    - {type: finetune, job: j.yaml}\n"
        + "    - {type: approval, name: check}\n"
        + "    - {type: approval, name: check}\n"
    )
    assert "already step 1" in issues["spec.steps.2.name"]


def test_unknown_step_type_and_canary_share_out_of_range() -> None:
    issues = _issues(PIPE + "    - {type: deploy}\n")
    assert any("deploy" in m for m in issues.values())
    issues = _issues(
        PIPE
        + "    - {type: finetune, job: j.yaml}\n"
        + "    - {type: approval}\n"
        + "    - {type: canary, deployment: chat, share: 1.5}\n"
    )
    assert issues == {"spec.steps.2.share": "Input should be less than 1"}


JOB = """apiVersion: qingliang.io/v1
kind: FineTuneJob
metadata: {name: j}
spec:
  base_model: {source: packaged:qwen2.5-coder-0.5b-instruct}
  data: {dataset: d}
  output: {adapter: bot}
"""


def test_finetune_job_settings_are_checked_with_their_path() -> None:
    bad_rank = JOB + "  lora: {r: 0}\n"
    assert "spec.lora.r" in _issues(bad_rank)
    typo = JOB + "  train: {learnin_rate: 0.1}\n"
    msg = _issues(typo)["spec.train.learnin_rate"]
    assert "did you mean 'learning_rate'" in msg
    bad_adapter = JOB.replace("adapter: bot", "adapter: Bot_1")
    assert "spec.output.adapter" in _issues(bad_adapter)
    method = JOB + "  method: qlora8\n"
    assert "spec.method" in _issues(method)


# -- running ---------------------------------------------------------------------------


def test_pipeline_waits_for_approval_then_succeeds_with_lineage(tmp_path: Path, tiny: Path) -> None:
    path = write_project(tmp_path / "proj", tiny)
    home = tmp_path / "home"
    svc = PipelineService(home, InlineExecutor())
    run = svc.start(load_pipeline(path), base_dir=path.parent, actor="alice")
    run = svc.drive(run.id)
    assert run.status == "waiting" and run.step == "approval"
    assert run.waiting is not None and run.waiting["adapter"] == "permits-bot@1"
    assert set(run.waiting["metrics"]) >= {"exact_match", "rouge_l"}

    govern = run.outputs["govern"]
    assert govern["quarantined"] == 1  # the malformed line is kept with a reason
    assert govern["train"] + govern["eval"] == 60
    progress = events(svc, run.id, "progress")
    assert [e["train_step"] for e in progress if e["phase"] == "train"] == list(range(1, 9))

    with Registry(home=home) as reg:
        assert reg.get_adapter("permits-bot@1").status == "evaluated"
    # Whoever started the run cannot approve it (issue 13 item 3): nothing changes.
    with pytest.raises(Forbidden, match="someone else must approve"):
        svc.approve(run.id, approve=True, by="alice")
    assert svc.get(run.id).status == "waiting"
    with Registry(home=home) as reg:
        assert reg.get_adapter("permits-bot@1").status == "evaluated"
    run = svc.approve(run.id, approve=True, by="bob", reason="metrics fine")
    assert run.status == "succeeded"
    with Registry(home=home) as reg:
        adapter = reg.get_adapter("permits-bot@1")
        assert adapter.status == "approved"
        assert adapter.metrics["evaluation"]["records"] == 4
        job = reg.get_job(adapter.job or "")
        assert job.status == "succeeded" and job.train == (govern["ref"],)
        assert govern["ref"] in reg.lineage("adapter", "permits-bot@1").refs("dataset_version")
    with pytest.raises(Conflict, match="not waiting"):
        svc.approve(run.id, approve=True, by="bob")


def test_gate_stops_the_pipeline_before_approval(tmp_path: Path, tiny: Path) -> None:
    path = write_project(tmp_path / "proj", tiny, extra=", thresholds: {exact_match: 1.0}")
    svc = PipelineService(tmp_path / "home", InlineExecutor())
    run = svc.drive(svc.start(load_pipeline(path), base_dir=path.parent, actor="a").id)
    assert run.status == "gated"
    assert "exact_match" in run.outputs["evaluate"]["failures"][0]
    assert "approval" not in run.outputs
    with Registry(home=tmp_path / "home") as reg:
        assert reg.get_adapter("permits-bot@1").status == "evaluated"


def test_rejection_retires_the_adapter(tmp_path: Path, tiny: Path) -> None:
    path = write_project(tmp_path / "proj", tiny)
    svc = PipelineService(tmp_path / "home", InlineExecutor())
    run = svc.drive(svc.start(load_pipeline(path), base_dir=path.parent, actor="a").id)
    run = svc.approve(run.id, approve=False, by="carol", reason="answers too short")
    assert run.status == "rejected"
    with Registry(home=tmp_path / "home") as reg:
        assert reg.get_adapter("permits-bot@1").status == "retired"


def test_failed_step_keeps_earlier_work_and_resumes_after_the_fix(
    tmp_path: Path, tiny: Path
) -> None:
    path = write_project(tmp_path / "proj", tiny)
    job = path.parent / "job.yaml"
    good = job.read_text()
    job.write_text(good.replace(str(tiny), str(tmp_path / "no-such-model")))
    home = tmp_path / "home"
    svc = PipelineService(home, InlineExecutor())
    run = svc.drive(svc.start(load_pipeline(path), base_dir=path.parent, actor="a").id)
    assert run.status == "failed" and "no-such-model" in (run.error or "")
    assert run.step == "finetune"
    version = run.outputs["govern"]["version"]
    assert DatasetStore.for_home(home).get("permits", version).status == "active"

    job.write_text(good)
    run = svc.drive(run.id)
    assert run.status == "waiting"
    assert [e["step"] for e in events(svc, run.id, "finished")] == [
        "govern",
        "finetune",
        "evaluate",
    ]


def test_govern_says_when_the_eval_split_is_empty_and_fails_on_no_records(
    tmp_path: Path, tiny: Path
) -> None:
    path = write_project(tmp_path / "proj", tiny)
    path.write_text(path.read_text().split("    - {type: finetune")[0])  # govern only
    data = path.parent / "data" / "qa.jsonl"
    data.write_text("\n".join(data.read_text().splitlines()[:3]) + "\n")
    ds = path.parent / "dataset.yaml"
    ds.write_text(ds.read_text().replace("eval_fraction: 0.2", "eval_fraction: 0.000001"))
    home = tmp_path / "home"
    svc = PipelineService(home, InlineExecutor())
    run = svc.drive(svc.start(load_pipeline(path), base_dir=path.parent, actor="a").id)
    assert run.status == "succeeded", run.error
    (warning,) = run.outputs["govern"]["warnings"]
    assert warning.startswith("dataset permits: the eval split is empty")
    assert f"warning: {warning}" in [e["message"] for e in events(svc, run.id, "log")]
    env = {"QINGLIANG_HOME": str(home), "COLUMNS": "300"}
    shown = CliRunner().invoke(_app(), ["pipelines", "status", run.id], env=env)
    assert "warning: dataset permits: the eval split is empty" in shown.output, shown.output

    data.write_text("{not json\n")
    run = svc.drive(svc.start(load_pipeline(path), base_dir=path.parent, actor="a").id)
    assert run.status == "failed"
    assert "dataset permits: no record is left to store" in (run.error or "")
    assert "read: invalid JSON" in (run.error or "")


def test_unknown_run_and_missing_files_are_clear(tmp_path: Path, tiny: Path) -> None:
    path = write_project(tmp_path / "proj", tiny)
    svc = PipelineService(tmp_path / "home", InlineExecutor())
    with pytest.raises(NotFound, match="no pipeline run 'pl-nope'"):
        svc.drive("pl-nope")
    (path.parent / "job.yaml").unlink()
    with pytest.raises(ResolveError, match="job file .*job.yaml does not exist"):
        svc.start(load_pipeline(path), base_dir=path.parent, actor="a")
    assert svc.list() == []


def test_killed_mid_training_resumes_without_repeating_finished_steps(
    tmp_path: Path, tiny: Path
) -> None:
    path = write_project(tmp_path / "proj", tiny, steps=400, every=10)
    home = tmp_path / "home"
    env = {**os.environ, "QINGLIANG_HOME": str(home)}
    cli = [sys.executable, "-m", "qingliang.platform.cli.main", "pipelines"]
    proc = subprocess.Popen(
        [*cli, "run", "-f", str(path), "--inline"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    svc = PipelineService(home, InlineExecutor())
    try:
        deadline = time.monotonic() + 240
        run_id = None
        while time.monotonic() < deadline:
            runs = svc.list() if (home / "pipelines").exists() else []
            if runs:
                run_id = runs[0].id
                steps = [e.get("train_step") or 0 for e in events(svc, run_id, "progress")]
                if steps and max(steps) >= 25:
                    break
            assert proc.poll() is None, "the pipeline ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("training did not reach step 25")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert run_id is not None
    assert svc.get(run_id).status == "interrupted"
    assert _job_statuses(home) == {f"{run_id}-finetune": "interrupted"}

    result = CliRunner().invoke(
        _app(), ["pipelines", "resume", run_id, "--inline"], env={"QINGLIANG_HOME": str(home)}
    )
    assert result.exit_code == 0, result.output
    assert "waits for approval" in result.output
    finished = [e["step"] for e in events(svc, run_id, "finished")]
    assert finished.count("govern") == 1 and finished.count("finetune") == 1
    resumed = [e["message"] for e in events(svc, run_id, "log") if "resuming" in e["message"]]
    assert resumed and int(resumed[0].rsplit(" ", 1)[1]) >= 10
    cuts = [a for a in DatasetStore.for_home(home).audit("permits") if a.action == "cut"]
    assert len(cuts) == 1
    with Registry(home=home) as reg:
        [job] = reg.list_jobs()
        assert job.status == "succeeded" and job.metrics["steps"] == 400
        assert [a.ref for a in reg.list_adapters("permits-bot")] == ["permits-bot@1"]


class _Killed(BaseException):
    """What a SIGKILL leaves behind: no ``except Exception`` handler of the step runs."""


class _DriverDied(BaseException):
    """The pipeline driver's own death, as far as the code after it can tell."""


class FineTuneWorkerKilled:
    """The executor boundary when the fine-tune task's worker is killed at a training step:
    the job's own handlers never run, so it records nothing, and the stream ends as
    RayExecutor ends a lost task, with a ClusterError (or, with ``driver_dies``, the
    driver goes with it). Training and every other step are real (InlineExecutor); a
    later run of the step is not touched."""

    def __init__(self, at_step: int, *, driver_dies: bool = False) -> None:
        self.at_step = at_step
        self.driver_dies = driver_dies
        self.fired = False

    def stream(self, fn: Any, kwargs: Any, resources: Any = None) -> Any:
        from qingliang.platform.lifecycle.finetune.job import run_job
        from qingliang.platform.lifecycle.pipelines.executor import Resources

        resources = resources or Resources()
        if fn is not run_job or self.fired:
            yield from InlineExecutor().stream(fn, kwargs, resources)
            return
        self.fired = True

        def killed_mid_training(emit: Any, **kw: Any) -> Any:
            def on_event(event: dict) -> None:
                emit(event)
                if event.get("phase") == "train" and event.get("train_step") == self.at_step:
                    raise _Killed

            return run_job(on_event, **kw)

        try:
            yield from InlineExecutor().stream(killed_mid_training, kwargs, resources)
        except StepFailed as exc:
            if self.driver_dies:
                raise _DriverDied from exc
            raise ClusterError(f"the Ray task of run_job failed: its worker died ({exc})") from exc


def _job_statuses(home: Path) -> dict[str, str]:
    with Registry(home=home) as reg:
        return {j.name: j.status for j in reg.list_jobs()}


def test_a_killed_fine_tune_worker_fails_its_job_and_resume_retries_it_as_r2(
    tmp_path: Path, tiny: Path
) -> None:
    path = write_project(tmp_path / "proj", tiny)
    home = tmp_path / "home"
    svc = PipelineService(home, FineTuneWorkerKilled(at_step=6))
    run = svc.drive(svc.start(load_pipeline(path), base_dir=path.parent, actor="a").id)
    assert run.status == "failed" and "worker died" in (run.error or "")
    job = f"{run.id}-finetune"
    assert _job_statuses(home) == {job: "failed"}
    with Registry(home=home) as reg:
        assert "worker died" in (reg.get_job(job).error or "")

    run = svc.drive(run.id)  # `pipelines resume`: the documented retry name
    assert run.status == "waiting", run.error
    assert run.outputs["finetune"]["job"] == f"{job}-r2"
    assert _job_statuses(home) == {job: "failed", f"{job}-r2": "succeeded"}


def test_a_dead_driver_leaves_its_job_interrupted_and_resume_continues_it(
    tmp_path: Path, tiny: Path
) -> None:
    path = write_project(tmp_path / "proj", tiny)  # 8 steps, a checkpoint every 4
    home = tmp_path / "home"
    svc = PipelineService(home, FineTuneWorkerKilled(at_step=6, driver_dies=True))
    run = svc.start(load_pipeline(path), base_dir=path.parent, actor="a")
    with pytest.raises(_DriverDied):
        svc.drive(run.id)
    job = f"{run.id}-finetune"
    assert _job_statuses(home) == {job: "running"}  # as the dead driver left it

    assert svc.get(run.id).status == "interrupted"  # `pipelines status` reads it
    assert _job_statuses(home) == {job: "interrupted"}

    run = svc.drive(run.id)  # `pipelines resume`: the same job, from its checkpoint
    assert run.status == "waiting", run.error
    assert run.outputs["finetune"]["job"] == job
    resumed = [e["message"] for e in events(svc, run.id, "log") if "resuming" in e["message"]]
    assert resumed == [f"resuming {job} from step 4"]
    assert _job_statuses(home) == {job: "succeeded"}


def test_cancel_ends_a_run_status_calls_interrupted(tmp_path: Path, tiny: Path) -> None:
    path = write_project(tmp_path / "proj", tiny)
    home = tmp_path / "home"
    svc = PipelineService(home, FineTuneWorkerKilled(at_step=2, driver_dies=True))
    run = svc.start(load_pipeline(path), base_dir=path.parent, actor="a")
    with pytest.raises(_DriverDied):
        svc.drive(run.id)
    env = {"QINGLIANG_HOME": str(home)}
    runner = CliRunner()
    status = runner.invoke(_app(), ["pipelines", "status"], env=env)
    assert f"{run.id}  permits-release      interrupted" in status.output, status.output

    done = runner.invoke(_app(), ["pipelines", "cancel", run.id, "--by", "ops"], env=env)
    assert done.exit_code == 0, done.output
    assert "cancelled (cancelled by ops)" in done.output
    assert svc.get(run.id).status == "cancelled"
    assert _job_statuses(home) == {f"{run.id}-finetune": "cancelled"}


def _app() -> Any:
    from qingliang.platform.cli.main import app

    return app


def test_cli_run_status_logs_and_approve(tmp_path: Path, tiny: Path) -> None:
    path = write_project(tmp_path / "proj", tiny)
    env = {"QINGLIANG_HOME": str(tmp_path / "home")}
    runner = CliRunner()
    out = runner.invoke(_app(), ["pipelines", "run", "-f", str(path), "--inline"], env=env)
    assert out.exit_code == 0, out.output
    assert "[finetune] step 8/8 loss" in out.output
    run_id = out.output.split("run ", 1)[1].split()[0]
    status = runner.invoke(_app(), ["pipelines", "status", run_id], env=env)
    assert "waiting" in status.output and "permits-bot@1" in status.output
    logs = runner.invoke(_app(), ["pipelines", "logs", run_id, "--json"], env=env)
    kinds = [json.loads(line)["kind"] for line in logs.output.splitlines()]
    assert kinds[0] == "created" and kinds[-1] == "waiting"
    ok = runner.invoke(
        _app(), ["pipelines", "approve", run_id, "--reason", "fine", "--by", "dan"], env=env
    )
    assert ok.exit_code == 0 and "succeeded" in ok.output
    again = runner.invoke(_app(), ["pipelines", "approve", run_id], env=env)
    assert again.exit_code == 1 and "not waiting for an approval" in again.output
    missing = runner.invoke(_app(), ["pipelines", "status", "pl-nope"], env=env)
    assert missing.exit_code == 1 and "no pipeline run 'pl-nope'" in missing.output


# -- canary, promote, roll back (Ray Serve's REST API faked at the Deployer boundary) ----


class RecordingDeployer:
    """Accepts every Serve config; tests/integration runs the real one."""

    def __init__(self) -> None:
        self.configs: list[dict] = []

    def apply_config(self, config: dict) -> None:
        self.configs.append(json.loads(json.dumps(config)))

    def statuses(self) -> dict[str, tuple[str, str]]:
        return {}


@pytest.fixture
def served(tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A deployment `chat` of the tiny model with LoRA on, in a real StateStore."""
    from qingliang.platform.control.apply import Controller
    from qingliang.platform.lifecycle.pipelines import steps
    from qingliang.platform.settings import Settings
    from qingliang.serving.plan import HardwareProfile

    home = tmp_path / "home"
    deployer = RecordingDeployer()
    ctl = Controller(
        Settings(home=home),
        deployer=deployer,
        profile=HardwareProfile(cpu_isa="avx2", vllm=True),
        resolver=lambda source, cache, progress: Path(source),
    )
    (tmp_path / "chat.yaml").write_text(
        f"""apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata: {{name: chat}}
spec:
  model: {{source: {tiny}}}
  lora: {{enabled: true, max_rank: 8}}
"""
    )
    ctl.apply([tmp_path / "chat.yaml"], wait=False, progress=False)
    monkeypatch.setattr(steps, "controller", lambda home: ctl)
    return SimpleNamespace(home=home, ctl=ctl, deployer=deployer)


def lora_of(ctl: Any) -> dict:
    return ctl.store.get("ModelDeployment", "chat").body["spec"]["lora"]


def test_pipeline_canary_then_promote_then_next_version_rolled_back(
    tmp_path: Path, tiny: Path, served: Any
) -> None:
    path = write_project(tmp_path / "proj", tiny)
    text = path.read_text()
    path.write_text(
        text + "    - {type: canary, deployment: chat, share: 0.2}\n    - {type: promote}\n"
    )
    svc = PipelineService(served.home, InlineExecutor())
    pipeline = load_pipeline(path)

    run = svc.drive(svc.start(pipeline, base_dir=path.parent, actor="a").id)
    run = svc.approve(run.id, approve=True, by="bob", reason="eval ok")
    assert run.status == "waiting" and run.step == "promote"
    assert run.waiting is not None
    assert "So far the canary had 0 requests" in run.waiting["message"]  # for the approver
    lora = lora_of(served.ctl)
    assert lora["traffic"] == {"permits-bot-v1": 0.2}
    assert lora["refs"] == {"permits-bot-v1": "permits-bot@1"}
    adapter_dir = served.home / "adapters" / "permits-bot" / f"{run.id}-finetune"
    assert lora["adapters"] == {"permits-bot-v1": str(adapter_dir)}
    with Registry(home=served.home) as reg:
        assert reg.get_adapter("permits-bot@1").status == "canary"
        assert {
            a.target: a.share for a in reg.deployments.serving("chat") if a.target_kind == "adapter"
        } == {"permits-bot@1": 0.2}

    run = svc.approve(run.id, approve=True, by="bob", reason="canary healthy")
    assert run.status == "succeeded"
    assert lora_of(served.ctl)["traffic"] == {"permits-bot-v1": 1.0}
    with Registry(home=served.home) as reg:
        assert reg.get_adapter("permits-bot@1").status == "serving"

    # A second run trains permits-bot@2: the canary splits v1's share, a rejection puts
    # everything back and retires v2.
    second = svc.drive(svc.start(pipeline, base_dir=path.parent, actor="a").id)
    second = svc.approve(second.id, approve=True, by="bob")
    assert lora_of(served.ctl)["traffic"] == pytest.approx(
        {"permits-bot-v1": 0.8, "permits-bot-v2": 0.2}
    )
    with Registry(home=served.home) as reg:
        shares = {
            a.target: a.share for a in reg.deployments.serving("chat") if a.target_kind == "adapter"
        }
        assert shares == pytest.approx({"permits-bot@1": 0.8, "permits-bot@2": 0.2})
    second = svc.approve(second.id, approve=False, by="carol", reason="complaints up")
    assert second.status == "rolled_back"
    lora = lora_of(served.ctl)
    assert lora["traffic"] == {"permits-bot-v1": 1.0}
    assert sorted(lora["adapters"]) == ["permits-bot-v1"]
    with Registry(home=served.home) as reg:
        assert reg.get_adapter("permits-bot@2").status == "retired"
        assert reg.get_adapter("permits-bot@1").status == "serving"


def test_the_promote_question_gives_the_canarys_figures_as_of_each_read(
    tmp_path: Path, tiny: Path, served: Any
) -> None:
    from qingliang.platform.storage.arm_stats import ArmStats

    path = write_project(tmp_path / "proj", tiny)
    path.write_text(
        path.read_text()
        + "    - {type: canary, deployment: chat, share: 0.2}\n    - {type: promote}\n"
    )
    svc = PipelineService(served.home, InlineExecutor())
    run = svc.drive(svc.start(load_pipeline(path), base_dir=path.parent, actor="a").id)
    run = svc.approve(run.id, approve=True, by="bob")
    assert run.waiting is not None and "So far the canary had 0 requests" in run.waiting["message"]

    stats = ArmStats.for_home(served.home, flush_s=0.05)  # the gateway serves 3 requests
    for ok in (True, True, False):
        stats.observe("chat", "permits-bot-v1", ok=ok, latency_s=0.1)
    stats.close()

    waiting = svc.get(run.id).waiting
    assert waiting is not None
    assert "So far the canary had 3 requests, 1 server errors (33.3%)" in waiting["message"]
    assert waiting["figures"]["canary"]["requests"] == 3
    assert [r.waiting["figures"]["canary"]["requests"] for r in svc.list()] == [3]  # type: ignore[index]
    env = {"QINGLIANG_HOME": str(served.home)}
    shown = CliRunner().invoke(_app(), ["pipelines", "status", run.id], env=env)
    assert "So far the canary had 3 requests" in shown.output, shown.output


def test_auto_promote_follows_the_canarys_served_figures(
    tmp_path: Path, tiny: Path, served: Any
) -> None:
    """v1 answers well and is promoted; v2 fails one request in three against v1's none
    and is rolled back without anyone deciding. The counts arrive as the gateway's
    backend writes them (ArmStats), while the promote step waits."""
    import threading

    from qingliang.platform.storage.arm_stats import ArmStats

    path = write_project(tmp_path / "proj", tiny)
    path.write_text(
        path.read_text()
        + "    - {type: canary, deployment: chat, share: 0.2}\n"
        + "    - {type: promote, mode: auto, hold_s: 0.2,\n"
        + "       analysis: {min_requests: 6, interval_s: 0.05, max_wait_s: 60}}\n"
    )
    stop = threading.Event()

    def gateway() -> None:  # requests to both versions and the base, as they come
        stats = ArmStats.for_home(served.home, flush_s=0.05)
        i = 0
        while not stop.wait(0.01):
            i += 1
            stats.observe("chat", None, ok=True, latency_s=0.2)
            stats.observe("chat", "permits-bot-v1", ok=True, latency_s=0.2)
            stats.observe("chat", "permits-bot-v2", ok=i % 3 != 0, latency_s=0.2)
        stats.close()

    feeder = threading.Thread(target=gateway, daemon=True)
    feeder.start()
    try:
        svc = PipelineService(served.home, InlineExecutor())
        pipeline = load_pipeline(path)
        run = svc.drive(svc.start(pipeline, base_dir=path.parent, actor="a").id)
        run = svc.approve(run.id, approve=True, by="bob")
        assert run.status == "succeeded", run.error
        assert lora_of(served.ctl)["traffic"] == {"permits-bot-v1": 1.0}
        verdict = run.outputs["promote"]["analysis"]
        assert verdict["healthy"] and verdict["canary"]["errors"] == 0
        assert verdict["baseline"]["arm"] == "base"

        second = svc.drive(svc.start(pipeline, base_dir=path.parent, actor="a").id)
        second = svc.approve(second.id, approve=True, by="bob")
    finally:
        stop.set()
        feeder.join(10)
    assert second.status == "rolled_back"
    (analysis,) = events(svc, second.id, "analysis")
    assert analysis["healthy"] is False
    assert analysis["baseline"]["arm"] == "permits-bot-v1"
    assert "over max_error_rate 5.0%" in analysis["reason"]
    lora = lora_of(served.ctl)
    assert lora["traffic"] == {"permits-bot-v1": 1.0}
    assert sorted(lora["adapters"]) == ["permits-bot-v1"]
    with Registry(home=served.home) as reg:
        assert reg.get_adapter("permits-bot@2").status == "retired"
        assert reg.get_adapter("permits-bot@1").status == "serving"
    logs = [e.get("message", "") for e in events(svc, second.id, "log")]
    assert any("rolled back (canary analysis: error rate" in m for m in logs)


def test_promote_settings_that_only_auto_reads_are_refused_with_approval() -> None:
    issues = _issues(
        PIPE
        + "    - {type: finetune, job: j.yaml}\n"
        + "    - {type: approval}\n"
        + "    - {type: canary, deployment: chat, share: 0.1}\n"
        + "    - {type: promote, hold_s: 60, analysis: {min_requests: 5}}\n"
    )
    assert "analysis and hold_s apply to `mode: auto`" in issues["spec.steps.3.promote"]
    issues = _issues(
        PIPE
        + "    - {type: finetune, job: j.yaml}\n"
        + "    - {type: approval}\n"
        + "    - {type: canary, deployment: chat, share: 0.1}\n"
        + "    - {type: promote, mode: auto, analysis: {max_error_rate: 2, min_requests: -1}}\n"
    )
    assert set(issues) == {
        "spec.steps.3.analysis.max_error_rate",
        "spec.steps.3.analysis.min_requests",
    }


def test_canary_step_is_idempotent_and_refuses_a_full_deployment(
    tmp_path: Path, tiny: Path, served: Any
) -> None:
    from qingliang.platform.errors import BadRequest
    from qingliang.platform.lifecycle.pipelines import steps
    from qingliang.platform.lifecycle.pipelines.executor import run_to_result

    with Registry(home=served.home) as reg:
        reg.register_base_model("tiny-llama", source=str(tiny), format="safetensors")
        bot = reg.register_adapter("bot", path=str(tiny), sha256="ab" * 32, base_model="tiny-llama")
        reg.set_status(bot.ref, "evaluated")
        reg.set_status(bot.ref, "approved")
    adapter = Path(adapter_dir_for(tmp_path))
    kwargs = {
        "home": str(served.home),
        "deployment": "chat",
        "adapter": "bot@1",
        "adapter_path": str(adapter),
        "base_model": "tiny-llama",
        "share": 0.3,
        "before": {},
    }
    first = run_to_result(InlineExecutor(), steps.canary_step, kwargs)
    pushes = len(served.deployer.configs)
    again = run_to_result(InlineExecutor(), steps.canary_step, kwargs)
    assert first.pop("at") <= again.pop("at")  # when the canary started taking traffic
    assert first == again and first["traffic"] == {"bot-v1": 0.3}
    assert len(served.deployer.configs) == pushes  # nothing was pushed twice

    served.ctl.set_traffic("chat", {"bot-v1": 1.0})
    with pytest.raises(BadRequest, match="gives all its traffic to other adapters"):
        run_to_result(
            InlineExecutor(),
            steps.canary_step,
            {**kwargs, "adapter": "other@1", "before": None},
        )
    assert lora_of(served.ctl)["traffic"] == {"bot-v1": 1.0}


def adapter_dir_for(root: Path) -> str:
    path = root / "adapter"
    path.mkdir(exist_ok=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    return str(path)


# -- HTTP API --------------------------------------------------------------------------


class _NoModels:
    def models(self) -> list:
        return []

    async def ready(self) -> dict:
        return {}


def _wait_status(client: Any, headers: dict, run_id: str, want: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/pipelines/{run_id}", headers=headers).json()
        if body["status"] == want:
            return body
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} never became {want}: {body}")


def test_api_starts_watches_and_approves_a_run(tmp_path: Path, tiny: Path) -> None:
    from fastapi.testclient import TestClient

    from qingliang.platform.gateway.app import create_app
    from qingliang.platform.gateway.auth.keys import KeyAuth
    from qingliang.platform.storage.keys import KeyStore

    path = write_project(tmp_path / "proj", tiny)
    home = tmp_path / "home"
    home.mkdir()
    keys = KeyStore(home / "state.sqlite")
    ops = keys.create("ops", scopes=("admin",))[1]
    lead = keys.create("lead", scopes=("approve",))[1]
    tenant = keys.create("a", scopes=("inference", "tenant:city-a"))[1]
    svc = PipelineService(home, InlineExecutor())
    app = create_app(_NoModels(), None, KeyAuth(home / "state.sqlite", True), pipelines=svc)  # type: ignore[arg-type]
    auth = {"Authorization": f"Bearer {ops}"}
    manifest = load_pipeline(path).model_dump(mode="json", by_alias=True)
    with TestClient(app) as client:
        r = client.post("/v1/pipelines", json={"manifest": manifest}, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["param"] == "base_dir"
        bad = {**manifest, "spec": {"steps": [{"type": "evaluate"}]}}
        r = client.post(
            "/v1/pipelines", json={"manifest": bad, "base_dir": str(path.parent)}, headers=auth
        )
        assert r.status_code == 400 and "needs a finetune step" in r.json()["error"]["message"]
        r = client.get("/v1/pipelines", headers={"Authorization": f"Bearer {tenant}"})
        assert r.status_code == 403

        r = client.post(
            "/v1/pipelines",
            json={"manifest": manifest, "base_dir": str(path.parent)},
            headers=auth,
        )
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
        waiting = _wait_status(client, auth, run_id, "waiting")
        assert waiting["waiting"]["adapter"] == "permits-bot@1"
        events = client.get(f"/v1/pipelines/{run_id}/events?after=0", headers=auth).json()
        assert events["data"][0]["kind"] == "created"
        r = client.post(f"/v1/pipelines/{run_id}/approve", json={"approve": "yes"}, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["param"] == "approve"
        # The key that started the run may not approve it (issue 13 item 3); another may.
        r = client.post(f"/v1/pipelines/{run_id}/approve", json={"approve": True}, headers=auth)
        assert r.status_code == 403 and r.json()["error"]["code"] == "self_approval"
        assert client.get(f"/v1/pipelines/{run_id}", headers=auth).json()["status"] == "waiting"
        r = client.post(
            f"/v1/pipelines/{run_id}/approve",
            json={"approve": True, "reason": "ok"},
            headers={"Authorization": f"Bearer {lead}"},
        )
        assert r.status_code == 202
        done = _wait_status(client, auth, run_id, "succeeded")
        assert done["outputs"]["approval"] == {"approved": True, "by": "key:lead", "reason": "ok"}
        r = client.post(f"/v1/pipelines/{run_id}/approve", json={"approve": True}, headers=auth)
        assert r.status_code == 409
        assert client.get("/v1/pipelines/pl-nope", headers=auth).status_code == 404
        r = client.post(f"/v1/pipelines/{run_id}/cancel", json={"why": 1}, headers=auth)
        assert r.status_code == 400
        r = client.post(f"/v1/pipelines/{run_id}/cancel", json={}, headers=auth)
        assert r.status_code == 409 and "is succeeded" in r.json()["error"]["message"]


def test_apply_points_runs_to_their_commands(tmp_path: Path, tiny: Path) -> None:
    from qingliang.platform.control.apply import Controller
    from qingliang.platform.settings import Settings

    path = write_project(tmp_path / "proj", tiny)
    ctl = Controller(Settings(home=tmp_path / "home"), deployer=RecordingDeployer())
    with pytest.raises(ManifestError) as info:
        ctl.apply([path, path.parent / "job.yaml"], wait=False, progress=False)
    text = str(info.value)
    assert f"`qingliang pipelines run -f {path}`" in text
    assert f"`qingliang finetune run -f {path.parent / 'job.yaml'}`" in text
    assert ctl.store.list("Dataset") == []


def test_steps_reach_the_dashboard_of_the_platform_running_on_their_home(tmp_path: Path) -> None:
    from qingliang.platform.control.cluster import RunInfo, settings_for
    from qingliang.platform.settings import Settings

    home = tmp_path / "home"
    assert settings_for(home) == Settings(home=home)  # nothing runs: the defaults
    RunInfo(
        pid=1,
        pgid=1,
        gcs_address="127.0.0.1:26380",
        dashboard_url="http://127.0.0.1:28265",
        metrics_port=28080,
        http_port=28000,
        temp_dir=str(tmp_path),
        started_at=0.0,
    ).save(Settings(home=home).run_file)
    s = settings_for(home)
    assert (s.http_port, s.dashboard_port, s.metrics_port, s.ray_port) == (
        28000,
        28265,
        28080,
        26380,
    )


def test_cancel_rolls_back_a_live_canary_and_closes_the_run(
    tmp_path: Path, tiny: Path, served: Any
) -> None:
    path = write_project(tmp_path / "proj", tiny)
    path.write_text(
        path.read_text()
        + "    - {type: canary, deployment: chat, share: 0.3}\n    - {type: promote}\n"
    )
    svc = PipelineService(served.home, InlineExecutor())
    run = svc.drive(svc.start(load_pipeline(path), base_dir=path.parent, actor="a").id)
    run = svc.approve(run.id, approve=True, by="bob")
    assert lora_of(served.ctl)["traffic"] == {"permits-bot-v1": 0.3}
    run = svc.cancel(run.id, by="ops", reason="incident 42")
    assert run.status == "cancelled" and run.error == "cancelled by ops: incident 42"
    lora = lora_of(served.ctl)
    assert lora.get("traffic", {}) == {} and lora["adapters"] == {}
    with Registry(home=served.home) as reg:
        assert reg.get_adapter("permits-bot@1").status == "retired"
    assert svc.drive(run.id).status == "cancelled"  # resuming a cancelled run does nothing
    with pytest.raises(Conflict, match="only waiting, interrupted or failed"):
        svc.cancel(run.id, by="ops")


def test_cancel_a_failed_run_from_the_cli(tmp_path: Path, tiny: Path) -> None:
    path = write_project(tmp_path / "proj", tiny)
    (path.parent / "job.yaml").write_text(
        (path.parent / "job.yaml").read_text().replace(str(tiny), str(tmp_path / "gone"))
    )
    env = {"QINGLIANG_HOME": str(tmp_path / "home")}
    runner = CliRunner()
    out = runner.invoke(_app(), ["pipelines", "run", "-f", str(path), "--inline"], env=env)
    assert out.exit_code == 1 and "fix the cause, then: qingliang pipelines resume" in out.output
    run_id = out.output.split("run ", 1)[1].split()[0]
    done = runner.invoke(_app(), ["pipelines", "cancel", run_id, "--by", "ops"], env=env)
    assert done.exit_code == 0 and "cancelled (cancelled by ops)" in done.output
    again = runner.invoke(_app(), ["pipelines", "cancel", run_id], env=env)
    assert again.exit_code == 1 and "is cancelled" in again.output


def test_merge_step_writes_a_merged_model_and_an_nf4_copy(tmp_path: Path, tiny: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = write_project(tmp_path / "proj", tiny)
    text = path.read_text().replace(
        "    - {type: approval", "    - {type: merge, quantize: bnb-nf4}\n    - {type: approval"
    )
    path.write_text(text)
    home = tmp_path / "home"
    svc = PipelineService(home, InlineExecutor())
    run = svc.drive(svc.start(load_pipeline(path), base_dir=path.parent, actor="a").id)
    assert run.status == "waiting", run.error
    merged = run.outputs["merge"]
    assert (
        merged["model"] == "tiny-llama-permits-bot-v1" and merged["merged_from"] == "permits-bot@1"
    )
    with Registry(home=home) as reg:
        assert reg.get_base_model(merged["model"]).source == merged["path"]
        q = reg.quantized.get(merged["quantized"]["name"])
        assert q.method == "bnb-nf4" and q.model == merged["model"]
        assert merged["model"] in reg.lineage(
            "adapter", "permits-bot@1", direction="downstream"
        ).refs("base_model")
    # The merged model computes what base + adapter computes.
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    adapter_dir = run.outputs["finetune"]["adapter_path"]
    with torch.no_grad():
        want = PeftModel.from_pretrained(base, adapter_dir).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged["path"]).eval()(ids).logits
    assert torch.allclose(want, got, atol=1e-4)
    nf4 = AutoModelForCausalLM.from_pretrained(merged["quantized"]["path"])
    assert type(nf4.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert merged["quantized"]["size_bytes"] < merged["size_bytes"]
    # Running the step again (a resumed pipeline) reuses what is there.
    from qingliang.platform.lifecycle.pipelines import steps
    from qingliang.platform.lifecycle.pipelines.executor import run_to_result

    kwargs = {
        "home": str(home),
        "adapter": "permits-bot@1",
        "adapter_path": adapter_dir,
        "base_model": "tiny-llama",
        "base_model_path": str(tiny),
        "quantize": "bnb-nf4",
    }
    logs: list[dict] = []
    again = run_to_result(InlineExecutor(), steps.merge_step, kwargs, on_event=logs.append)
    assert again == merged
    assert not [e for e in logs if "merging" in e.get("message", "")]


def test_ray_gets_headroom_for_tasks_and_a_bad_override_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qingliang.platform.control import cluster
    from qingliang.platform.errors import ClusterError

    monkeypatch.delenv("QINGLIANG_RAY_CPUS", raising=False)
    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 2)
    assert cluster.default_num_cpus() == 3  # the default deployment + gateway hold 2
    monkeypatch.setenv("QINGLIANG_RAY_CPUS", "8")
    assert cluster.default_num_cpus() == 8
    monkeypatch.setenv("QINGLIANG_RAY_CPUS", "lots")
    with pytest.raises(ClusterError, match="QINGLIANG_RAY_CPUS='lots' is not a whole number"):
        cluster.default_num_cpus()


def test_a_step_the_cluster_cannot_fit_is_refused_and_a_busy_one_says_why() -> None:
    from qingliang.platform.errors import ClusterError
    from qingliang.platform.lifecycle.pipelines.executor import RayExecutor, Resources

    class Cluster:  # ray.cluster_resources / available_resources, as Ray reports them
        @staticmethod
        def cluster_resources() -> dict:
            return {"CPU": 3.0}

        @staticmethod
        def available_resources() -> dict:
            return {"CPU": 0.5}

    def run_job(emit: Any) -> None: ...

    ex = RayExecutor()
    with pytest.raises(ClusterError, match=r"asks for 1 GPU\(s\) but the Ray cluster has 0"):
        ex._check_resources(Cluster, run_job, Resources(cpus=1, gpus=1))
    why = ex._check_resources(Cluster, run_job, Resources(cpus=1))
    assert why == "waiting for 1 CPU(s) for run_job: 0.5 of 3 free (deployments hold the rest)"
    assert ex._check_resources(Cluster, run_job, Resources(cpus=0)) is None


def test_a_step_may_allow_its_starter_to_approve(tmp_path: Path, tiny: Path) -> None:
    """``allow_self_approval: true`` on the approval step lets the starter approve."""
    path = write_project(tmp_path / "proj", tiny)
    text = path.read_text()
    assert "type: approval" in text
    path.write_text(text.replace("type: approval", "type: approval, allow_self_approval: true"))
    svc = PipelineService(tmp_path / "home", InlineExecutor())
    run = svc.drive(svc.start(load_pipeline(path), base_dir=path.parent, actor="alice").id)
    assert run.status == "waiting"
    assert svc.approve(run.id, approve=True, by="alice").status == "succeeded"


def test_a_canary_within_an_alias_leaves_the_bare_deployment_alone(
    tmp_path: Path, tiny: Path, served: Any
) -> None:
    """One base model, adapters called by name (`chat:permits`): each release canaries and
    promotes behind the alias, and requests for the bare deployment or another alias never
    move."""
    from qingliang.serving.traffic import entry_of, resolve_adapter

    path = write_project(tmp_path / "proj", tiny)
    path.write_text(
        path.read_text()
        + "    - {type: canary, deployment: chat, share: 0.2, alias: permits}\n"
        + "    - {type: promote}\n"
    )
    served.ctl.set_alias("chat", "other", {})
    svc = PipelineService(served.home, InlineExecutor())
    pipeline = load_pipeline(path)

    def entry() -> Any:
        return entry_of(served.ctl.store.get("ModelDeployment", "chat"))

    run = svc.drive(svc.start(pipeline, base_dir=path.parent, actor="a").id)
    run = svc.approve(run.id, approve=True, by="bob", reason="eval ok")
    lora = lora_of(served.ctl)
    assert lora["aliases"] == {"other": {}, "permits": {"permits-bot-v1": 0.2}}
    assert lora["traffic"] == {}
    # 20 % of the alias's users reach the canary, the others the base model.
    arms = [resolve_adapter(entry(), "permits", f"user-{i}") for i in range(400)]
    assert 0.12 < arms.count("permits-bot-v1") / 400 < 0.28
    assert set(arms) == {"permits-bot-v1", None}
    run = svc.approve(run.id, approve=True, by="bob", reason="canary healthy")
    assert run.status == "succeeded"
    assert lora_of(served.ctl)["aliases"]["permits"] == {"permits-bot-v1": 1.0}
    assert resolve_adapter(entry(), "permits", "anyone") == "permits-bot-v1"

    second = svc.drive(svc.start(pipeline, base_dir=path.parent, actor="a").id)
    second = svc.approve(second.id, approve=True, by="bob")
    assert lora_of(served.ctl)["aliases"]["permits"] == pytest.approx(
        {"permits-bot-v1": 0.8, "permits-bot-v2": 0.2}
    )
    second = svc.approve(second.id, approve=True, by="bob")
    lora = lora_of(served.ctl)
    assert lora["aliases"] == {"other": {}, "permits": {"permits-bot-v2": 1.0}}
    assert sorted(lora["adapters"]) == ["permits-bot-v2"]  # v1 unloaded
    assert lora["traffic"] == {}
    assert resolve_adapter(entry(), None, "anyone") is None  # the bare deployment: base model
    with Registry(home=served.home) as reg:
        assert reg.get_adapter("permits-bot@1").status == "retired"
        assert {
            a.target: a.share for a in reg.deployments.serving("chat") if a.target_kind == "adapter"
        } == {"permits-bot@2": 1.0}

    # A third release rejected at the promote gate: the alias goes back to v2 alone.
    third = svc.drive(svc.start(pipeline, base_dir=path.parent, actor="a").id)
    third = svc.approve(third.id, approve=True, by="bob")
    third = svc.approve(third.id, approve=False, by="carol", reason="worse answers")
    assert third.status == "rolled_back"
    assert lora_of(served.ctl)["aliases"]["permits"] == {"permits-bot-v2": 1.0}
