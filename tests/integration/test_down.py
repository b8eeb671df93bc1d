"""`qingliang down` stops every process `up` started, the detached router actor's worker
included. Real Ray, no model: the head as `up` starts it and the router actor as the
gateway creates it (detached, named, restarted on failure); checked in the process table."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from qingliang.agents.routing.actor import ROUTER_NAMESPACE
from qingliang.platform.control import cluster
from qingliang.platform.settings import Settings

pytestmark = pytest.mark.integration

#: Not the session platform's ports (tests/integration/_platform.py), nor the defaults.
OWN_PORTS = {"http_port": 29000, "dashboard_port": 29265, "metrics_port": 29080, "ray_port": 27380}

#: A driver that gets or creates the router actor the way the gateway does, then leaves
#: (the actor is detached: it outlives its creator).
CREATE_ROUTER = """
import sys, ray
ray.init(address=sys.argv[1], namespace=sys.argv[3], logging_level="ERROR", log_to_driver=False)
from qingliang.agents.routing.actor import router_actor
handle = router_actor(sys.argv[2], sys.argv[3])
print(ray.get(handle.routers.remote(), timeout=120))
"""


def _started_by(root: int) -> dict[int, tuple[float, str]]:
    """Every live process below ``root`` (and ``root``): pid -> (start time, name)."""
    out: dict[int, tuple[float, str]] = {}
    try:
        head = psutil.Process(root)
        procs = [head, *head.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            out[p.pid] = (p.create_time(), " ".join(p.cmdline()).strip() or p.name())
        except psutil.NoSuchProcess:
            continue
    return out


def _alive(pid: int, started: float) -> bool:
    try:
        p = psutil.Process(pid)
        return p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_down_stops_the_router_actor_and_every_ray_process_up_started(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, **OWN_PORTS)
    info = cluster.start_head(settings, num_cpus=1)
    seen: dict[int, tuple[float, str]] = {}
    try:
        made = subprocess.run(
            [
                sys.executable,
                "-c",
                CREATE_ROUTER,
                info.gcs_address,
                str(home / "router.sqlite"),
                ROUTER_NAMESPACE,
            ],
            env={**os.environ, **cluster.RAY_ENV},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert made.returncode == 0, made.stderr[-3000:]
        seen = _started_by(info.pid)
        actors = [pid for pid, (_, name) in seen.items() if name.startswith("ray::RouterActor")]
        assert len(actors) == 1, sorted(name for _, name in seen.values())
        # The actor's worker runs in a process group of its own: signalling the head's
        # group alone leaves it running.
        assert os.getpgid(actors[0]) != info.pgid

        result = CliRunner().invoke(
            _app(), ["down"], env={"QINGLIANG_HOME": str(home)}, catch_exceptions=False
        )
        assert result.exit_code == 0 and "stopped" in result.output, result.output

        left = {pid: name for pid, (t, name) in seen.items() if _alive(pid, t)}
        assert left == {}, f"still running after `down`: {left}"
        assert not settings.run_file.exists()
    finally:
        cluster.stop_head(settings)
        for pid, (started, _) in seen.items():  # only what this test started
            if _alive(pid, started):
                psutil.Process(pid).kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p, t) for p, (t, _) in seen.items()):
            time.sleep(0.2)


def _app():  # noqa: ANN202 - the typer app, imported late like the CLI does
    from qingliang.platform.cli.main import app

    return app
