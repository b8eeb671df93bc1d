"""``up``, ``down``, ``status``, ``chat``, ``models``: the local platform and talking to it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from qingliang.platform.cli import _common
from qingliang.platform.cli._common import (
    console,
    fail,
    image_data_url,
    load_settings,
    status_printer,
)
from qingliang.platform.errors import QingliangError
from qingliang.platform.settings import Settings

if TYPE_CHECKING:
    from qingliang.platform.control.cluster import RunInfo

REPO_DEFAULTS = Path(__file__).resolve().parents[2] / "deploy" / "defaults"
KEY_FILE = "api-key"


JsonOpt = typer.Option(False, "--json", help="Print JSON (one document on stdout) instead.")


def _print_json(value: Any) -> None:
    import json

    print(json.dumps(value, ensure_ascii=False, indent=2))


def models(as_json: bool = JsonOpt) -> None:
    """List the models shipped in PyPI packages (usable as `packaged:<name>`); with
    --server, as the remote platform sees them."""
    from qingliang.platform.cli import _remote

    try:
        if _remote.target() is not None:
            with _remote.connect() as api:
                rows = api.get("/v1/packaged-models")["data"]
        else:
            from qingliang.platform.gateway.operator.admin import packaged_models

            rows = packaged_models(load_settings())
    except QingliangError as exc:
        fail(exc)
        return
    if as_json:
        _print_json(rows)
        return
    table = Table("SOURCE", "INSTALLED", "CACHED", "SIZE", "LICENCE", "DESCRIPTION")
    for m in rows:
        table.add_row(
            m["source"],
            "yes" if m["installed"] else f"no: {m['install']}",
            "yes" if m.get("cached") else "no",
            f"{m['size'] / 1e6:.0f} MB",
            m["licence"],
            m["description"],
        )
    console.print(table)


PrometheusOpt = typer.Option(
    False,
    "--prometheus",
    help="Also run Prometheus (Debian's `prometheus` package) on 127.0.0.1:9090 "
    "(QINGLIANG_PROMETHEUS_PORT), scraping every Ray node, and point the Ray dashboard "
    "at it; `down` stops it. See docs/operations.md.",
)


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
    ray_address: str = typer.Option(
        None,
        "--ray-address",
        envvar="QINGLIANG_RAY_ADDRESS",
        help="Deploy on this running Ray cluster (its head's GCS, HOST:PORT, as `ray start "
        "--address` takes it) instead of starting local Ray; `down` then leaves that Ray "
        "running. See docs/cluster.md.",
    ),
    with_prometheus: bool = PrometheusOpt,
) -> None:
    """Start local Ray (127.0.0.1, dashboard :8265), or join a Ray cluster
    (--ray-address), and serve the default manifests."""
    settings = load_settings()
    started = time.monotonic()
    paths = list(files or [REPO_DEFAULTS])
    try:
        ctl = _common.controller(settings)
        # Validate, plan and resolve first: a bad manifest or a corrupt model file
        # stops `up` before any process starts.
        console.print("[bold]Checking manifests and model sources[/bold]")
        ctl.resolve(ctl.compile(ctl.load(paths)), progress=True)
        info, settings = _start_or_join(settings, ray_address, with_prometheus)
        if ray_address:  # the joined cluster's dashboard is the one the rest talks to
            ctl = _common.controller(settings)
        key = _ensure_default_key(settings) if not no_auth else None
        gateway = {"auth_enabled": not no_auth, "conversation_log": log_conversations}
        # Recorded first, deployed with the models in one Serve config: Serve starts and
        # the engines load at once (cold start), then pushed again for a manifest set
        # without models (an unchanged config changes nothing).
        ctl.ensure_gateway(**gateway, push=False)
        console.print("[bold]Deploying[/bold] (first start loads the model; this takes a while)")
        ctl.apply(paths, wait=True, timeout_s=timeout, progress=True, on_status=status_printer())
        ctl.ensure_gateway(**gateway)
        ctl.wait("qingliang-gateway", timeout_s=120)
    except QingliangError as exc:
        fail(exc)
        return
    names = [r["name"] for r in ctl.get(live=False)]
    elapsed = time.monotonic() - started
    base = f"http://{settings.host}:{settings.http_port}"
    console.print(f"\n[green]Qingliang is serving[/green] ({elapsed:.0f} s)")
    console.print(f"  Console      {base}/ui/   (sign in with the API key)", highlight=False)
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


def _start_or_join(
    settings: Settings, ray_address: str | None, with_prometheus: bool = False
) -> tuple[RunInfo, Settings]:
    """Start local Ray, or join the cluster at ``ray_address``: its run info and the
    settings that reach it (a joined cluster's dashboard, from the run file). With
    ``with_prometheus``, a Prometheus too, that the head's dashboard reads."""
    from qingliang.platform.control import cluster, join
    from qingliang.platform.control import prometheus as prom

    if with_prometheus:  # before the head: its dashboard reads the address at start
        os.environ.setdefault("QINGLIANG_PROMETHEUS_URL", prom.prepare(settings))
    if ray_address:
        info = join.join_cluster(settings, ray_address)
        settings = cluster.settings_for(settings.home)
        console.print(f"Joined the Ray cluster at {info.gcs_address}")
    else:
        with console.status("Starting Ray on 127.0.0.1 ..."):
            info = cluster.start_head(settings)
    console.print(f"Ray is up (dashboard {info.dashboard_url})")
    if with_prometheus:
        console.print(f"Prometheus is up ({prom.launch(settings).url})")
    return info, settings


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


def down() -> None:
    """Stop what `qingliang up` started (Serve, then its own Ray processes only); on a
    joined Ray cluster, remove the platform's Serve applications and leave Ray running."""
    from qingliang.platform.control import cluster, join
    from qingliang.platform.control import prometheus as prom

    settings = load_settings()
    with console.status("Stopping ..."):
        if prom.shutdown(settings):
            console.print("stopped Prometheus")
        if join.leave_cluster(settings):
            console.print("removed the platform from the joined Ray cluster (Ray keeps running)")
            return
        stopped = cluster.stop_head(settings)
    console.print("stopped" if stopped else "nothing was running")


def status(as_json: bool = JsonOpt) -> None:
    """Show whether the platform runs and where (exit 3 when it does not); with --server,
    the remote one (its addresses as its own host sees them)."""
    from qingliang.platform.cli import _remote
    from qingliang.platform.gateway.operator.admin import platform_status

    try:
        if _remote.target() is not None:
            with _remote.connect() as api:
                out = api.get("/v1/platform")
        else:
            out = platform_status(load_settings())
    except QingliangError as exc:
        fail(exc)
        return
    if as_json:
        _print_json(out)
    elif not out["running"]:
        console.print(f"not running (data dir {out['home']})", highlight=False)
    elif out["started_at"] is None:  # a platform without a run file (KubeRay) answered
        console.print(f"running (data dir {out['home']} on the platform)", highlight=False)
    else:
        where = (
            f"joined the Ray cluster at {out['joined']}"
            if out.get("joined")
            else f"pid {out['pid']}"
        )
        console.print(
            f"running since {time.ctime(out['started_at'])} ({where})",
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"  API        {out['api']}", highlight=False)
        console.print(f"  console    {out['console']}", highlight=False)
        console.print(f"  dashboard  {out['dashboard']}", highlight=False)
    if not out["running"]:
        raise typer.Exit(3)


def _images_note(images: dict) -> str:
    """What the gateway did with the images, for a person: ``read by OCR: 57 characters``."""
    count = images.get("count", 0)
    if images.get("mode") == "ocr":
        return f"{count} image(s) read by OCR: {images.get('ocr_chars', 0)} characters"
    return f"{count} image(s) sent to the model"


def chat(
    model: str = typer.Argument(None, help="deployment or deployment:adapter (default: first)."),
    message: str = typer.Option(None, "-m", "--message", help="Ask once and exit."),
    url: str = typer.Option(None, help="Gateway base URL (default: the local one)."),
    api_key: str = typer.Option(None, envvar="QINGLIANG_API_KEY", help="API key."),
    max_tokens: int = typer.Option(512, help="Longest answer in tokens."),
    temperature: float = typer.Option(0.7),
    image: list[Path] = typer.Option(
        None,
        "--image",
        help="Send this picture with the first message (repeatable); the deployment sees "
        "it, reads it by OCR, or refuses it, as its spec.multimodal.image says.",
    ),
) -> None:
    """Chat with a deployment through the OpenAI API (streams the answer); with --server,
    the remote platform's."""
    import openai

    base, client = _chat_client(url, api_key)
    try:
        if model is None:
            ids = [m.id for m in client.models.list().data if ":" not in m.id]
            if not ids:
                fail(QingliangError("no deployments are being served"))
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
            if image:
                parts = [{"type": "image_url", "image_url": {"url": image_data_url(p)}}
                         for p in image]  # fmt: skip
                history.append(
                    {"role": "user", "content": [{"type": "text", "text": text}, *parts]}
                )
                image = []
            else:
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
                seen = (getattr(chunk, "model_extra", None) or {}).get("qingliang") or {}
                if seen.get("images"):
                    console.print(f"[dim]({_images_note(seen['images'])})[/dim]")
                if chunk.choices and chunk.choices[0].delta.content:
                    piece = chunk.choices[0].delta.content
                    answer.append(piece)
                    console.print(piece, end="", markup=False, highlight=False)
            console.print()
            history.append({"role": "assistant", "content": "".join(answer)})
            if message is not None:
                return
    except openai.APIError as exc:
        fail(_chat_error(base, exc))


def _chat_client(url: str | None, api_key: str | None) -> tuple[str, Any]:
    """The OpenAI client of ``chat``: ``--url``, else ``--server``, else the local
    platform; the key given, else the server's, else the one ``up`` wrote here."""
    import openai

    from qingliang.platform.cli import _remote

    settings = load_settings()
    chosen = _remote.target()
    base = url or (
        f"{chosen.url}/v1" if chosen else f"http://{settings.host}:{settings.http_port}/v1"
    )
    key = api_key or (chosen.key if chosen else None)
    if key is None and (settings.home / KEY_FILE).exists():
        key = (settings.home / KEY_FILE).read_text().strip()
    return base, openai.OpenAI(base_url=base, api_key=key or "none", max_retries=0, timeout=600)


def _chat_error(base: str, exc: Exception) -> QingliangError:
    """An OpenAI client error, worded: a refused key names QINGLIANG_API_KEY, an
    unreachable server its URL and the cause."""
    import openai

    from qingliang.platform.cli._remote import KEY_ENV

    if isinstance(exc, openai.AuthenticationError):
        return QingliangError(
            f"{base}: the server refused the API key (HTTP 401: {exc.message}); set "
            f"{KEY_ENV} (or --api-key) to a key of that platform"
        )
    if isinstance(exc, openai.APIConnectionError):
        return QingliangError(f"cannot reach the platform at {base}: {exc.__cause__ or exc}")
    return QingliangError(f"{base}: {exc}")
