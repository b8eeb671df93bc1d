"""``qingliang logs DEPLOYMENT``: the log lines of a deployment's replicas.

Locally it reads them through this platform's Ray dashboard
(:class:`~qingliang.platform.control.logs.DeploymentLogs`); with ``--server`` /
``QINGLIANG_URL`` through the remote platform's ``GET /v1/deployments/{name}/logs``
(an admin key). Either way each replica's stderr is shown, where every log line of a
replica goes (the platform's, vLLM's with its engine statistics, Ray Serve's).

Example:
    $ qingliang logs tiny --tail 50
    $ qingliang logs tiny --follow --replica 3f2a
    $ qingliang logs qingliang-gateway
"""

from __future__ import annotations

import typer

from qingliang.platform.cli import _common, _remote
from qingliang.platform.errors import QingliangError
from qingliang.platform.settings import Settings


def logs(
    deployment: str = typer.Argument(
        ..., help="A deployment's name (`qingliang get`), or `qingliang-gateway`."
    ),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Keep printing new lines as they are written (Ctrl-C ends)."
    ),
    tail: int = typer.Option(
        200, "--tail", "-n", min=0, help="Lines to show from the end of each log (0: all)."
    ),
    replica: str = typer.Option(
        None, "--replica", help="Only this replica: its id, or its start or end (`qingliang get`)."
    ),
    stdout: bool = typer.Option(
        False, "--stdout", help="The replicas' stdout instead of their stderr (the log lines)."
    ),
) -> None:
    """Print the log lines of a deployment's replicas (with their id when there are several)."""
    stream = "out" if stdout else "err"
    try:
        if _remote.target() is not None:
            _remote_logs(deployment, follow, tail, replica, stream)
        else:
            _local_logs(deployment, follow, tail, replica, stream)
    except QingliangError as exc:
        _common.fail(exc)
    except KeyboardInterrupt:  # the end of --follow
        raise typer.Exit(0) from None


def _print(line: str) -> None:
    _common.console.out(line, highlight=False)


def _local_logs(deployment: str, follow: bool, tail: int, replica: str | None, stream: str) -> None:
    from qingliang.platform.control.cluster import RunInfo
    from qingliang.platform.control.logs import DeploymentLogs, prefixed

    settings = _common.load_settings()
    if RunInfo.load(settings.run_file) is None:
        raise QingliangError(
            f"no platform is running on {settings.home} (start one with `qingliang up`, "
            f"or name a remote one with --server / {_remote.URL_ENV})"
        )
    logs = DeploymentLogs(f"http://{settings.host}:{settings.dashboard_port}")
    try:
        known = _applied_names(settings)
        replicas = logs.replicas(deployment, known, replica)
        several = len(replicas) > 1
        for replica_id, line in logs.lines_of(replicas, tail=tail, follow=follow, stream=stream):
            _print(prefixed(replica_id, line, several))
    finally:
        logs.close()


def _applied_names(settings: Settings) -> list[str]:
    """The applied model deployments (for "did you mean" and "not running")."""
    from qingliang.platform.storage.state import StateStore
    from qingliang.serving.traffic import ServingView

    try:
        return list(ServingView.read(StateStore(settings.home / "state.sqlite")).names())
    except Exception:  # the names only improve the message
        return []


def _remote_logs(
    deployment: str, follow: bool, tail: int, replica: str | None, stream: str
) -> None:
    from urllib.parse import quote

    params: dict[str, object] = {"tail": tail, "follow": follow, "stream": stream}
    if replica:
        params["replica"] = replica
    with _remote.connect() as remote:
        for line in remote.text(f"/v1/deployments/{quote(deployment, safe='')}/logs", params):
            _print(line)
