"""``qingliang data …``: dataset versions, governance reports, quarantine, deletion, audit.

Versions are cut by ``qingliang apply -f dataset.yaml``; these commands read and manage
what is stored under ``$QINGLIANG_HOME/datasets`` (no running platform needed).

Example:
    $ qingliang apply -f deploy/examples/dataset-gov.yaml
    $ qingliang data versions gov-sft
    $ qingliang data report gov-sft
    $ qingliang data quarantine gov-sft
    $ qingliang data delete-record gov-sft 3cc83a9d4568f6b9b7cc926e --reason "request #17"
    $ qingliang data audit gov-sft
"""

from __future__ import annotations

import getpass
import json
import os
from datetime import datetime
from typing import Any

import typer
from rich.console import Console

from qingliang.platform.errors import QingliangError
from qingliang.platform.settings import Settings

data_app = typer.Typer(
    help="Datasets: versions, governance reports, quarantine, record deletion, audit log.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

VersionArg = typer.Argument(
    None, help="Version id (sha256:… or a unique hex prefix); default: the latest."
)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")


def _fail(exc: BaseException) -> None:
    err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _store() -> Any:
    from qingliang.platform.cli import _remote
    from qingliang.platform.lifecycle.data.store import DatasetStore

    try:
        _remote.not_remote(
            "data",
            "run it on the platform's host; `qingliang --server URL registry datasets "
            "[NAME] --json` lists the registered dataset versions remotely",
        )
    except QingliangError as exc:
        _fail(exc)
    return DatasetStore.for_home(Settings().home)


def _out(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _short(version: str | None, full: bool = False) -> str:
    if not version:
        return "-"
    return version if full else version[: len("sha256:") + 12]


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a container
        return os.environ.get("USER", "unknown")


@data_app.command("versions")
def versions(
    name: str = typer.Argument(..., help="Dataset."),
    full: bool = typer.Option(False, "--full", help="Print whole version ids."),
    as_json: bool = JsonOpt,
) -> None:
    """List a dataset's versions, newest first (superseded and removed ones too)."""
    try:
        rows = _store().versions(name)
    except QingliangError as exc:
        _fail(exc)
        return
    if as_json:
        _out(json.dumps([{**r.__dict__, "path": str(r.path or "")} for r in rows], indent=2))
        return
    for v in rows:
        state = "active (latest)" if v.latest else v.status
        if v.superseded_by:
            state += f" by {_short(v.superseded_by, full)}"
        if v.reason:
            state += f": {v.reason}"
        _out(
            f"{'*' if v.latest else ' '} {_short(v.version, full)}  {_when(v.created_at)}  "
            f"{v.actor}  {v.records} records ({v.train} train, {v.eval} eval), "
            f"{v.quarantined} quarantined  {state}"
        )


def _step_line(s: dict[str, Any]) -> str:
    head = f"  {s['step']}"
    if not s["enabled"]:
        return f"{head}: off ({s['in']} records passed through)"
    if s.get("scope"):
        head += f" ({s['scope']})"
    if s.get("mode"):
        head += f" (mode {s['mode']})"
    line = f"{head}: {s['in']} → {s['out']}"
    if s["step"] == "schema":
        reasons = ", ".join(f"{k} {n}" for k, n in s.get("reasons", {}).items())
        line += f"; quarantined {s.get('quarantined', 0)}" + (f" ({reasons})" if reasons else "")
    elif s["step"] == "pii":
        found = [
            f"{f['redacted']} {k} redacted in {f['records']} records"
            for k, f in s.get("findings", {}).items()
        ]
        line += f"; {'; '.join(found) or 'nothing found'}; {s['records_changed']} records changed"
    elif s["step"] == "dedup":
        removed = s.get("removed", {})
        line += f"; removed {removed.get('exact', 0)} exact, {removed.get('near', 0)} near"
        examples = [
            f"{e['id']} = {e['duplicate_of']} ({e['reason']}, {e['similarity']:.2f})"
            for e in s.get("examples", [])[:3]
        ]
        if examples:
            line += "; e.g. " + ", ".join(examples)
    elif s["step"] == "quality":
        rules = ", ".join(f"{k} {n}" for k, n in s.get("removed", {}).items())
        line += f"; removed by rule: {rules or 'none'}"
    return line


@data_app.command("report")
def report(
    name: str = typer.Argument(..., help="Dataset."),
    version: str = VersionArg,
    as_json: bool = JsonOpt,
) -> None:
    """What each governance step did to a version: records in / out, removals by reason."""
    try:
        r = _store().report(name, version)
    except QingliangError as exc:
        _fail(exc)
        return
    if as_json:
        _out(json.dumps(r, ensure_ascii=False, indent=2))
        return
    _out(
        f"{r['dataset']} {r['version']} ({r['format']}), "
        f"cut {_when(r['created_at'])} by {r['actor']}"
    )
    rd = r["read"]
    _out(
        f"  read: {rd['rows']} rows from {len(r['sources'])} files → {rd['records']} records, "
        f"{rd['quarantined']} quarantined"
    )
    for s in r["sources"]:
        extra = f", {s['filtered']} filtered out" if s["filtered"] else ""
        _out(
            f"    {s['source']} ({s['kind']}): {s['rows']} rows, {s['records']} records, "
            f"{s['quarantined']} quarantined{extra}"
        )
    if rd["ignored_fields"]:
        fields = ", ".join(f"{k} ({n})" for k, n in rd["ignored_fields"].items())
        _out(f"    fields not used: {fields}")
    if r["corrections"]:
        c = r["corrections"]
        _out(
            f"  corrections: {c['replaced']} replaced, {c['added']} added, "
            f"{c['quarantined']} quarantined"
        )
    if r["tombstoned"]["removed"]:
        _out(f"  deleted records dropped: {r['tombstoned']['removed']}")
    for s in r["steps"]:
        _out(_step_line(s))
    sp = r["split"]
    _out(
        f"  split: {sp['train']} train, {sp['eval']} eval (eval_fraction {sp['eval_fraction']}, "
        f"seed {sp['seed']})"
    )
    for d in r.get("deletions", []):
        removed = ", ".join(f"{n} {k}" for k, n in d["removed"].items() if n)
        _out(
            f"  deletion by {d['actor']} at {_when(d['at'])}: {', '.join(d['record_ids'])} "
            f"({removed or 'nothing'}) from {_short(d['from'])}: {d['reason']}"
        )
    _out(f"  stored: {r['records']} records, {r['quarantined']} quarantined")
    for warning in r.get("warnings") or []:
        _out(f"  warning: {warning}")


@data_app.command("quarantine")
def quarantine(
    name: str = typer.Argument(..., help="Dataset."),
    version: str = VersionArg,
    as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON lines."),
) -> None:
    """The malformed records of a version: source, line or row, step and reason."""
    try:
        entries = _store().quarantine(name, version)
    except QingliangError as exc:
        _fail(exc)
        return
    if as_json:
        for e in entries:
            print(json.dumps(e, ensure_ascii=False))
        return
    if not entries:
        _out("no quarantined records")
    for e in entries:
        where = f"line {e['line']}" if "line" in e else f"row {e.get('row')}"
        rid = f" id {e['id']}" if "id" in e else ""
        _out(f"{e['source']} {where} [{e['step']}]{rid}: {e['reason']}")
        body = e.get("raw") if "raw" in e else json.dumps(e.get("record"), ensure_ascii=False)
        if body:
            _out(f"    {body[:200]}{'…' if len(body) > 200 else ''}")


@data_app.command("delete-record")
def delete_record(
    name: str = typer.Argument(..., help="Dataset."),
    record_id: str = typer.Argument(None, help="Record id (the `id` of a stored record)."),
    match: str = typer.Option(
        None, "--match", help="Instead of an id: delete every stored record containing this text."
    ),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the audit log)."),
    actor: str = typer.Option(None, "--actor", help="Who asks (default: the user name)."),
) -> None:
    """Delete a record from every stored version and from later cuts.

    Each version holding it is replaced by a copy without it (printed as old → new); the
    record id is tombstoned so later cuts leave it out. The model registry then records
    the new versions, marks the old ones superseded and every adapter trained on them
    stale (printed). If the registry cannot be updated the deletion still stands; the
    command says so, exits 1, and `qingliang registry sync NAME` catches up.
    """
    store = _store()
    try:
        result = store.delete_record(
            name, record_id, match=match, actor=actor or _actor(), reason=reason
        )
    except QingliangError as exc:
        _fail(exc)
        return
    _out(f"{name}: deleted {', '.join(result.record_ids)} ({reason})")
    if not result.superseded:
        _out("  no stored version held it; later cuts will leave it out")
        return
    _out("  superseded dataset versions (old → new):")
    for old, new in result.superseded.items():
        _out(f"    {old} → {new}")
    try:
        stale, served = _propagate(store, result, reason)
    except Exception as exc:  # whatever failed, the deletion above stands: say so
        detail = str(exc) if isinstance(exc, QingliangError) else f"{type(exc).__name__}: {exc}"
        err.print(
            "[red]error:[/red] the deletion stands (the versions above replace the old ones), "
            f"but the model registry was not updated: {detail}\n"
            "  adapters trained on the old versions are not marked stale yet; once the "
            f"registry is reachable, run: qingliang registry sync {name}",
            markup=True,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    if stale:
        _out(f"  adapters marked stale in the registry: {', '.join(stale)}")
        _out("  retrain them on the new versions")
        for ref, deployments in served.items():
            _out(f"  {ref} is still served by {', '.join(deployments)}: take it out of them")
    else:
        _out("  registry: no adapter was trained on the old versions")


def _propagate(store: Any, result: Any, reason: str) -> tuple[list[str], dict[str, list[str]]]:
    """Record the deletion in the model registry: the adapter refs marked stale, and the
    deployments that still serve each of them."""
    from qingliang.platform.lifecycle.registry import Registry, propagate_deletion

    with Registry(home=Settings().home) as reg:
        stale = propagate_deletion(reg, result, reason, store=store)
        served: dict[str, list[str]] = {}
        if stale:
            for deployment in reg.deployments.names():
                for a in reg.deployments.serving(deployment):
                    if a.target_kind == "adapter" and a.target in stale:
                        served.setdefault(a.target, []).append(deployment)
        return stale, served


@data_app.command("audit")
def audit(
    name: str = typer.Argument(None, help="Only this dataset (default: all)."),
    since: str = typer.Option(
        None, "--since", help="Only entries at or after this time (YYYY-MM-DD[THH:MM])."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON lines."),
) -> None:
    """The append-only audit log: who cut, deleted, superseded or removed what, and when."""
    try:
        start = datetime.fromisoformat(since).timestamp() if since else None
    except ValueError:
        _fail(QingliangError(f"--since {since!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM"))
        return
    try:
        entries = _store().audit(name, since=start)
    except QingliangError as exc:
        _fail(exc)
        return
    for e in entries:
        if as_json:
            print(json.dumps(e.__dict__, ensure_ascii=False))
            continue
        details = " ".join(
            f"{k}={v}" for k, v in e.details.items() if v not in (None, [], "", False)
        )
        _out(f"{_when(e.at)}  {e.actor}  {e.action}  {e.name or '-'}  {details}")
    if not entries and not as_json:
        _out("no audit entries")
