"""Join a Ray cluster the platform did not start, and leave it.

`qingliang up --ray-address HOST:PORT` (or ``QINGLIANG_RAY_ADDRESS``) deploys the platform
on a running Ray cluster instead of starting local Ray: a head and worker nodes a team
started with ``ray start`` (docs/cluster.md), each with the platform's
:func:`~qingliang.platform.control.cluster.ray_env`. The run file records the cluster
(``joined``); every command then reaches it through its dashboard, as on the laptop.
`qingliang down` removes the platform's Serve applications and stops no process: that
Ray belongs to whoever started it.

Example:
    >>> parse_ray_address("10.0.0.5:6379")
    ('10.0.0.5', 6379)
    >>> info = join_cluster(Settings(), "127.0.0.1:6379")   # doctest: +SKIP
    >>> leave_cluster(Settings())                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING

from qingliang.platform.control.cluster import RunInfo, running
from qingliang.platform.errors import ClusterError
from qingliang.platform.settings import Settings

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

#: Environment variable with the address `qingliang up` joins (``--ray-address`` wins).
RAY_ADDRESS_ENV = "QINGLIANG_RAY_ADDRESS"
#: Serve applications of the platform: their code is ours (``serve_config``).
PLATFORM_IMPORT_PREFIX = "qingliang."


def parse_ray_address(address: str) -> tuple[str, int]:
    """``host:port`` of a Ray cluster's GCS (what ``ray start --address`` takes).

    Raises:
        ClusterError: ``address`` is not of that form (a dashboard URL, a Ray Client
            address, no port), saying what to give instead.

    Example:
        >>> parse_ray_address("10.0.0.5:6379")
        ('10.0.0.5', 6379)
    """
    text = address.strip()
    hint = "give the GCS address of the cluster's head, host:port (e.g. 10.0.0.5:6379)"
    if "://" in text:
        scheme = text.split("://", 1)[0]
        what = "a Ray Client address" if scheme == "ray" else "a URL (the dashboard's?)"
        raise ClusterError(f"Ray address {address!r} is {what}: {hint}")
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"Ray address {address!r} has no valid host:port: {hint}")
    return host, int(port)


def join_cluster(settings: Settings, address: str) -> RunInfo:
    """Record ``address``, a running Ray cluster, as the one this platform deploys to.

    Checks that its GCS answers, finds its dashboard (Serve's REST API, through which
    the platform deploys) from the GCS, and refuses a cluster that serves applications
    not from Qingliang (the platform's Serve config would replace them). Idempotent for
    the same address.

    Raises:
        ClusterError: the address is malformed or does not answer, the cluster has no
            dashboard, serves other applications, or this data directory already runs
            a platform on another Ray.
    """
    host, port = parse_ray_address(address)
    gcs = f"{host}:{port}"
    current = RunInfo.load(settings.run_file)
    if current is not None and (current.joined or running(settings) is not None):
        if current.joined and current.gcs_address == gcs:
            return current
        where = f"the Ray cluster at {current.gcs_address}" if current.joined else "local Ray"
        raise ClusterError(
            f"the platform of {settings.home} already runs on {where}; run `qingliang down` first"
        )
    if not _answers(host, port):
        raise ClusterError(
            f"no Ray cluster answers at {gcs}: start its head with "
            f"`ray start --head --port={port}` (docs/cluster.md) or check the address"
        )
    dashboard, metrics_port = _read_cluster(gcs, host)
    apps = _serve_apps(dashboard)
    others = sorted(set(apps) - set(_platform_apps(apps)))
    if others:
        raise ClusterError(
            f"the Ray cluster at {gcs} serves applications that are not Qingliang's "
            f"({', '.join(others)}); the platform's Serve config would replace them. "
            "Use a cluster of its own"
        )
    info = RunInfo(
        pid=0,
        pgid=0,
        gcs_address=gcs,
        dashboard_url=dashboard,
        metrics_port=metrics_port or settings.metrics_port,
        http_port=settings.http_port,
        temp_dir="",
        started_at=time.time(),
        joined=True,
    )
    info.save(settings.run_file)
    return info


def _read_cluster(gcs: str, host: str) -> tuple[str, int | None]:
    """The dashboard's URL as the head recorded it in the GCS (its ``dashboard`` key),
    and the head's metrics export port (None when the GCS does not list the head)."""
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]

        client = GcsClient(address=gcs)
        raw = client.internal_kv_get(b"dashboard", b"dashboard", timeout=10)
        heads = [n for n in client.get_all_node_info(timeout=10).values() if n.is_head_node]
    except Exception as exc:  # ray's RpcError and friends: the boundary
        raise ClusterError(f"cannot read the cluster's addresses from Ray at {gcs}: {exc}") from exc
    if not raw:
        raise ClusterError(
            f"the Ray cluster at {gcs} runs no dashboard; start its head with "
            "--include-dashboard=true (the platform deploys through Serve's REST API)"
        )
    dash_host, _, dash_port = raw.decode().rpartition(":")
    if dash_host in ("0.0.0.0", "::", ""):  # bound to every interface: reach it as the GCS
        dash_host = host
    alive = [n.metrics_export_port for n in heads if n.state == 0]  # 0: ALIVE
    return f"http://{dash_host}:{dash_port}", (alive[0] or None) if alive else None


def _client(timeout_s: float) -> httpx.Client:
    """The HTTP client to the dashboard (a unit test gives one with a mock transport)."""
    import httpx

    return httpx.Client(timeout=timeout_s)


def _serve_apps(dashboard: str) -> dict:
    """Serve's applications on the cluster, by name (its REST API's details)."""
    import httpx

    url = dashboard.rstrip("/") + "/api/serve/applications/"
    try:
        with _client(30) as http:
            r = http.get(url)
            r.raise_for_status()
            return r.json().get("applications") or {}
    except (httpx.HTTPError, ValueError) as exc:
        raise ClusterError(f"the Ray dashboard at {url} does not answer: {exc}") from None


def _platform_apps(apps: dict) -> list[str]:
    """The names of the applications in ``apps`` that run the platform's code."""
    return [
        name
        for name, app in apps.items()
        if str((app.get("deployed_app_config") or {}).get("import_path", "")).startswith(
            PLATFORM_IMPORT_PREFIX
        )
    ]


def _remove_platform_apps(dashboard: str, *, timeout_s: float) -> None:
    """Remove the platform's Serve applications from a joined cluster, keeping others."""
    import httpx

    url = dashboard.rstrip("/") + "/api/serve/applications/"
    try:
        apps = _serve_apps(dashboard)
    except ClusterError:
        logger.warning("the joined cluster's dashboard does not answer; nothing removed")
        return
    ours = set(_platform_apps(apps))
    if not ours:
        return
    kept = [app["deployed_app_config"] for name, app in apps.items() if name not in ours]
    try:
        with _client(timeout_s) as http:
            if kept:  # Serve's config is declarative: the others, unchanged, stay
                body = {"proxy_location": "HeadOnly", "applications": kept}
                http.put(url, json=body).raise_for_status()
            else:
                http.delete(url).raise_for_status()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not ours & set(_serve_apps(dashboard)):
                return
            time.sleep(0.5)
    except (httpx.HTTPError, ClusterError) as exc:
        logger.warning("removing the platform's Serve applications failed: %s", exc)
        return
    logger.warning("Serve applications %s still present after %.0f s", sorted(ours), timeout_s)


def leave_cluster(settings: Settings, *, timeout_s: float = 60) -> bool:
    """Remove the platform's Serve applications from the cluster `up` joined, keeping
    every other application and every Ray process, and forget the cluster. False when
    this data directory is not joined to one."""
    info = RunInfo.load(settings.run_file)
    if info is None or not info.joined:
        return False
    _remove_platform_apps(info.dashboard_url, timeout_s=timeout_s)
    settings.run_file.unlink(missing_ok=True)
    return True


def _answers(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.settimeout(3)
        return s.connect_ex((host, port)) == 0
