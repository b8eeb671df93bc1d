"""``qingliang export kuberay``: the manifests `apply` takes, as KubeRay objects
(:mod:`qingliang.platform.control.kuberay`), and ``qingliang export init-state``, the
step the exported head pod runs before Ray starts (:mod:`qingliang.platform.control.kuberay_state`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from qingliang.platform.cli._common import FilesOpt, console, err, fail, load_settings
from qingliang.platform.errors import QingliangError

export_app = typer.Typer(
    help="Export the platform for another runtime (KubeRay on Kubernetes).",
    no_args_is_help=True,
)


def _resource_map(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, k8s = value.partition("=")
        if not sep or not name or not k8s:
            raise typer.BadParameter(
                f"{value!r}: expected RAY_RESOURCE=KUBERNETES_RESOURCE (or =ray)",
                param_hint="--resource",
            )
        out[name] = k8s
    return out


@export_app.command("kuberay")
def kuberay(
    files: list[Path] = FilesOpt,
    out: Path = typer.Option(Path("kuberay"), "-o", "--out", help="Folder to write into."),
    force: bool = typer.Option(False, help="Replace what an earlier export wrote in --out."),
    image: str = typer.Option(None, help="Image of the head and CPU workers [qingliang:VERSION]."),
    gpu_image: str = typer.Option(None, help="Image of GPU workers [IMAGE-gpu]."),
    npu_image: str = typer.Option(None, help="Image of NPU workers (vllm-ascend) [IMAGE-npu]."),
    name: str = typer.Option("qingliang", help="RayService name; prefixes the other objects."),
    namespace: str = typer.Option(None, help="Namespace of every object."),
    storage_size: str = typer.Option("100Gi", help="Size of the data volume claim."),
    storage_class: str = typer.Option(None, help="StorageClass of the claim (ReadWriteMany)."),
    mount_path: str = typer.Option("/data", help="Where the pods mount the volume."),
    database_secret: str = typer.Option(
        "qingliang-database", help="Secret with QINGLIANG_DATABASE_URL (key: url)."
    ),
    admin_secret: str = typer.Option(
        "qingliang-admin", help="Secret with the admin API key (key: key), optional."
    ),
    qdrant_url: str = typer.Option(None, help="Qdrant server for the knowledge bases."),
    qdrant_secret: str = typer.Option(None, help="Secret with the Qdrant API key (key: api-key)."),
    cpu_isa: str = typer.Option(
        "avx2", help="CPU of the CPU nodes: avx2 | avx512 | amx (dtype auto: fp32 or bf16)."
    ),
    shared_helpers: bool = typer.Option(
        False, help="One replica for the embedder, knowledge and agents (default: three)."
    ),
    gateway_replicas: int = typer.Option(1, help="Gateway replicas."),
    no_auth: bool = typer.Option(False, "--no-auth", help="A gateway without API keys."),
    resource: list[str] = typer.Option(
        [], help="RAY_RESOURCE=K8S_RESOURCE for a placement's custom resource (=ray: none)."
    ),
) -> None:
    """Write the KubeRay objects for these manifests into --out (docs/cluster.md).

    A RayService, the ConfigMap of manifests, the data volume claim and a
    kustomization.yaml: `kubectl apply -k OUT`. The Serve config is the one `apply`
    pushes locally (`qingliang render`), with every deployment, the gateway and its
    knowledge and agents services. What cannot travel to the cluster (a model path on
    this machine, an embedded knowledge store) is printed as a warning.
    """
    from qingliang.platform.control.kuberay import export_kuberay, write_files
    from qingliang.platform.control.kuberay_options import ExportOptions, default_image

    if cpu_isa not in ("avx2", "avx512", "amx", "other"):
        fail(QingliangError(f"--cpu-isa {cpu_isa!r}: one of avx2, avx512, amx, other"))
    try:
        options = ExportOptions(
            name=name,
            namespace=namespace,
            image=image or default_image(),
            gpu_image=gpu_image,
            npu_image=npu_image,
            mount_path=mount_path,
            storage_size=storage_size,
            storage_class=storage_class,
            database_secret=database_secret,
            admin_secret=admin_secret,
            qdrant_url=qdrant_url,
            qdrant_secret=qdrant_secret,
            cpu_isa=cpu_isa,  # type: ignore[arg-type]
            auth=not no_auth,
            shared_helpers=shared_helpers,
            gateway_replicas=gateway_replicas,
            resource_map=_resource_map(resource),
        )
        bundle = export_kuberay(files, options)
        written = write_files(bundle.files(), out, force=force)
    except QingliangError as exc:
        fail(exc)
        return
    for warning in bundle.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    apps = [a["name"] for a in bundle.serve_config["applications"]]
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    console.print(f"Serve applications: {', '.join(apps)}", highlight=False)
    console.print(f"next: kubectl apply -k {out}   (docs/cluster.md)", highlight=False)


@export_app.command("init-state")
def init_state(
    source: Path = typer.Option(..., "--from", help="The mounted ConfigMap of manifests."),
    files: list[str] = typer.Option(..., "-f", "--file", help="A manifest, relative to --from."),
    cpu_isa: str = typer.Option("avx2", help="As given to `export kuberay`."),
    sync: bool = typer.Option(True, help="Sync the knowledge bases (embed what changed)."),
) -> None:
    """Record the manifests in the shared state (the exported head's init step).

    Runs in the cluster's head pod before Ray starts: copies the manifests onto the volume,
    records them as `apply` would and converts packaged models there, deploying nothing
    (the RayService owns the Serve config)."""
    from qingliang.platform.cli.kb import sync_after_apply
    from qingliang.platform.control.kuberay_state import init_state as run

    def on_kept(kept: list[str]) -> None:
        console.print(f"kept as they are on the volume: {', '.join(kept)}", highlight=False)

    try:
        changes = run(
            source,
            files,
            load_settings(),
            cpu_isa=cpu_isa,  # type: ignore[arg-type]
            on_kept=on_kept,
        )
        for c in changes:
            extra = f" ({', '.join(c.fields)})" if c.fields else ""
            console.print(f"{c.kind}/{c.name}: {c.action}{extra}", highlight=False)
        kbs = [c.name for c in changes if c.kind == "KnowledgeBase"]
        if sync and kbs:
            sync_after_apply(kbs)
    except QingliangError as exc:
        fail(exc)
