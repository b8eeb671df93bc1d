"""Start, reach and stop the local Ray cluster that `qingliang up` runs.

`up` launches ``ray start --head --block`` in its own process group, bound to
127.0.0.1 (GCS, dashboard on 8265, metrics export port), and records its PID and
ports in ``$QINGLIANG_HOME/run.json``. `down` deletes the Serve applications through the
dashboard REST API, then stops only the processes that `up` started: that process group, then
the Ray workers its raylet started, which run in process groups of their own (the detached
router actor's among them). It never uses Ray's machine-wide stop command, which kills every
Ray process on the machine.

Example:
    >>> run = start_head(Settings())   # doctest: +SKIP
    >>> stop_head(Settings())          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from qingliang.platform.errors import ClusterError
from qingliang.platform.settings import Settings

logger = logging.getLogger(__name__)

#: Environment every Ray process we start (and every driver we connect) gets.
RAY_ENV = {
    # Without it Ray rewrites 127.0.0.1 to the machine's address (MODELS.md).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Local development: Ray 2.60 turns token auth on and the dashboard answers 401.
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
    # Every worker binds Serve's inter-deployment gRPC server to its node's address, not
    # to all interfaces (Ray 2.60 binds [::]:0; serving/deployments/bind.py).
    "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR": (
        "qingliang.serving.deployments.bind.bind_replica_grpc_to_node"
    ),
}

#: Ray Serve settings for a small machine, defaults the caller's environment may override
#: (e.g. ``RAY_SERVE_USE_GRPC_BY_DEFAULT=0`` goes back to Ray actor calls). On two cores
#: every CPU-second another process takes is one the engine's threads wait for
#: (docs/performance.md):
#: - gRPC between deployments and from the proxy: each streamed token costs the gateway,
#:   the model replica and the proxy about a third less CPU than Ray's object-ref
#:   generators;
#: - Serve's controller checks its deployments every 0.5 s, not 0.1 s: 0.023 → 0.008 of
#:   a core while idle (a status change shows up to 0.4 s later).
SERVE_TUNING_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    # A replica's gRPC messages may be as large as what the gateway accepts (a 50 MiB
    # knowledge upload, a 32 MiB chat body with images, a large answer): gRPC's default
    # 4 MiB answered a 6 MB upload with a 500 (AioRpcError).
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(512 * 1024 * 1024),
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}


def ray_env() -> dict[str, str]:
    """The environment for a Ray process we start: ours, tuned, then :data:`RAY_ENV`."""
    return {**SERVE_TUNING_ENV, **os.environ, **RAY_ENV}


#: Ray's switch for clusters of several machines: :data:`RAY_ENV` turns it off (one node,
#: 127.0.0.1 kept), which makes ``ray start --address`` refuse to start a worker node and
#: a driver register itself as 127.0.0.1.
MULTI_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def cluster_node_env() -> dict[str, str]:
    """The environment for a Ray node of a cluster of several machines (each node's
    ``ray start``, a KubeRay pod): :func:`ray_env` with Ray's multi-node mode on. Nodes of
    one machine that must stay on 127.0.0.1 keep :func:`ray_env` (docs/cluster.md)."""
    return {**ray_env(), MULTI_NODE_ENV: "1"}


@dataclass(frozen=True)
class RunInfo:
    pid: int
    pgid: int
    gcs_address: str
    dashboard_url: str
    metrics_port: int
    http_port: int
    temp_dir: str
    started_at: float
    #: True when `up` joined a Ray cluster it did not start (``--ray-address``): `down`
    #: then removes only the platform's Serve applications, and ``pid``/``pgid`` are 0.
    joined: bool = False

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> RunInfo | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _alive(pid: int) -> bool:
    if pid <= 0:  # kill(0) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0): check its state.
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _dashboard_answers(url: str) -> bool:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if not parsed.hostname or not parsed.port:
        return False
    return _port_open(parsed.hostname, parsed.port)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def settings_for(home: Path) -> Settings:
    """The Settings of the platform running on ``home`` (its ports, from its run file);
    the environment's defaults when none runs. A process that only knows the data
    directory (a Ray task, a gateway thread) talks to the right dashboard this way."""
    import dataclasses
    from urllib.parse import urlparse

    settings = Settings(home=Path(home))
    info = RunInfo.load(settings.run_file)
    if info is None:
        return settings
    dashboard = urlparse(info.dashboard_url)
    return dataclasses.replace(
        settings,
        host=dashboard.hostname or settings.host,
        http_port=info.http_port,
        dashboard_port=dashboard.port or settings.dashboard_port,
        metrics_port=info.metrics_port,
        ray_port=int(info.gcs_address.rpartition(":")[2]),
    )


def running(settings: Settings) -> RunInfo | None:
    """The RunInfo of a live `up`, or None (a stale run file is ignored)."""
    info = RunInfo.load(settings.run_file)
    if info is None:
        return None
    if info.joined:
        return info if _dashboard_answers(info.dashboard_url) else None
    if not _alive(info.pid):
        return None
    return info


#: Logical CPUs Ray gets beyond the machine's cores: room for a pipeline step or a
#: fine-tuning task next to the deployments, which on a small machine reserve every core
#: (the default deployment and the gateway take both of a 2-core laptop's). Such a task
#: then shares cores with serving instead of waiting for ever.
TASK_HEADROOM_CPUS = 1


def default_num_cpus() -> int:
    """Ray's logical CPUs: ``QINGLIANG_RAY_CPUS``, else the cores plus the task headroom."""
    env = os.environ.get("QINGLIANG_RAY_CPUS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ClusterError(f"QINGLIANG_RAY_CPUS={env!r} is not a whole number") from None
        if value < 1:
            raise ClusterError(f"QINGLIANG_RAY_CPUS={env!r} must be at least 1")
        return value
    return (os.cpu_count() or 1) + TASK_HEADROOM_CPUS


def start_head(
    settings: Settings, *, num_cpus: int | None = None, timeout_s: float = 90
) -> RunInfo:
    """Start the local Ray head (idempotent: returns the running one if there is one)."""
    current = running(settings)
    if current is not None:
        return current
    _refuse_stale_join(settings)
    host = settings.host
    for port, what in ((settings.ray_port, "Ray GCS"), (settings.dashboard_port, "dashboard")):
        if _port_open(host, port):
            raise ClusterError(
                f"{what} port {host}:{port} is already in use by another process; "
                "stop it or choose another port (QINGLIANG_RAY_PORT / QINGLIANG_DASHBOARD_PORT)"
            )
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        found = shutil.which("ray")
        if not found:
            raise ClusterError("the `ray` command is not installed in this environment")
        ray_bin = Path(found)
    temp_dir = settings.ray_temp
    temp_dir.mkdir(parents=True, exist_ok=True)
    settings.home.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={host}",
        f"--port={settings.ray_port}",
        "--include-dashboard=true",
        f"--dashboard-host={host}",
        f"--dashboard-port={settings.dashboard_port}",
        f"--metrics-export-port={settings.metrics_port}",
        # Fixed defaults (10001, 52365) would collide between two local platforms.
        f"--ray-client-server-port={settings.ray_port + 1}",
        f"--dashboard-agent-listen-port={settings.dashboard_port + 1}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        # It tails every worker's output to stream it to drivers; the platform's drivers
        # do not print worker logs (the files and the dashboard's log view stay): one
        # process and its CPU while workers log, saved.
        "--include-log-monitor=False",
    ]
    if num_cpus is None:
        num_cpus = default_num_cpus()
    cmd.append(f"--num-cpus={num_cpus}")
    from qingliang.platform.control.prometheus import dashboard_env

    env = {**dashboard_env(), **ray_env()}  # the Ray dashboard's Prometheus / Grafana
    log = open(settings.home / "ray-head.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    info = RunInfo(
        pid=proc.pid,
        pgid=os.getpgid(proc.pid),
        gcs_address=f"{host}:{settings.ray_port}",
        dashboard_url=f"http://{host}:{settings.dashboard_port}",
        metrics_port=settings.metrics_port,
        http_port=settings.http_port,
        temp_dir=str(temp_dir),
        started_at=time.time(),
    )
    info.save(settings.run_file)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(
                f"`ray start` exited with code {proc.returncode}; "
                f"see {settings.home / 'ray-head.log'}"
            )
        if _port_open(host, settings.ray_port) and _port_open(host, settings.dashboard_port):
            return info
        time.sleep(0.5)
    stop_head(settings)
    raise ClusterError(f"Ray head did not come up within {timeout_s:.0f} s")


def _refuse_stale_join(settings: Settings) -> None:
    stale = RunInfo.load(settings.run_file)
    if stale is not None and stale.joined:
        raise ClusterError(
            f"{settings.home} was joined to the Ray cluster at {stale.gcs_address}, which no "
            "longer answers; run `qingliang down` first"
        )


def stop_head(settings: Settings, *, timeout_s: float = 60) -> bool:
    """Shut down Serve, then stop the Ray processes `up` started. True if it stopped any.

    On a cluster `up` joined (:mod:`.join`) it does nothing and returns False: that Ray
    belongs to whoever started it (:func:`.join.leave_cluster` removes the platform)."""
    info = RunInfo.load(settings.run_file)
    if info is not None and info.joined:
        return False  # never stop a Ray we did not start: see join.leave_cluster
    if info is None or not _alive(info.pid):
        settings.run_file.unlink(missing_ok=True)
        return False
    _shutdown_serve(info, timeout_s=timeout_s)
    # Taken while the raylet runs: its workers (detached actors such as the router
    # included) are its children, each in a process group of its own, and are
    # reparented to init once it is gone.
    started = _descendants(info.pid)
    # SIGTERM to the group: GCS and the dashboard exit at once, but the raylet then
    # waits ~35 s for the GCS to come back. With Serve already shut down there is
    # nothing left to drain, so after a short grace the group is killed.
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(info.pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _pgroup_alive(info.pgid):
            time.sleep(0.3)
        if not _pgroup_alive(info.pgid):
            break
    # Only now, with the GCS and the raylet gone: a worker killed before would have its
    # actor restarted (the router's max_restarts is -1).
    _stop_workers(started)
    _kill_session_stragglers(Path(info.temp_dir))
    settings.run_file.unlink(missing_ok=True)
    return True


def _shutdown_serve(info: RunInfo, *, timeout_s: float) -> None:
    """Delete every Serve application through the dashboard's REST API (what
    `serve shutdown` does), so replicas stop gracefully; no Ray driver is needed."""
    import httpx

    url = info.dashboard_url.rstrip("/") + "/api/serve/applications/"
    try:
        httpx.delete(url, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            apps = httpx.get(url, timeout=10).json().get("applications") or {}
            if not apps:
                return
            time.sleep(0.5)
        logger.warning("Serve applications still present after %.0f s; stopping Ray", timeout_s)
    except (httpx.HTTPError, ValueError):  # the cluster may already be half down
        logger.warning("graceful Serve shutdown failed; stopping Ray processes", exc_info=True)


def _pgroup_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    pgid: int
    start: int  # clock ticks after boot: tells a process from a later one with its pid
    zombie: bool


def _proc(pid: int) -> _Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (in parentheses) may hold spaces; the fields follow its last ")".
    fields = stat.rsplit(")", 1)[1].split()
    return _Proc(pid, int(fields[1]), int(fields[2]), int(fields[19]), fields[0] == "Z")


def _processes() -> list[_Proc]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (p := _proc(int(entry.name))) is not None:
            out.append(p)
    return out


def _descendants(root: int) -> list[_Proc]:
    """``root`` and every live process below it."""
    procs = _processes()
    children: dict[int, list[_Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    out = [p for p in procs if p.pid == root]
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return [p for p in out if not p.zombie]


def _still_running(p: _Proc) -> bool:
    now = _proc(p.pid)
    return now is not None and now.start == p.start and not now.zombie


def _raylet_workers(raylets: set[int]) -> list[_Proc]:
    """Live processes started by one of ``raylets`` (a worker's environment names its
    raylet's pid): workers the raylet started after the snapshot was taken."""
    if not raylets:
        return []
    out = []
    for p in _processes():
        if p.zombie:
            continue
        try:
            env = Path(f"/proc/{p.pid}/environ").read_bytes()
        except OSError:
            continue
        value = next((v[15:] for v in env.split(b"\0") if v.startswith(b"RAY_RAYLET_PID=")), b"")
        if value.isdigit() and int(value) in raylets:
            out.append(p)
    return out


def _stop_workers(started: list[_Proc], grace_s: float = 3.0, timeout_s: float = 10.0) -> None:
    """Stop what is left of ``started`` and of the workers of its raylets: SIGTERM, then
    SIGKILL after ``grace_s``; wait (up to ``timeout_s``) until they are gone."""
    pids = {p.pid for p in started}
    left = {p.pid: p for p in [*started, *_raylet_workers(pids)] if _still_running(p)}
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, timeout_s)):
        if not left:
            return
        if sig == signal.SIGKILL:
            logger.warning("Ray processes %s ignored SIGTERM; killing them", sorted(left))
        for p in left.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, sig)
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = {pid: p for pid, p in left.items() if _still_running(p)}
    if left:
        logger.warning("Ray processes %s are still running after SIGKILL", sorted(left))


def _kill_session_stragglers(temp_dir: Path) -> None:
    """Kill processes whose command line names our Ray temp dir (ours alone)."""
    marker = str(temp_dir)
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
