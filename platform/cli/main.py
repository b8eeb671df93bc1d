"""The ``qingliang`` command line: builds the Typer app from the command modules.

Each command group lives in its own module under ``platform/cli/`` and only renders; the
work is done by the areas (control, storage, knowledge, agents, lifecycle). Heavy
libraries (Ray, vLLM, torch) are imported inside the commands that need them, so
``qingliang --help`` and ``qingliang validate`` stay fast.

Example:
    $ qingliang validate -f deploy/defaults
    $ qingliang up
    $ qingliang chat -m "What is the capital of France?"
"""

from __future__ import annotations

import logging
import os

import typer

from qingliang.platform.cli import apply_cmds, serve_cmds
from qingliang.platform.cli.adapters import adapters_app
from qingliang.platform.cli.agents import agents_app
from qingliang.platform.cli.conversations import conversations_app
from qingliang.platform.cli.data import data_app
from qingliang.platform.cli.demo import demo_app
from qingliang.platform.cli.eval_cmd import eval_app
from qingliang.platform.cli.export_cmd import export_app
from qingliang.platform.cli.kb import kb_app
from qingliang.platform.cli.keys import keys_app
from qingliang.platform.cli.pipelines import finetune_app, pipelines_app
from qingliang.platform.cli.registry import lineage, registry_app

app = typer.Typer(
    name="qingliang",
    help="Qingliang (轻量): deploy and orchestrate large models lightly.\n\n"
    "Manifests (YAML) → vLLM on Ray Serve → an OpenAI-compatible API on 127.0.0.1. "
    "State lives in $QINGLIANG_HOME (default ~/.qingliang).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
