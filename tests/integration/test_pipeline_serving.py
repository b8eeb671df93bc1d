"""A Pipeline on the real platform: steps as Ray tasks on the local cluster, the adapter
hot-loaded into the vLLM deployment `tiny` as a canary behind the real gateway, answers
that name the adapter's registry ref, the gateway's per-arm counts promoting the canary
(`promote: auto` with its analysis), and `qingliang lineage` from that ref back to the
dataset version it was trained on."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
from _platform import Platform
from typer.testing import CliRunner

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
from qingliang.platform.lifecycle.pipelines.executor import RayExecutor
from qingliang.platform.lifecycle.pipelines.service import PipelineService
from qingliang.platform.lifecycle.registry import Registry
from qingliang.platform.manifests.loader import parse_documents
from qingliang.platform.storage.arm_stats import summary

HI = [{"role": "user", "content": "Where do I renew a permit?"}]


def write_project(root: Path, model: Path) -> Path:
    (root / "data").mkdir(parents=True)
    with (root / "data" / "qa.jsonl").open("w") as fh:
        for i in range(40):
            q = f"Where do I renew permit {i * 7919 % 997}?"
            a = f"Permit {i * 7919 % 997} is renewed at window {i % 9} of hall {i % 4}."
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            fh.write(json.dumps({"messages": msgs}) + "\n")
    (root / "dataset.yaml").write_text(
        """apiVersion: qingliang.io/v1
kind: Dataset
metadata: {name: permits}
spec:
  format: chat
  sources: [{path: data/qa.jsonl}]
  governance: [{step: schema}, {step: pii}, {step: dedup, threshold: 0.95}]
  split: {eval_fraction: 0.2, seed: 0}
"""
    )
    (root / "job.yaml").write_text(
        f"""apiVersion: qingliang.io/v1
kind: FineTuneJob
metadata: {{name: permits-lora}}
spec:
  base_model: {{source: {model}, name: tiny-llama}}
  lora: {{r: 8, alpha: 16, dropout: 0.0, target_modules: [all-linear]}}
  train: {{max_steps: 20, learning_rate: 0.01, batch_size: 4, max_seq_len: 64,
          lr_schedule: constant, checkpoint_every: 5}}
  data: {{dataset: permits, max_eval_records: 4}}
  output: {{adapter: permits-bot}}
  resources: {{cpus: 0.5}}
"""
    )
    (root / "pipeline.yaml").write_text(
        """apiVersion: qingliang.io/v1
kind: Pipeline
metadata: {name: permits-release}
spec:
  steps:
    - {type: govern, dataset: dataset.yaml}
    - {type: finetune, job: job.yaml}
    - {type: evaluate, max_records: 4, max_new_tokens: 8}
    - {type: approval, message: "Put permits-bot into a canary on tiny?"}
    - {type: canary, deployment: tiny, share: 0.5}
    # Held 60 s from the canary's start (the test's 24 requests land in the canary),
    # then promoted on the gateway's counts: 6 canary requests, no server errors.
    - {type: promote, mode: auto, hold_s: 60,
       analysis: {min_requests: 6, interval_s: 1, max_wait_s: 300}}
"""
    )
    return root / "pipeline.yaml"


def ask(http: httpx.Client, model: str, user: str) -> httpx.Response:
    body = {"model": model, "messages": HI, "max_tokens": 8, "temperature": 0, "user": user}
    return http.post("/v1/chat/completions", json=body)


def test_pipeline_canary_serves_traced_answers_then_promotes(
    platform: Platform, http: httpx.Client, tmp_path: Path
) -> None:
    import ray

    path = write_project(tmp_path / "proj", platform.models / "tiny")
    [item] = parse_documents(path.read_text(), str(path))
    home = platform.settings.home
    svc = PipelineService(home, RayExecutor(platform.settings))
    try:
        run = svc.drive(svc.start(item.manifest, base_dir=path.parent, actor="ci").id)  # type: ignore[arg-type]
        assert run.status == "waiting", run.error
        assert run.waiting is not None and run.waiting["adapter"] == "permits-bot@1"
        # The steps ran as Ray tasks of the platform's cluster, their events streamed back.
        from ray.util.state import list_tasks

        want = {"qingliang:govern_step", "qingliang:run_job", "qingliang:run_evaluation"}
        deadline = time.monotonic() + 30  # task states reach the state API with a delay
        # The platform's own dashboard, not whatever Ray instance auto-detection finds.
        dashboard = f"http://127.0.0.1:{platform.settings.dashboard_port}"
        while not want <= (names := {t.name for t in list_tasks(dashboard, limit=1000)}):
            assert time.monotonic() < deadline, names
            time.sleep(1.0)
        progress = [e for e in svc.runs.events(run.id) if e.kind == "progress"]
        assert [e.data["train_step"] for e in progress if e.data["phase"] == "train"][-1] == 20

        # The approval starts the canary; the promote step then watches the traffic, so
        # the driver runs in a thread while this one plays the users.
        canary_from = time.time()
        driven: dict[str, object] = {}

        def drive() -> None:
            try:
                driven["run"] = svc.approve(run.id, approve=True, by="ci-lead", reason="eval ok")
            except BaseException as exc:
                driven["error"] = exc

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        # Wait for the replicas to load the adapter (a lightweight Serve update).
        deadline = time.monotonic() + 120
        while ask(http, "tiny:permits-bot-v1", "probe").status_code != 200:
            assert time.monotonic() < deadline, "the canary adapter never loaded"
            assert driver.is_alive(), driven
            time.sleep(1.0)
        with Registry(home=home) as reg:
            assert reg.get_adapter("permits-bot@1").status == "canary"
        time.sleep(1.0)  # the gateway reads manifests with a 0.5 s cache
        arms = {}
        for i in range(24):
            r = ask(http, "tiny", f"citizen-{i}")
            assert r.status_code == 200, r.text
            arms[i] = r.headers["x-qingliang-adapter-ref"]
            assert r.json()["qingliang"]["adapter_ref"] == (arms[i] or None)
        assert set(arms.values()) == {"", "permits-bot@1"}, arms

        driver.join(360)
        assert not driver.is_alive() and "error" not in driven, driven
        run = driven["run"]  # type: ignore[assignment]
        assert run.status == "succeeded", run.error
        verdict = run.outputs["promote"]["analysis"]
        assert verdict["healthy"] and verdict["baseline"]["arm"] == "base", verdict
        canary_arm = verdict["canary"]
        assert canary_arm["requests"] >= 6 and canary_arm["errors"] == 0, verdict
        assert verdict["waited_s"] >= 60
        # The figures are the gateway's own counts of what it served.
        counted = summary(home, "tiny", since=canary_from)
        on_canary = sum(1 for v in arms.values() if v)
        assert counted["permits-bot-v1"].requests >= on_canary + 1  # + the probe
        assert counted[""].requests >= 24 - on_canary
        assert counted["permits-bot-v1"].mean_latency_ms is not None

        # From an answer's adapter ref back to the data it was trained on.
        ref = next(v for v in arms.values() if v)
        env = {"QINGLIANG_HOME": str(home)}
        from qingliang.platform.cli.main import app

        out = CliRunner().invoke(app, ["lineage", ref, "--json"], env=env)
        assert out.exit_code == 0, out.output
        assert run.outputs["govern"]["ref"] in out.output
        assert "tiny-llama" in out.output and run.outputs["finetune"]["job"] in out.output
        tree = CliRunner().invoke(app, ["lineage", "tiny:permits-bot-v1"], env=env)
        assert tree.exit_code == 0 and run.outputs["govern"]["ref"][:20] in tree.output

        time.sleep(1.0)
        refs = {
            ask(http, "tiny", f"citizen-{i}").headers["x-qingliang-adapter-ref"] for i in range(6)
        }
        assert refs == {"permits-bot@1"}
        with Registry(home=home) as reg:
            assert reg.get_adapter(ref).status == "serving"
    finally:
        platform.ctl.set_traffic("tiny", {})
        body = platform.ctl.store.get("ModelDeployment", "tiny").body
        if "permits-bot-v1" in (body["spec"]["lora"].get("adapters") or {}):
            platform.ctl.set_adapter("tiny", "permits-bot-v1", None)
        # The next module finds tiny answering bare requests with its base model again
        # (the gateway may hold the canary's shares a moment after they are cleared).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ask(http, "tiny", "after").status_code != 200:
            time.sleep(1.0)
        ray.shutdown()
