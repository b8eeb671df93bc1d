"""``validate``, ``apply``, ``diff``, ``get``, ``delete``, ``render``: manifests in,
deployments out (the work is :class:`qingliang.platform.control.apply.Controller`'s).

With ``--server`` (``QINGLIANG_URL``), ``apply``, ``diff``, ``get`` and ``delete`` call
the remote platform's admin routes, which run the same Controller there
(:mod:`._apply_remote`); ``validate`` and ``render`` need no platform and run here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from qingliang.platform.cli import _apply_remote, _common, _remote
from qingliang.platform.cli._common import (
    FilesOpt,
    console,
    err,
    fail,
    load_settings,
    status_printer,
)
from qingliang.platform.cli.adapters import traffic_text
from qingliang.platform.cli.kb import sync_after_apply
from qingliang.platform.errors import QingliangError


def validate(files: list[Path] = FilesOpt) -> None:
    """Check manifests without touching anything (exit 1 on the first bad field).

    Besides each manifest's own fields, what it refers to is followed, read-only: a
    Pipeline's dataset and job files (present, valid, their own references), a Dataset's
    source files, a FineTuneJob's local base model folder.
    """
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.platform.errors import FieldIssue, ManifestError
    from qingliang.platform.lifecycle.pipelines.references import check_references
    from qingliang.platform.manifests.loader import load_paths
    from qingliang.serving.manifest import ModelDeployment
    from qingliang.serving.plan import HardwareProfile, compile_plan

    try:
        loaded = load_paths(files)
        unusable: list[str] = []
        for item in loaded:
            try:
                check_references(item)
            except ManifestError as exc:
                unusable.append(str(exc))
        if unusable:
            raise ManifestError([FieldIssue("", text) for text in unusable])
        profile = HardwareProfile.detect()
        for item in loaded:
            if isinstance(item.manifest, ModelDeployment):
                plan = compile_plan(item.manifest, profile, source=item.source)
                console.print(
                    f"ok  {item.source}: {item.kind}/{item.name} → engine {plan.engine}, "
                    f"dtype {plan.dtype}, {plan.accelerator}"
                    + (f", quantization {plan.quantization}" if plan.quantization else "")
                    + (f", adapters {', '.join(plan.adapter_map)}" if plan.adapters else ""),
                    highlight=False,
                )
            else:
                console.print(f"ok  {item.source}: {item.kind}/{item.name}", highlight=False)
    except QingliangError as exc:
        fail(exc)


JsonOpt = typer.Option(False, "--json", help="Print JSON (one document on stdout) instead.")


def _print_json(value: Any) -> None:
    from qingliang.platform.gateway.operator.admin import plain

    print(json.dumps(value, ensure_ascii=False, indent=2, default=plain))


def apply(
    files: list[Path] = FilesOpt,
    wait: bool = typer.Option(True, help="Wait until every deployment is RUNNING."),
    timeout: float = typer.Option(900, help="Seconds to wait."),
    sync: bool = typer.Option(True, help="Sync applied KnowledgeBases (embed what changed)."),
) -> None:
    """Create or update deployments, knowledge bases and agent graphs, and cut a version of
    each Dataset. A bad manifest changes nothing.

    With --server the files' text is sent to that platform: paths in them (model
    sources, KB folders, dataset files) must be paths on its nodes.
    """
    if _remote.target() is not None:
        try:
            _apply_remote.apply(files, wait=wait, timeout_s=timeout, sync=sync)
        except QingliangError as exc:
            fail(exc)
        return
    try:
        ctl = _common.controller(load_settings())
        changes = ctl.apply(files, wait=wait, timeout_s=timeout, on_status=status_printer())
        for c in changes:
            extra = f" ({', '.join(c.fields)})" if c.fields else ""
            console.print(f"{c.kind}/{c.name}: {c.action}{extra}", highlight=False)
        kbs = [c.name for c in changes if c.kind == "KnowledgeBase"]
        if sync and kbs:
            sync_after_apply(kbs)
    except QingliangError as exc:
        fail(exc)


def diff(files: list[Path] = FilesOpt) -> None:
    """Show what `apply` would change (exit 0 either way)."""
    try:
        if _remote.target() is not None:
            _apply_remote.diff(files)
            return
        for c in _common.controller(load_settings()).diff(files):
            extra = "".join(f"\n    ~ {f}" for f in c.fields)
            console.print(f"{c.kind}/{c.name}: {c.action}{extra}", highlight=False)
    except QingliangError as exc:
        fail(exc)


def get(
    name: str = typer.Argument(None, help="One deployment (default: all)."),
    as_json: bool = JsonOpt,
) -> None:
    """List applied deployments with their live status."""
    try:
        if _remote.target() is not None:
            with _remote.connect() as api:
                rows = api.get("/v1/manifests/applied")["data"]
        else:
            rows = _common.controller(load_settings()).get(live=True)
    except QingliangError as exc:
        fail(exc)
        return
    if name:
        from qingliang.platform.errors import did_you_mean

        names = [r["name"] for r in rows]
        rows = [r for r in rows if r["name"] == name]
        if not rows:
            fail(QingliangError(f"no deployment named {name!r}{did_you_mean(name, names)}"))
    if as_json:
        _print_json(rows)
        return
    table = Table("NAME", "STATUS", "ENGINE", "SOURCE", "ADAPTERS", "TRAFFIC", "ALIASES", "GEN")
    for r in rows:
        aliases = r.get("aliases") or {}
        table.add_row(
            r["name"],
            r["status"],
            r["engine"],
            r["source"],
            ", ".join(r["adapters"]),
            traffic_text(r.get("traffic") or {}),
            "; ".join(f"{a}: {traffic_text(aliases[a]) or 'base 100%'}" for a in sorted(aliases)),
            str(r["generation"]),
        )
    console.print(table)
    for r in rows:
        if r["message"]:
            console.print(f"{r['name']}: {r['message'][:500]}", highlight=False)


def delete(
    names: list[str] = typer.Argument(
        None,
        help="Deployment names, or KIND/NAME: KnowledgeBase/NAME, AgentGraph/NAME, Dataset/NAME.",
    ),
    files: list[Path] = typer.Option(
        None, "-f", "--file", help="Delete what these manifests define."
    ),
) -> None:
    """Remove deployments, knowledge bases, agent graphs or datasets (by name or by manifest).

    A knowledge base loses its points, snapshots, uploads and learned answers; a dataset
    its versions and files (its audit log and deleted-record list stay).
    """
    try:
        targets: dict[str, list[str]] = {
            "ModelDeployment": [],
            "KnowledgeBase": [],
            "AgentGraph": [],
            "Dataset": [],
        }
        for n in names or []:
            kind, sep, name = n.partition("/")
            if sep and kind not in targets:
                fail(QingliangError(f"{n!r}: kind must be one of {', '.join(targets)}"))
            targets[kind if sep else "ModelDeployment"].append(name if sep else n)
        if files:
            import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
            from qingliang.platform.manifests.loader import load_paths

            for item in load_paths(files):
                if item.kind in targets:
                    targets[item.kind].append(item.name)
        if not any(targets.values()):
            fail(QingliangError("name a deployment or pass -f FILE"))
        if _remote.target() is not None:
            for kind, n in _apply_remote.delete(targets):
                console.print(f"{kind}/{n}: deleted", highlight=False)
            return
        ctl = _common.controller(load_settings())
        for kind, wanted in targets.items():
            if wanted:
                for n in ctl.delete(wanted, kind=kind):
                    console.print(f"{kind}/{n}: deleted")
    except QingliangError as exc:
        fail(exc)


def render(
    files: list[Path] = FilesOpt,
    no_auth: bool = typer.Option(False, "--no-auth", help="Render a gateway without API keys."),
    resolve: bool = typer.Option(
        False,
        help="Resolve model sources here (packaged models are converted into the data dir); "
        "off: sources must already be paths the cluster's nodes can read.",
    ),
) -> None:
    """Print the Ray Serve config for these manifests (KubeRay RayService serveConfigV2).

    It is the same declarative config `apply` sends to a local cluster, so one set of
    manifests deploys on a laptop and, through KubeRay, on a cluster.
    """
    import yaml

    from qingliang.platform.control.serve_config import serve_config
    from qingliang.platform.gateway_config import GatewayConfig

    settings = load_settings()
    try:
        ctl = _common.controller(settings)
        loaded = ctl.load(files)
        plans = ctl.compile(loaded)
        if resolve:
            plans = ctl.resolve(plans, progress=True)
        else:
            plans = [p.with_model_path(p.source) for p in plans]
        gateway = GatewayConfig(home=str(settings.home), auth_enabled=not no_auth, embeddings=True)
        config = serve_config(settings, gateway, plans)
    except QingliangError as exc:
        fail(exc)
        return
    # On a cluster the proxy must listen where the Kubernetes Service can reach it.
    config["http_options"] = {"host": "0.0.0.0", "port": settings.http_port}
    print(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), end="")
    stateful = sorted(f"{m.kind}/{m.name}" for m in loaded if m.kind != "ModelDeployment")
    if stateful:
        err.print(
            f"warning: {', '.join(stateful)}: not in this Serve config (they live in the "
            "platform's state, not as Serve applications); `qingliang export kuberay` carries "
            "them to a cluster, or apply them there with `qingliang --server URL apply`",
            highlight=False,
            soft_wrap=True,
        )
