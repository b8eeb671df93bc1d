"""``qingliang demo``: the three domain demonstrations on the running platform.

$ qingliang demo list
$ qingliang demo up all            # gov, healthcare, manufacturing and the front desk
$ qingliang demo up gov --approve  # and its adapter trained, approved by you, served
$ qingliang demo down all          # removes what `demo up` created, nothing else
"""

from __future__ import annotations

from pathlib import Path

import typer

from qingliang.platform.cli import _common
from qingliang.platform.cli._common import console, fail, load_settings
from qingliang.platform.errors import QingliangError

demo_app = typer.Typer(
    help="The domain demonstrations (deploy/domains/): government services, healthcare, "
    "manufacturing, reachable together through one front desk.",
    no_args_is_help=True,
)

NamesArg = typer.Argument(None, help="gov, healthcare, manufacturing, or all (the default).")
DirOpt = typer.Option(
    None, "--dir", help="Where the bundles are (default: deploy/domains, or QINGLIANG_DEMOS_DIR)."
)


@demo_app.command("list")
def list_demos(root: Path = DirOpt) -> None:
    """The demonstrations, and which are up on this platform."""
    from qingliang.platform.control import demos

    try:
        up = demos.Managed(load_settings().home / demos.RECORD).read()
        for b in demos.select(["all"], root):
            state = "up" if b.name in up else "down"
            console.print(f"{b.name:<14} {state:<5} {b.spec.title}", highlight=False)
    except QingliangError as exc:
        fail(exc)


@demo_app.command("up")
def up(
    names: list[str] = NamesArg,
    root: Path = DirOpt,
    train: bool = typer.Option(
        True,
        "--train/--no-train",
        help="Train each domain's adapter with its Pipeline (quick profile: minutes on 2 "
        "cores). --no-train: the desks answer with the base model.",
    ),
    approve: bool = typer.Option(
        False,
        "--approve",
        help="Approve the training pipelines' gates yourself (recorded as yours), so the "
        "adapters go live; without it each run waits for `qingliang pipelines approve`.",
    ),
) -> None:
    """Prepare each bundle's data, apply its manifests, sync its knowledge bases, train its
    adapter, and say what to try. With all three up, the front desk routes between them."""
    from qingliang.platform.cli.demo_train import train as train_adapters
    from qingliang.platform.cli.kb import sync_after_apply
    from qingliang.platform.control import demos

    try:
        settings = load_settings()
        bundles = demos.select(names or ["all"], root)
        ctl = _common.controller(settings)
        demos.up(bundles, ctl, settings.home, sync=sync_after_apply, say=_say)
        if train:
            train_adapters(bundles, settings.home, approve=approve)
        for b in bundles:
            console.print(f"\n[bold]{b.name}[/bold] — {b.spec.title}", highlight=False)
            if b.spec.summary:
                console.print(b.spec.summary.strip(), highlight=False)
            console.print(f"Walkthrough: {b.root / 'README.md'}", highlight=False)
            for line in b.spec.try_:
                console.print(f"  {line}", highlight=False, soft_wrap=True)
            for path in b.training if not train else []:
                console.print(
                    f"  train its adapter: qingliang pipelines run -f {path}", highlight=False
                )
    except QingliangError as exc:
        fail(exc)


@demo_app.command("down")
def down(names: list[str] = NamesArg) -> None:
    """Remove what `demo up` created (graphs, knowledge bases, datasets, the adapter aliases
    and the adapters behind them; open training runs are cancelled); objects you made
    yourself are never touched."""
    from qingliang.platform.cli.demo_train import end_runs
    from qingliang.platform.control import demos

    try:
        settings = load_settings()
        end_runs(demos.runs_of(settings.home, names or ["all"]))
        removed = demos.down(
            names or ["all"], _common.controller(settings), settings.home, say=_say
        )
        if not removed:
            console.print("nothing to remove")
    except QingliangError as exc:
        fail(exc)


def _say(line: str) -> None:
    console.print(line, highlight=False)
