"""``qingliang keys``: API keys for the gateway (stored hashed, in the key store)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer
from rich.table import Column, Table

from qingliang.platform.cli._common import console, err, fail, load_settings
from qingliang.platform.errors import QingliangError

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
    from qingliang.platform.storage.keys import KeyStore

    try:
        record = KeyStore(load_settings().state_db).set_limits(
            key,
            requests_per_minute=_limit_option(rpm, "--rpm"),
            tokens_per_day=_limit_option(tokens_per_day, "--tokens-per-day"),
        )
    except QingliangError as exc:
        fail(exc)
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
    for r in KeyStore(load_settings().state_db).list():

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
        record = KeyStore(load_settings().state_db).revoke(key)
    except QingliangError as exc:
        fail(exc)
        return
    console.print(f"revoked {record.prefix} ({record.name})")
