"""``qingliang adapters``: load, unload and share traffic between LoRA adapters at run
time, and point aliases at them (the work is the controller's: an adapters-only update,
no restart). With ``--server`` the same changes go through that platform's admin routes
(``/v1/deployments/{name}/adapters|traffic|aliases``), run by the Controller there."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import typer

from qingliang.platform.cli import _common, _remote
from qingliang.platform.cli._common import console, fail, load_settings
from qingliang.platform.errors import QingliangError

adapters_app = typer.Typer(help="Load / unload LoRA adapters at run time.", no_args_is_help=True)


def traffic_text(traffic: dict[str, float]) -> str:
    """``{"faq": 0.1}`` → ``faq 10%, base 90%`` (empty: no canary; nothing left for the
    base model: no ``base`` part)."""
    if not traffic:
        return ""
    rest = max(0.0, 1 - sum(traffic.values()))
    parts = [f"{n} {s * 100:g}%" for n, s in sorted(traffic.items())]
    return ", ".join([*parts, f"base {rest * 100:g}%"] if rest > 1e-9 else parts)


def parse_shares(items: list[str]) -> dict[str, float]:
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


def _path(deployment: str) -> str:
    return f"/v1/deployments/{quote(deployment, safe='')}"


@adapters_app.command("load")
def adapters_load(
    deployment: str,
    name: str,
    path: Path = typer.Argument(..., help="PEFT adapter directory."),
    ref: str = typer.Option(
        None, "--ref", help="Its model-registry ref, name@version (shown on every answer)."
    ),
) -> None:
    """Load (or replace) an adapter on every replica, without a restart (with --server,
    PATH is a folder on the platform's nodes)."""
    try:
        if _remote.target() is not None:
            with _remote.connect() as api:
                body = {"path": str(path), **({"ref": ref} if ref else {})}
                api.put(f"{_path(deployment)}/adapters/{quote(name, safe='')}", body)
            console.print(f"{deployment}:{name} loaded" + (f" ({ref})" if ref else ""))
            return
        ctl = _common.controller(load_settings())
        ctl.set_adapter(deployment, name, str(path), ref=ref)
        ctl.wait(deployment, timeout_s=300)
    except QingliangError as exc:
        fail(exc)
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
        wanted = parse_shares(list(shares or []))
        if clear and wanted:
            raise QingliangError("give NAME=SHARE pairs or --clear, not both")
        if not clear and not wanted:
            raise QingliangError("give NAME=SHARE pairs (e.g. faq-v4=0.1), or --clear")
        if _remote.target() is not None:
            with _remote.connect() as api:
                action = api.put(f"{_path(deployment)}/traffic", {"shares": wanted})["action"]
        else:
            action = _common.controller(load_settings()).set_traffic(deployment, wanted).action
    except QingliangError as exc:
        fail(exc)
        return
    text = traffic_text(wanted) or "base 100%"
    suffix = " (unchanged)" if action == "unchanged" else ""
    console.print(f"{deployment}: {text}{suffix}", highlight=False)


@adapters_app.command("alias")
def adapters_alias(
    deployment: str,
    alias: str,
    shares: list[str] = typer.Argument(
        None,
        help="ADAPTER=SHARE per adapter the alias sends requests to, e.g. gov-v2=1 or "
        "gov-v1=90% gov-v2=10%; the rest goes to the base model. None: the base model.",
    ),
    remove: bool = typer.Option(False, "--remove", help="Remove the alias."),
) -> None:
    """Point DEPLOYMENT:ALIAS at adapters (created if new; replaces its old shares).

    Clients and agents keep calling `model="DEPLOYMENT:ALIAS"` while new versions are
    put behind it (pipelines do this with a canary step's `alias`). No replica restarts;
    the gateway follows within a second.
    """
    try:
        wanted = parse_shares(list(shares or []))
        if remove and wanted:
            raise QingliangError("give ADAPTER=SHARE pairs or --remove, not both")
        if _remote.target() is not None:
            with _remote.connect() as api:
                path = f"{_path(deployment)}/aliases/{quote(alias, safe='')}"
                out = api.delete(path) if remove else api.put(path, {"shares": wanted})
                action = out["action"]
        else:
            ctl = _common.controller(load_settings())
            action = ctl.set_alias(deployment, alias, None if remove else wanted).action
    except QingliangError as exc:
        fail(exc)
        return
    text = "removed" if remove else traffic_text(wanted) or "base 100%"
    suffix = " (unchanged)" if action == "unchanged" else ""
    console.print(f"{deployment}:{alias}: {text}{suffix}", highlight=False)


@adapters_app.command("unload")
def adapters_unload(deployment: str, name: str) -> None:
    """Unload an adapter from every replica."""
    try:
        if _remote.target() is not None:
            with _remote.connect() as api:
                api.delete(f"{_path(deployment)}/adapters/{quote(name, safe='')}")
            console.print(f"{deployment}:{name} unloaded")
            return
        ctl = _common.controller(load_settings())
        ctl.set_adapter(deployment, name, None)
        ctl.wait(deployment, timeout_s=300)
    except QingliangError as exc:
        fail(exc)
    console.print(f"{deployment}:{name} unloaded")
