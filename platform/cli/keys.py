"""``qingliang keys``: API keys for the gateway (stored hashed, in the key store).

With ``--server`` (``QINGLIANG_URL``) the commands call that platform's ``/v1/keys``
routes with its admin key; ``--json`` prints the records as ``GET /v1/keys`` answers
them, the same locally and remotely.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import quote

import typer
from rich.table import Column, Table

from qingliang.platform.cli import _remote
from qingliang.platform.cli._common import console, err, fail, load_settings
from qingliang.platform.errors import NotFound, QingliangError, did_you_mean

keys_app = typer.Typer(help="API keys for the gateway (stored hashed).", no_args_is_help=True)


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
        fail(QingliangError("--admin acts for every tenant; it takes no --tenant"))
    scopes = [ADMIN] if admin else list(scope or DEFAULT_SCOPES)
    if admin and scope:
        scopes += [s for s in scope if s != ADMIN]
    if _remote.target() is not None:
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        body.update({"tenant": tenant} if tenant is not None else {})
        body.update({"requests_per_minute": rpm} if rpm is not None else {})
        body.update({"tokens_per_day": tokens_per_day} if tokens_per_day is not None else {})
        try:
            with _remote.connect() as api:
                out = api.post("/v1/keys", body)
        except QingliangError as exc:
            fail(exc)
            return
        record, key = _Record(out), out["key"]
    else:
        if tenant is not None:
            scopes.append(f"{TENANT_PREFIX}{tenant}")
        try:
            record, key = KeyStore(load_settings().state_db).create(
                name, scopes=scopes, requests_per_minute=rpm, tokens_per_day=tokens_per_day
            )
        except QingliangError as exc:
            fail(exc)
            return
    err.print(
        f"created {record.prefix} ({record.name}), scopes: {' '.join(record.scopes)}"
        f"{_limits_text(record)}; store it now, it is not shown again:",
        highlight=False,
    )
    print(key)


class _Record:
    """A key record as the API answers it, read as the key store's record is."""

    def __init__(self, row: dict[str, Any]) -> None:
        def when(t: float | None) -> datetime | None:
            return datetime.fromtimestamp(t).astimezone() if t is not None else None

        self.id = row["id"]
        self.prefix = row["prefix"]
        self.name = row["name"]
        tenant = [f"tenant:{row['tenant']}"] if row.get("tenant") else []
        self.scopes = [*row["scopes"], *tenant]
        self.created_at = when(row["created_at"])
        self.last_used_at = when(row["last_used_at"])
        self.revoked_at = when(row["revoked_at"])
        self.requests_per_minute = row["requests_per_minute"]
        self.tokens_per_day = row["tokens_per_day"]


def _remote_id(api: _remote.Remote, key: str) -> str:
    """The id of the remote key named ``key`` (an id or an active key's name)."""
    rows = api.get("/v1/keys")["data"]
    for r in rows:
        if key in (r["id"], r["prefix"]):
            return str(r["id"])
    active = [r for r in rows if r["name"] == key and not r["revoked"]]
    if active:
        return str(active[-1]["id"])
    raise NotFound(f"no key {key!r}{did_you_mean(key, [r['name'] for r in rows])}")


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
        fail(QingliangError(f"{what} must be a whole number or 'none', not {text!r}"))


@keys_app.command("limits")
def keys_limits(
    key: str = typer.Argument(..., help="Key id (ql-…) or name."),
    rpm: str = typer.Option(None, "--rpm", help="Requests a minute, or 'none'."),
    tokens_per_day: str = typer.Option(
        None, "--tokens-per-day", help="Tokens a UTC day, or 'none'."
    ),
) -> None:
    """Change a key's limits (over one, the gateway answers 429 with Retry-After)."""
    from qingliang.platform.storage.keys import KEEP, KeyStore

    try:
        wanted = {
            "requests_per_minute": _limit_option(rpm, "--rpm"),
            "tokens_per_day": _limit_option(tokens_per_day, "--tokens-per-day"),
        }
        if _remote.target() is not None:
            with _remote.connect() as api:
                path = f"/v1/keys/{quote(_remote_id(api, key), safe='')}/limits"
                body = {k: v for k, v in wanted.items() if v is not KEEP}
                record: Any = _Record(api.post(path, body))
        else:
            record = KeyStore(load_settings().state_db).set_limits(key, **wanted)
    except QingliangError as exc:
        fail(exc)
        return
    console.print(
        f"{record.prefix} ({record.name}){_limits_text(record) or ': no limits'}",
        highlight=False,
    )


@keys_app.command("scopes")
def keys_scopes(
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one document on stdout)."),
) -> None:
    """List the scopes a key can carry and what each allows."""
    from qingliang.platform.storage.keys import DEFAULT_SCOPES, SCOPES

    if as_json:
        rows = [
            {"scope": n, "allows": w, "default": n in DEFAULT_SCOPES} for n, w in SCOPES.items()
        ]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return

    table = Table("SCOPE", "ALLOWS")
    for name, what in SCOPES.items():
        table.add_row(name + (" (default)" if name in DEFAULT_SCOPES else ""), what)
    table.add_row("tenant:<id>", "act for this tenant only (else the tenant 'default')")
    console.print(table)


def _key_rows() -> list[dict[str, Any]]:
    """Every key as ``GET /v1/keys`` answers it (the remote platform's with --server)."""
    if _remote.target() is not None:
        with _remote.connect() as api:
            return list(api.get("/v1/keys")["data"])
    from qingliang.platform.gateway.routes.keys import record_json
    from qingliang.platform.storage.keys import KeyStore

    return [record_json(r) for r in KeyStore(load_settings().state_db).list()]


@keys_app.command("list")
def keys_list(
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one document on stdout)."),
) -> None:
    """List keys (id, name, dates; never the secret)."""
    try:
        rows = _key_rows()
    except QingliangError as exc:
        fail(exc)
        return
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return

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
    for r in map(_Record, rows):

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
        if _remote.target() is not None:
            with _remote.connect() as api:
                path = f"/v1/keys/{quote(_remote_id(api, key), safe='')}"
                record: Any = _Record(api.delete(path))
        else:
            record = KeyStore(load_settings().state_db).revoke(key)
    except QingliangError as exc:
        fail(exc)
        return
    console.print(f"revoked {record.prefix} ({record.name})")
