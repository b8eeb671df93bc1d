"""The ``qingliang`` command line.

Heavy libraries (Ray, vLLM, torch) are imported inside the commands that need them,
so ``qingliang --help`` and ``qingliang validate`` stay fast.

Example:
    $ qingliang validate -f deploy/defaults
    $ qingliang up
    $ qingliang chat -m "What is the capital of France?"
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Column, Table

from qingliang.platform.cli.agents import agents_app
from qingliang.platform.cli.conversations import conversations_app
from qingliang.platform.cli.data import data_app
from qingliang.platform.cli.kb import kb_app, sync_after_apply
from qingliang.platform.cli.pipelines import finetune_app, pipelines_app
from qingliang.platform.cli.registry import lineage, registry_app
from qingliang.platform.errors import QingliangError
from qingliang.platform.settings import Settings

app = typer.Typer(
    name="qingliang",
    help="Qingliang (轻量): deploy and orchestrate large models lightly.\n\n"
    "Manifests (YAML) → vLLM on Ray Serve → an OpenAI-compatible API on 127.0.0.1. "
    "State lives in $QINGLIANG_HOME (default ~/.qingliang).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="API keys for the gateway (stored hashed).", no_args_is_help=True)
adapters_app = typer.Typer(help="Load / unload LoRA adapters at run time.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(adapters_app, name="adapters")
app.add_typer(kb_app, name="kb")
app.add_typer(agents_app, name="agents")
app.add_typer(data_app, name="data")
app.add_typer(conversations_app, name="conversations")
app.add_typer(registry_app, name="registry")
app.command("lineage")(lineage)
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(finetune_app, name="finetune")

console = Console()
err = Console(stderr=True)

REPO_DEFAULTS = Path(__file__).resolve().parents[2] / "deploy" / "defaults"
KEY_FILE = "api-key"

FilesOpt = typer.Option(..., "-f", "--file", help="Manifest file or folder (repeatable).")


def _settings() -> Settings:
    return Settings()


def _fail(exc: BaseException) -> None:
    err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _controller(settings: Settings):  # noqa: ANN202 - lazy import of Controller
    from qingliang.platform.control.apply import Controller

    return Controller(settings)


def _status_printer():  # noqa: ANN202
    last: dict[str, str] = {}

    def on_status(name: str, status: str, message: str) -> None:
        if last.get(name) != status:
            last[name] = status
            console.print(f"  {name}: {status}" + (f" — {message[:200]}" if message else ""))

    return on_status


@app.command()
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
        _fail(exc)


@app.command()
def apply(
    files: list[Path] = FilesOpt,
    wait: bool = typer.Option(True, help="Wait until every deployment is RUNNING."),
    timeout: float = typer.Option(900, help="Seconds to wait."),
    sync: bool = typer.Option(True, help="Sync applied KnowledgeBases (embed what changed)."),
) -> None:
    """Create or update deployments, knowledge bases and agent graphs, and cut a version of
    each Dataset. A bad manifest changes nothing."""
    try:
        ctl = _controller(_settings())
        changes = ctl.apply(files, wait=wait, timeout_s=timeout, on_status=_status_printer())
        for c in changes:
            extra = f" ({', '.join(c.fields)})" if c.fields else ""
            console.print(f"{c.kind}/{c.name}: {c.action}{extra}", highlight=False)
        kbs = [c.name for c in changes if c.kind == "KnowledgeBase"]
        if sync and kbs:
            sync_after_apply(kbs)
    except QingliangError as exc:
        _fail(exc)


@app.command()
def diff(files: list[Path] = FilesOpt) -> None:
    """Show what `apply` would change (exit 0 either way)."""
    try:
        for c in _controller(_settings()).diff(files):
            extra = "".join(f"\n    ~ {f}" for f in c.fields)
            console.print(f"{c.kind}/{c.name}: {c.action}{extra}", highlight=False)
    except QingliangError as exc:
        _fail(exc)


@app.command()
def get(name: str = typer.Argument(None, help="One deployment (default: all).")) -> None:
    """List applied deployments with their live status."""
    try:
        rows = _controller(_settings()).get(live=True)
    except QingliangError as exc:
        _fail(exc)
        return
    if name:
        rows = [r for r in rows if r["name"] == name]
        if not rows:
            _fail(QingliangError(f"no deployment named {name!r}"))
    table = Table("NAME", "STATUS", "ENGINE", "SOURCE", "ADAPTERS", "TRAFFIC", "GEN")
    for r in rows:
        table.add_row(
            r["name"],
            r["status"],
            r["engine"],
            r["source"],
            ", ".join(r["adapters"]),
            _traffic_text(r.get("traffic") or {}),
            str(r["generation"]),
        )
    console.print(table)
    for r in rows:
        if r["message"]:
            console.print(f"{r['name']}: {r['message'][:500]}", highlight=False)


@app.command()
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
                _fail(QingliangError(f"{n!r}: kind must be one of {', '.join(targets)}"))
            targets[kind if sep else "ModelDeployment"].append(name if sep else n)
        if files:
            import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
            from qingliang.platform.manifests.loader import load_paths

            for item in load_paths(files):
                if item.kind in targets:
                    targets[item.kind].append(item.name)
        if not any(targets.values()):
            _fail(QingliangError("name a deployment or pass -f FILE"))
        ctl = _controller(_settings())
        for kind, wanted in targets.items():
            if wanted:
                for n in ctl.delete(wanted, kind=kind):
                    console.print(f"{kind}/{n}: deleted")
    except QingliangError as exc:
        _fail(exc)


@app.command()
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

    settings = _settings()
    try:
        ctl = _controller(settings)
        plans = ctl.compile(ctl.load(files))
        if resolve:
            plans = ctl.resolve(plans, progress=True)
        else:
            plans = [p.with_model_path(p.source) for p in plans]
        gateway = {"home": str(settings.home), "auth_enabled": not no_auth, "embeddings": True}
        config = serve_config(settings, gateway, plans)
    except QingliangError as exc:
        _fail(exc)
        return
    # On a cluster the proxy must listen where the Kubernetes Service can reach it.
    config["http_options"] = {"host": "0.0.0.0", "port": settings.http_port}
    print(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), end="")


@app.command()
def models() -> None:
    """List the models shipped in PyPI packages (usable as `packaged:<name>`)."""
    from qingliang.serving.sources import list_packaged

    table = Table("SOURCE", "INSTALLED", "CACHED", "SIZE", "LICENCE", "DESCRIPTION")
    for m in list_packaged(_settings().model_cache):
        table.add_row(
            m["source"],
            "yes" if m["installed"] else f"no: {m['install']}",
            "yes" if m.get("cached") else "no",
            f"{m['size'] / 1e6:.0f} MB",
            m["licence"],
            m["description"],
        )
    console.print(table)


@app.command()
def up(
    files: list[Path] = typer.Option(
        None, "-f", "--file", help="Manifests to serve (default: deploy/defaults)."
    ),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Serve without API keys (local development only)."
    ),
    timeout: float = typer.Option(900, help="Seconds to wait for the deployments."),
    log_conversations: bool = typer.Option(
        False,
        "--log-conversations",
        help="Record answered chat and completion requests, one row per choice (prompts "
        "and answers, in plain text), in $QINGLIANG_HOME/conversations.sqlite; see "
        "`qingliang conversations`.",
    ),
) -> None:
    """Start local Ray (127.0.0.1, dashboard :8265) and serve the default manifests."""
    from qingliang.platform.control import cluster

    settings = _settings()
    started = time.monotonic()
    paths = list(files or [REPO_DEFAULTS])
    try:
        ctl = _controller(settings)
        # Validate, plan and resolve first: a bad manifest or a corrupt model file
        # stops `up` before any process starts.
        console.print("[bold]Checking manifests and model sources[/bold]")
        ctl.resolve(ctl.compile(ctl.load(paths)), progress=True)
        with console.status("Starting Ray on 127.0.0.1 ..."):
            info = cluster.start_head(settings)
        console.print(f"Ray is up (dashboard {info.dashboard_url})")
        key = _ensure_default_key(settings) if not no_auth else None
        with console.status("Starting the gateway ..."):
            ctl.ensure_gateway(auth_enabled=not no_auth, conversation_log=log_conversations)
        console.print("[bold]Deploying[/bold] (first start loads the model; this takes a while)")
        ctl.apply(paths, wait=True, timeout_s=timeout, progress=True, on_status=_status_printer())
        ctl.wait("qingliang-gateway", timeout_s=120)
    except QingliangError as exc:
        _fail(exc)
        return
    names = [r["name"] for r in ctl.get(live=False)]
    elapsed = time.monotonic() - started
    base = f"http://{settings.host}:{settings.http_port}"
    console.print(f"\n[green]Qingliang is serving[/green] ({elapsed:.0f} s)")
    console.print(f"  OpenAI API   {base}/v1   (models: {', '.join(names)})", highlight=False)
    console.print(f"  Ray dashboard {info.dashboard_url}", highlight=False)
    console.print(
        f"  Prometheus   http://{settings.host}:{settings.metrics_port}/metrics", highlight=False
    )
    auth = ""
    if key:
        console.print(f"  API key      in {settings.home / KEY_FILE} (export QINGLIANG_API_KEY)")
        auth = f' -H "Authorization: Bearer $(cat {settings.home / KEY_FILE})"'
    model = names[0] if names else "MODEL"
    console.print("\nTry:", highlight=False)
    console.print(
        f"  curl -s {base}/v1/chat/completions{auth} -H 'Content-Type: application/json' "
        f"""-d '{{"model": "{model}", "messages": [{{"role": "user", "content": "你好"}}]}}'""",
        highlight=False,
        soft_wrap=True,
    )
    console.print("  qingliang chat        qingliang get        qingliang down", highlight=False)


def _ensure_default_key(settings: Settings) -> str:
    """The operator key `up` prints (scope admin): made once, readable only by this user."""
    from qingliang.platform.storage.keys import ADMIN, KeyStore

    path = settings.home / KEY_FILE
    store = KeyStore(settings.state_db)
    if path.exists():
        key = path.read_text().strip()
        record = store.verify(key)
        if record is not None and ADMIN in record.scopes:
            return key
        if record is not None:  # made before scopes were enforced: an operator key anew
            store.revoke(record.id)
            console.print(f"replaced the operator key {record.prefix} by one with scope admin")
    _record, key = store.create(f"default-{int(time.time())}", scopes=[ADMIN])
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


@app.command()
def down() -> None:
    """Stop what `qingliang up` started (Serve, then its own Ray processes only)."""
    from qingliang.platform.control import cluster

    settings = _settings()
    with console.status("Stopping ..."):
        stopped = cluster.stop_head(settings)
    console.print("stopped" if stopped else "nothing was running")


@app.command()
def status() -> None:
    """Show whether the local platform runs and where."""
    from qingliang.platform.control import cluster

    settings = _settings()
    info = cluster.running(settings)
    if info is None:
        console.print(f"not running (data dir {settings.home})")
        raise typer.Exit(3)
    console.print(f"running since {time.ctime(info.started_at)} (pid {info.pid})")
    console.print(f"  API        http://{settings.host}:{info.http_port}/v1", highlight=False)
    console.print(f"  dashboard  {info.dashboard_url}", highlight=False)


@app.command()
def chat(
    model: str = typer.Argument(None, help="deployment or deployment:adapter (default: first)."),
    message: str = typer.Option(None, "-m", "--message", help="Ask once and exit."),
    url: str = typer.Option(None, help="Gateway base URL (default: the local one)."),
    api_key: str = typer.Option(None, envvar="QINGLIANG_API_KEY", help="API key."),
    max_tokens: int = typer.Option(512, help="Longest answer in tokens."),
    temperature: float = typer.Option(0.7),
) -> None:
    """Chat with a deployment through the OpenAI API (streams the answer)."""
    import openai

    settings = _settings()
    base = url or f"http://{settings.host}:{settings.http_port}/v1"
    key = api_key
    if key is None and (settings.home / KEY_FILE).exists():
        key = (settings.home / KEY_FILE).read_text().strip()
    client = openai.OpenAI(base_url=base, api_key=key or "none", max_retries=0, timeout=600)
    try:
        if model is None:
            ids = [m.id for m in client.models.list().data if ":" not in m.id]
            if not ids:
                _fail(QingliangError("no deployments are being served"))
            model = ids[0]
        history: list[dict] = []
        while True:
            if message is not None:
                text = message
            else:
                try:
                    text = console.input(f"[bold]{model}>[/bold] ")
                except (EOFError, KeyboardInterrupt):
                    console.print()
                    return
                if text.strip() in ("/exit", "/quit"):
                    return
                if not text.strip():
                    continue
            history.append({"role": "user", "content": text})
            stream = client.chat.completions.create(
                model=model,
                messages=history,  # type: ignore[arg-type]
                stream=True,
                max_tokens=max_tokens,
                temperature=temperature,
            )
            answer = []
            chunk: Any
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    piece = chunk.choices[0].delta.content
                    answer.append(piece)
                    console.print(piece, end="", markup=False, highlight=False)
            console.print()
            history.append({"role": "assistant", "content": "".join(answer)})
            if message is not None:
                return
    except openai.APIError as exc:
        _fail(QingliangError(f"{base}: {exc}"))


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="A label for the key."),
    tenant: str = typer.Option(
        None,
        help="The tenant the key acts for (default: the tenant 'default'). "
        "Only an --admin key acts for every tenant.",
    ),
    scope: list[str] = typer.Option(
        None,
        "--scope",
        "-s",
        help="A scope the key carries; repeat for more (default: inference, "
        "knowledge:read, agents:run). `qingliang keys scopes` lists them.",
    ),
    admin: bool = typer.Option(
        False, "--admin", help="Every route and every tenant: the operator's key."
    ),
    rpm: int = typer.Option(None, "--rpm", help="At most this many requests a minute."),
    tokens_per_day: int = typer.Option(
        None, "--tokens-per-day", help="At most this many tokens (prompt + answer) a UTC day."
    ),
) -> None:
    """Create a key; the key itself is printed once and never stored."""
    from qingliang.platform.storage.keys import ADMIN, DEFAULT_SCOPES, TENANT_PREFIX, KeyStore

    if admin and tenant is not None:
        _fail(QingliangError("--admin acts for every tenant; it takes no --tenant"))
    scopes = [ADMIN] if admin else list(scope or DEFAULT_SCOPES)
    if admin and scope:
        scopes += [s for s in scope if s != ADMIN]
    if tenant is not None:
        scopes.append(f"{TENANT_PREFIX}{tenant}")
    try:
        record, key = KeyStore(_settings().state_db).create(
            name, scopes=scopes, requests_per_minute=rpm, tokens_per_day=tokens_per_day
        )
    except QingliangError as exc:
        _fail(exc)
        return
    err.print(
        f"created {record.prefix} ({record.name}), scopes: {' '.join(record.scopes)}"
        f"{_limits_text(record)}; store it now, it is not shown again:",
        highlight=False,
    )
    print(key)


def _limits_text(record: Any) -> str:
    parts = []
    if record.requests_per_minute:
        parts.append(f"{record.requests_per_minute} requests/min")
    if record.tokens_per_day:
        parts.append(f"{record.tokens_per_day} tokens/day")
    return f", limits: {', '.join(parts)}" if parts else ""


def _limit_option(text: str | None, what: str) -> Any:
    """``None`` → keep; ``"none"`` → lift; a number → that limit."""
    from qingliang.platform.storage.keys import KEEP

    if text is None:
        return KEEP
    if text.strip().lower() in ("none", "off", "0"):
        return None
    try:
        return int(text)
    except ValueError:
        _fail(QingliangError(f"{what} must be a whole number or 'none', not {text!r}"))


@keys_app.command("limits")
def keys_limits(
    key: str = typer.Argument(..., help="Key id (ql-…) or name."),
    rpm: str = typer.Option(None, "--rpm", help="Requests a minute, or 'none'."),
    tokens_per_day: str = typer.Option(
        None, "--tokens-per-day", help="Tokens a UTC day, or 'none'."
    ),
) -> None:
    """Change a key's limits (over one, the gateway answers 429 with Retry-After)."""
    from qingliang.platform.storage.keys import KeyStore

    try:
        record = KeyStore(_settings().state_db).set_limits(
            key,
            requests_per_minute=_limit_option(rpm, "--rpm"),
            tokens_per_day=_limit_option(tokens_per_day, "--tokens-per-day"),
        )
    except QingliangError as exc:
        _fail(exc)
        return
    console.print(
        f"{record.prefix} ({record.name}){_limits_text(record) or ': no limits'}",
        highlight=False,
    )


@keys_app.command("scopes")
def keys_scopes() -> None:
    """List the scopes a key can carry and what each allows."""
    from qingliang.platform.storage.keys import DEFAULT_SCOPES, SCOPES

    table = Table("SCOPE", "ALLOWS")
    for name, what in SCOPES.items():
        table.add_row(name + (" (default)" if name in DEFAULT_SCOPES else ""), what)
    table.add_row("tenant:<id>", "act for this tenant only (else the tenant 'default')")
    console.print(table)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (id, name, dates; never the secret)."""
    from qingliang.platform.storage.keys import KeyStore

    # The id and the name are what `keys revoke` takes: never cut short, whatever the width.
    table = Table(
        Column("ID", no_wrap=True, min_width=len("ql-") + 12),
        Column("NAME", no_wrap=True),
        Column("SCOPES", no_wrap=True),
        "LIMITS",
        "CREATED",
        "LAST USED",
        "REVOKED",
    )
    for r in KeyStore(_settings().state_db).list():

        def fmt(t: datetime | None) -> str:
            return t.astimezone().strftime("%Y-%m-%d %H:%M") if t else "-"

        table.add_row(
            r.prefix,
            r.name,
            "\n".join(r.scopes),  # one a line: never cut in a narrow terminal
            _limits_text(r).removeprefix(", limits: ") or "-",
            fmt(r.created_at),
            fmt(r.last_used_at),
            fmt(r.revoked_at),
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="Key id (ql-…) or name.")) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    from qingliang.platform.storage.keys import KeyStore

    try:
        record = KeyStore(_settings().state_db).revoke(key)
    except QingliangError as exc:
        _fail(exc)
        return
    console.print(f"revoked {record.prefix} ({record.name})")


def _traffic_text(traffic: dict[str, float]) -> str:
    """``{"faq": 0.1}`` → ``faq 10%, base 90%`` (empty: no canary)."""
    if not traffic:
        return ""
    rest = max(0.0, 1 - sum(traffic.values()))
    parts = [f"{n} {s * 100:g}%" for n, s in sorted(traffic.items())]
    return ", ".join([*parts, f"base {rest * 100:g}%"])


def _parse_shares(items: list[str]) -> dict[str, float]:
    """``["faq=0.1", "sql=5%"]`` → ``{"faq": 0.1, "sql": 0.05}``; a malformed item
    raises QingliangError naming it. Whether the shares are valid for the deployment
    (listed adapters, 0 < share <= 1, sum <= 1) is the manifest's check."""
    shares: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise QingliangError(f"{item!r} is not NAME=SHARE (e.g. faq-v4=0.1)")
        try:
            share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
        except ValueError:
            raise QingliangError(
                f"{item!r}: the share {value!r} is not a number (e.g. {name}=0.1)"
            ) from None
        if name in shares:
            raise QingliangError(f"adapter {name!r} is given twice")
        shares[name] = share
    return shares


@adapters_app.command("load")
def adapters_load(
    deployment: str,
    name: str,
    path: Path = typer.Argument(..., help="PEFT adapter directory."),
    ref: str = typer.Option(
        None, "--ref", help="Its model-registry ref, name@version (shown on every answer)."
    ),
) -> None:
    """Load (or replace) an adapter on every replica, without a restart."""
    try:
        ctl = _controller(_settings())
        ctl.set_adapter(deployment, name, str(path), ref=ref)
        ctl.wait(deployment, timeout_s=300)
    except QingliangError as exc:
        _fail(exc)
    console.print(f"{deployment}:{name} loaded" + (f" ({ref})" if ref else ""), highlight=False)


@adapters_app.command("traffic")
def adapters_traffic(
    deployment: str,
    shares: list[str] = typer.Argument(
        None,
        help="NAME=SHARE per adapter, e.g. faq-v4=0.1 or faq-v4=10%; the rest goes to the "
        "base model.",
    ),
    clear: bool = typer.Option(False, "--clear", help="Send every request to the base model."),
) -> None:
    """Set the canary shares of requests for the bare deployment (replaces the old ones).

    Requests naming DEPLOYMENT:ADAPTER are not affected; requests with a `user` field
    stay on one arm. No replica restarts; the gateway follows within a second.
    """
    try:
        wanted = _parse_shares(list(shares or []))
        if clear and wanted:
            raise QingliangError("give NAME=SHARE pairs or --clear, not both")
        if not clear and not wanted:
            raise QingliangError("give NAME=SHARE pairs (e.g. faq-v4=0.1), or --clear")
        change = _controller(_settings()).set_traffic(deployment, wanted)
    except QingliangError as exc:
        _fail(exc)
        return
    text = _traffic_text(wanted) or "base 100%"
    suffix = " (unchanged)" if change.action == "unchanged" else ""
    console.print(f"{deployment}: {text}{suffix}", highlight=False)


@adapters_app.command("unload")
def adapters_unload(deployment: str, name: str) -> None:
    """Unload an adapter from every replica."""
    try:
        ctl = _controller(_settings())
        ctl.set_adapter(deployment, name, None)
        ctl.wait(deployment, timeout_s=300)
    except QingliangError as exc:
        _fail(exc)
    console.print(f"{deployment}:{name} unloaded")


def main() -> None:
    """Entry point of the ``qingliang`` console script."""
    logging.basicConfig(
        level=os.environ.get("QINGLIANG_LOG_LEVEL", "WARNING"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
