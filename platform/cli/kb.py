"""``qingliang kb …``: knowledge bases from the command line.

Runs in-process when the platform is down; while ``qingliang up`` runs, every command goes
through the gateway (whose knowledge server owns the embedded shards) with the operator key;
with ``--server`` (``QINGLIANG_URL``), through that platform's gateway. ``--json`` prints
the API's own answer, the same locally and remotely.

Example:
    $ qingliang kb ingest ./policies --name gov-policy --tenant city-a --domain gov
    $ qingliang kb search gov-policy "返岗人员需要隔离多久"
    $ qingliang kb sync gov-policy
    $ qingliang kb snapshot gov-policy --note "before the March update"
    $ qingliang kb rollback gov-policy 3
    $ qingliang kb stats gov-policy
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from qingliang.platform.cli._common import image_data_url
from qingliang.platform.errors import QingliangError
from qingliang.platform.settings import Settings

kb_app = typer.Typer(
    help="Knowledge bases: ingest, sync, search (cited), snapshots and rollback.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)


def _fail(exc: BaseException) -> None:
    err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def _client() -> Any:
    from qingliang.platform.cli.kb_client import connect

    client = connect(Settings())
    try:
        yield client
    except QingliangError as exc:
        _fail(exc)
    finally:
        client.close()


@contextmanager
def _bars(enabled: bool) -> Any:
    """A progress callback drawing one bar per stage (parse, embed, restore)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    labels = {"parse": "parsing files", "embed": "embedding + writing", "restore": "restoring"}
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def print_sync(out: dict) -> None:
    """One sync's result, for a person."""
    console.print(
        f"{out['kb']}: version {out['version']} — {out['chunks']} chunks from "
        f"{out.get('files', '?')} files: {out['added']} added, {out['updated']} updated, "
        f"{out['unchanged']} unchanged, {out['deleted']} deleted; embedded {out['embedded']} "
        f"({out['reembedded_share']:.1%}), reused {out['reused']} in {out['seconds']:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    if out.get("snapshot") is not None:
        console.print(f"  snapshot v{out['snapshot']} saved", highlight=False)
    for e in out.get("errors", []):
        console.print(
            f"  [yellow]skipped[/yellow] {e['path']}: {e['reason']}",
            highlight=False,
            soft_wrap=True,
        )
    for s in out.get("skipped", []):
        console.print(
            f"  [yellow]not read[/yellow] {s['path']}: {s['reason']}",
            highlight=False,
            soft_wrap=True,
        )


def sync_after_apply(names: list[str]) -> None:
    """Sync KBs `qingliang apply` just registered (in-process or on the running platform)."""
    with _client() as client:
        for name in names:
            if client.remote:
                with console.status(f"syncing {name} on the running platform ..."):
                    out = client.call("sync", name, {})
            else:
                with _bars(True) as bar:
                    out = client.call("sync", name, {}, progress=bar)
            print_sync(out)


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return s[:63].strip("-") or "kb"


@kb_app.command("ingest")
def ingest(
    paths: list[Path] = typer.Argument(..., help="Files or folders to ingest (recursive)."),
    name: str = typer.Option(None, "--name", "-n", help="KB name (default: from the first path)."),
    tenant: str = typer.Option("default", help="Tenant label written on every chunk."),
    domain: str = typer.Option(None, help="Domain label (gov, healthcare, ...)."),
    no_bm25: bool = typer.Option(False, "--no-bm25", help="Dense vectors only."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Create (or update) a KB over PATHS and sync it: only changed chunks are embedded."""
    from qingliang.knowledge.manifest import KnowledgeBase

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        _fail(QingliangError(f"no such file or folder: {', '.join(missing)}"))
    sources = [
        {"folder": str(p.resolve())} if p.is_dir() else {"path": str(p.resolve())} for p in paths
    ]
    kb_name = name or _slug(paths[0].resolve().name)
    body = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": kb_name},
        "spec": {
            "sources": sources,
            "sparse": {"bm25": not no_bm25},
            "labels": {"tenant": tenant, **({"domain": domain} if domain else {})},
        },
    }
    try:
        manifest = KnowledgeBase.model_validate(body)
    except Exception as exc:  # pydantic's ValidationError, worded for the flags
        _fail(QingliangError(f"invalid options: {exc}"))
        return
    with _client() as client:
        if client.remote:
            _fail(
                QingliangError(
                    "the platform is running (here, or the --server one): write a "
                    "KnowledgeBase manifest and `qingliang apply -f` it (ad-hoc ingest "
                    "needs a local platform that is down)"
                )
            )
        action = client.service.register(manifest, base=Path.cwd(), actor="cli")
        console.print(f"KnowledgeBase/{kb_name}: {action}", highlight=False)
        with _bars(progress) as bar:
            out = client.call("sync", kb_name, {}, progress=bar)
        print_sync(out)


@kb_app.command("sync")
def sync(
    name: str = typer.Argument(..., help="Knowledge base."),
    rebuild: bool = typer.Option(False, help="Drop the collection and embed everything again."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Bring a KB up to date with its sources (re-embeds only what changed)."""
    with _client() as client, _bars(progress and not client.remote) as bar:
        if client.remote:
            with console.status(f"syncing {name} on the running platform ..."):
                out = client.call("sync", name, {"rebuild": rebuild})
        else:
            out = client.call("sync", name, {"rebuild": rebuild}, progress=bar)
        print_sync(out)


@kb_app.command("search")
def search(
    name: str = typer.Argument(..., help="Knowledge base."),
    query: str = typer.Argument(None, help="What to look for (optional with --image)."),
    image: Path = typer.Option(
        None,
        "--image",
        help="Search with a picture: the text OCR reads in it (with --kind image: its "
        "own vector among the KB's images).",
    ),
    limit: int = typer.Option(5, "--limit", "-k", help="Hits (1-100)."),
    mode: str = typer.Option(None, help="dense or hybrid (default: hybrid when BM25 is on)."),
    mmr: float = typer.Option(None, help="MMR diversity λ in 0..1 (default: off)."),
    kind: list[str] = typer.Option(None, help="Only these chunk kinds (repeatable)."),
    context: bool = typer.Option(
        False,
        "--context",
        help="Also print each hit's context: its chunk with the neighbouring chunks the KB "
        "gives (spec.retrieval.context.neighbours), what an agent's prompt reads.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """Search a KB; every hit is printed with its citation."""
    import json

    kwargs: dict[str, Any] = {"query": query, "limit": limit}
    if image is not None:
        kwargs["image"] = image_data_url(image)
    if mode:
        kwargs["mode"] = mode
    if mmr is not None:
        kwargs["mmr"] = mmr
    if kind:
        kwargs["kinds"] = kind
    with _client() as client:
        out = client.call("search", name, kwargs)
    if as_json:
        console.print_json(json.dumps(out, ensure_ascii=False))
        return
    console.print(f"{out['kb']} v{out['version']} ({out['mode']})", highlight=False)
    if out.get("image_query"):
        seen = out["image_query"]
        read = " ".join(str(seen.get("ocr_text", "")).split())
        console.print(
            f"image searched by {seen['mode']}" + (f": {read[:200]}" if read else ""),
            highlight=False,
            soft_wrap=True,
        )
    if not out["citations"]:
        console.print("no hits")
    for i, c in enumerate(out["citations"], 1):
        where = " › ".join(c["heading_path"]) if c["heading_path"] else ""
        console.print(
            f"[bold][{i}][/bold] {c['score']:.4f}  {c['source']}  {c['locator']}"
            + (f"  {where}" if where else "")
            + f"  (v{c['version']}, {c['kind']})",
            highlight=False,
            soft_wrap=True,
        )
        text = " ".join(c["text"].split())
        console.print(
            f"    {text[:300]}{'…' if len(text) > 300 else ''}", highlight=False, soft_wrap=True
        )
        if context:
            _print_context(c)


def _print_context(c: dict[str, Any]) -> None:
    if c.get("context") is None:
        console.print(
            "    context: none (spec.retrieval.context.neighbours is 0, or a hit that stands alone)"
        )
        return
    text = " ".join(str(c["context"]).split())
    console.print(f"    context ({len(text)} chars): {text}", highlight=False, soft_wrap=True)


JsonOpt = typer.Option(False, "--json", help="Print JSON (one document on stdout) instead.")


def _print_json(value: Any) -> None:
    import json

    print(json.dumps(value, ensure_ascii=False, indent=2))


@kb_app.command("list")
def list_kbs(as_json: bool = JsonOpt) -> None:
    """The knowledge bases applied here."""
    with _client() as client:
        rows = client.call("names", None, {})["data"]
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        console.print(row["id"], highlight=False)


@kb_app.command("stats")
def stats(name: str = typer.Argument(..., help="Knowledge base."), as_json: bool = JsonOpt) -> None:
    """Version, documents, chunks, snapshots and the last sync of a KB."""
    with _client() as client:
        s = client.call("stats", name, {})
    if as_json:
        _print_json(s)
        return
    console.print(
        f"{s['kb']}  tenant {s['tenant']}  domain {s['domain'] or '-'}  version {s['version']}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"  {s['documents']} documents ({s['uploaded_documents']} uploaded), {s['chunks']} "
        f"chunks, {s['answers']} learned answers",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"  store {s['store']} / collection {s['collection']}: {s['spec'] or 'not synced'}; "
        f"embedding {s['embedding']}, BM25 {'on' if s['bm25'] else 'off'}",
        highlight=False,
        soft_wrap=True,
    )
    if s["snapshots"]:
        table = Table("snapshot", "saved", "points", "note")
        for snap in s["snapshots"]:
            saved = datetime.fromtimestamp(snap["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(f"v{snap['version']}", saved, str(snap["points"]), snap["note"])
        console.print(table)
    if s["last_sync"]:
        ls = s["last_sync"]
        when = datetime.fromtimestamp(ls["at"]).strftime("%Y-%m-%d %H:%M:%S")
        console.print(f"  last change {when} (v{ls['version']})", highlight=False)


@kb_app.command("snapshot")
def snapshot(
    name: str = typer.Argument(..., help="Knowledge base."),
    note: str = typer.Option("", help="A note kept with the snapshot."),
) -> None:
    """Save the KB's current version (points and vectors) for a later rollback."""
    with _client() as client:
        s = client.call("snapshot", name, {"note": note})
    console.print(f"{name}: snapshot v{s['version']} ({s['points']} points)", highlight=False)


@kb_app.command("rollback")
def rollback(
    name: str = typer.Argument(..., help="Knowledge base."),
    version: int = typer.Argument(..., help="Snapshot version to restore."),
) -> None:
    """Restore a snapshot (only the difference is written); learned answers stay as they are."""
    with _client() as client, _bars(not client.remote) as bar:
        out = client.call("rollback", name, {"version": version}, progress=bar)
    console.print(
        f"{name}: restored v{out['restored']} as version {out['version']} "
        f"({out['upserted']} points written, {out['deleted']} deleted)",
        highlight=False,
        soft_wrap=True,
    )


@kb_app.command("documents")
def documents(
    name: str = typer.Argument(..., help="Knowledge base."), as_json: bool = JsonOpt
) -> None:
    """The documents stored in a KB."""
    with _client() as client:
        rows = client.call("documents", name, {})["data"]
    if as_json:
        _print_json(rows)
        return
    table = Table("source", "record", "chunks", "version", "uploaded")
    for r in rows:
        table.add_row(
            str(r["source"]),
            str(r["record"] or ""),
            str(r["chunks"]),
            str(r["version"]),
            "yes" if r["uploaded"] else "",
        )
    console.print(table)


@kb_app.command("upload")
def upload(
    name: str = typer.Argument(..., help="Knowledge base."),
    file: Path = typer.Argument(..., help="A file to add (or replace) as an uploaded document."),
) -> None:
    """Add one file to a KB without touching its sources."""
    from qingliang.platform.cli.kb_client import read_upload

    if not file.is_file():
        _fail(QingliangError(f"no such file: {file}"))
    with _client() as client:
        print_sync(client.call("upload", name, read_upload(file)))
