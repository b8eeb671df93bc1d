"""What the command modules share: the consoles, settings, the error exit, the controller.

Commands call :func:`controller` through this module (``_common.controller(...)``), so a
test can replace it in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from qingliang.platform.settings import Settings

if TYPE_CHECKING:
    from qingliang.platform.control.apply import Controller

console = Console()
err = Console(stderr=True)

#: ``-f/--file``, required and repeatable: manifest files or folders.
FilesOpt = typer.Option(..., "-f", "--file", help="Manifest file or folder (repeatable).")


def load_settings() -> Settings:
    """The settings of this run (environment and defaults); on a Ray cluster `up` joined
    (``--ray-address``), that cluster's dashboard and ports, from the run file."""
    from qingliang.platform.control.cluster import RunInfo, settings_for

    settings = Settings()
    info = RunInfo.load(settings.run_file)
    return settings_for(settings.home) if info is not None and info.joined else settings


def fail(exc: BaseException) -> None:
    """Print ``error: <exc>`` on stderr and exit 1."""
    err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def controller(settings: Settings) -> Controller:
    """The controller of the local platform (imported lazily: it pulls in the areas)."""
    from qingliang.platform.control.apply import Controller

    return Controller(settings)


def status_printer() -> Callable[[str, str, str], None]:
    """An ``on_status`` callback that prints each deployment's status when it changes."""
    last: dict[str, str] = {}

    def on_status(name: str, status: str, message: str) -> None:
        if last.get(name) != status:
            last[name] = status
            console.print(f"  {name}: {status}" + (f" — {message[:200]}" if message else ""))

    return on_status


def image_data_url(path: Path) -> str:
    """The file at ``path`` as a data URL (the server checks that it is an image)."""
    import base64
    import mimetypes

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror or exc}") from None
    media = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"
