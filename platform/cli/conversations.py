"""``qingliang conversations …``: export, purge and count the gateway's conversation log.

The log is recorded by a gateway started with ``qingliang up --log-conversations`` in
``$QINGLIANG_HOME/conversations.sqlite``; these commands read and manage that file (no
running platform needed), or with ``--server`` (``QINGLIANG_URL``) the remote platform's
log through its admin routes (``/v1/conversations/...``). An export is the JSONL a
Dataset's ``gateway_logs`` source reads (docs/data.md).

Example:
    $ qingliang conversations export --days 7 --tenant city-a -o exports/city-a.jsonl
    $ qingliang conversations count
    $ qingliang conversations purge --older-than-days 90
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from qingliang.platform.errors import QingliangError
from qingliang.platform.settings import Settings

conversations_app = typer.Typer(
    help="The gateway's conversation log (`qingliang up --log-conversations`): "
    "export as training data, purge, count.",
    no_args_is_help=True,
)
err = Console(stderr=True)

DAY_S = 86_400.0


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _log() -> Any:
    from qingliang.platform.storage.conversations import ConversationLog

    return ConversationLog.for_home(Settings().home)


def _when(option: str, value: str) -> float:
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        _fail(
            f"{option} {value!r} is not a date: use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS] "
            "(local time) or add an offset (2025-03-01T08:00+08:00)"
        )


@conversations_app.command("export")
def export(
    output: Path = typer.Option(
        None, "-o", "--output", help="Write to this file (default: standard output)."
    ),
    since: str = typer.Option(
        None, "--since", help="Only conversations at or after this time (YYYY-MM-DD[THH:MM])."
    ),
    until: str = typer.Option(
        None, "--until", help="Only conversations before this time (YYYY-MM-DD[THH:MM])."
    ),
    days: float = typer.Option(
        None, "--days", min=0, help="Only the last N days (instead of --since)."
    ),
    tenants: list[str] = typer.Option(None, "--tenant", help="Only this tenant (repeatable)."),
    models: list[str] = typer.Option(
        None, "--model", help="Only this model, as clients sent it: qwen or qwen:sql (repeatable)."
    ),
) -> None:
    """Write conversations as JSONL for a Dataset's `gateway_logs` source, oldest first."""
    if since is not None and days is not None:
        _fail("use --since or --days, not both")
    start = _when("--since", since) if since is not None else None
    if days is not None:
        start = time.time() - days * DAY_S
    end = _when("--until", until) if until is not None else None
    if start is not None and end is not None and end <= start:
        _fail(f"--until {until!r} is not after the start of the export")
    filters: dict[str, Any] = {
        "since": start,
        "until": end,
        "tenants": tuple(tenants or ()),
        "models": tuple(models or ()),
    }
    try:
        if output is None:
            n = _export(sys.stdout, filters)
            sys.stdout.flush()
        else:
            n = _export_file(output, filters)
    except (QingliangError, OSError, sqlite3.Error) as exc:
        _fail(str(exc))
    where = f" to {output}" if output is not None else ""
    err.print(f"exported {n} conversation(s){where}", highlight=False, soft_wrap=True)


def _export(out: Any, filters: dict[str, Any]) -> int:
    """Write the export to ``out`` (the remote platform's with --server); how many lines."""
    from qingliang.platform.cli import _remote

    if _remote.target() is None:
        return int(_log().export(out, **filters))
    params: dict[str, Any] = {k: filters[k] for k in ("since", "until") if filters[k] is not None}
    params.update(tenant=list(filters["tenants"]), model=list(filters["models"]))
    n = 0
    with _remote.connect() as api:
        for line in api.text("/v1/conversations/export", params=params):
            if line.strip():
                out.write(line + "\n")
                n += 1
    return n


def _export_file(output: Path, filters: dict[str, Any]) -> int:
    """Export into ``output`` (owner-only: it holds prompts), replacing it only when done."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            n = _export(out, filters)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


@conversations_app.command("purge")
def purge(
    older_than_days: float = typer.Option(
        ..., "--older-than-days", min=0, help="Delete conversations older than N days."
    ),
) -> None:
    """Delete old conversations (retention)."""
    from qingliang.platform.cli import _remote

    try:
        if _remote.target() is not None:
            with _remote.connect() as api:
                body = {"older_than_days": float(older_than_days)}
                n = api.post("/v1/conversations/purge", body)["purged"]
        else:
            n = _log().purge(older_than_days * DAY_S)
    except (QingliangError, OSError, sqlite3.Error) as exc:
        _fail(str(exc))
    print(f"purged {n} conversation(s) older than {older_than_days:g} day(s)")


@conversations_app.command("count")
def count(
    as_json: bool = typer.Option(False, "--json", help='Print {"count": N} instead.'),
) -> None:
    """How many conversations are stored."""
    from qingliang.platform.cli import _remote

    try:
        if _remote.target() is not None:
            with _remote.connect() as api:
                n = int(api.get("/v1/conversations/count")["count"])
        else:
            n = _log().count()
    except (QingliangError, OSError, sqlite3.Error) as exc:
        _fail(str(exc))
    print(json.dumps({"count": n}) if as_json else n)
