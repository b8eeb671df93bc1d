"""A Prometheus server for the local platform: the packaged ``prometheus`` binary
(Debian's ``prometheus`` package) on loopback, scraping the Ray nodes' metrics ports.

Ray's head writes the list of its nodes' metrics export ports to
``<ray temp dir>/session_latest/prom_metrics_service_discovery.json``; the configuration
here reads that file (``file_sd_configs``), so a worker node that joins is scraped too.
:func:`start` runs one (the integration test of the Grafana dashboard does);
:func:`dashboard_env` points the Ray dashboard at a Prometheus and a Grafana
(``QINGLIANG_PROMETHEUS_URL``, ``QINGLIANG_GRAFANA_URL``; docs/operations.md).
Ray's ``ray metrics launch-prometheus`` downloads a Prometheus release instead, which a
machine without internet access cannot do.

Example:
    >>> text = scrape_config(targets=["127.0.0.1:8080"], interval_s=5)
    >>> "127.0.0.1:8080" in text and '"scrape_interval": "5s"' in text
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from qingliang.platform.errors import ClusterError
from qingliang.platform.settings import Settings

#: ``QINGLIANG_PROMETHEUS_BIN`` names another binary; else ``prometheus`` on PATH.
BINARY_ENV = "QINGLIANG_PROMETHEUS_BIN"
INSTALL_HINT = "apt-get install -y prometheus"
#: Where ``qingliang up --prometheus`` serves Prometheus (on the platform's host).
PORT_ENV = "QINGLIANG_PROMETHEUS_PORT"
#: Its process, recorded for ``qingliang down``, under ``$QINGLIANG_HOME``.
RUN_FILE = "prometheus.json"


def binary() -> str | None:
    """The Prometheus binary to run, or None when none is installed."""
    named = os.environ.get(BINARY_ENV)
    if named:
        return named if os.access(named, os.X_OK) else None
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )


def dashboard_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What the Ray head needs to show metrics on its dashboard: ``QINGLIANG_PROMETHEUS_URL``
    as ``RAY_PROMETHEUS_HOST`` and ``QINGLIANG_GRAFANA_URL`` as ``RAY_GRAFANA_HOST`` (and
    ``RAY_GRAFANA_IFRAME_HOST``, the address the browser loads the panels from).

    >>> dashboard_env({"QINGLIANG_PROMETHEUS_URL": "http://127.0.0.1:9090"})
    {'RAY_PROMETHEUS_HOST': 'http://127.0.0.1:9090'}
    >>> dashboard_env({})
    {}
    """
    env = {}
    if url := environ.get("QINGLIANG_PROMETHEUS_URL"):
        env["RAY_PROMETHEUS_HOST"] = url.rstrip("/")
    if url := environ.get("QINGLIANG_GRAFANA_URL"):
        env["RAY_GRAFANA_HOST"] = env["RAY_GRAFANA_IFRAME_HOST"] = url.rstrip("/")
    return env


def discovery_file(ray_temp: Path) -> Path:
    """Where Ray's head lists its nodes' metrics ports (Prometheus file discovery)."""
    return Path(ray_temp) / "session_latest" / "prom_metrics_service_discovery.json"


def scrape_config(
    *, targets: list[str] | None = None, discovery: Path | None = None, interval_s: float = 10
) -> str:
    """A ``prometheus.yml`` scraping ``targets`` (``host:port``) and/or the nodes listed in
    Ray's ``discovery`` file, every ``interval_s`` seconds (Ray reports every 10 s)."""
    job: dict = {"job_name": "ray"}
    if targets:
        job["static_configs"] = [{"targets": list(targets)}]
    if discovery is not None:
        job["file_sd_configs"] = [{"files": [str(discovery)]}]
    if len(job) == 1:
        raise ValueError("scrape_config needs targets or a discovery file")
    interval = f"{interval_s:g}s"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [job],
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML


@dataclass(frozen=True)
class PrometheusRun:
    """A Prometheus this module started: its process and where it answers."""

    pid: int
    url: str
    data_dir: str

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> PrometheusRun | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def start(
    config: str, *, port: int, data_dir: Path, host: str = "127.0.0.1", timeout_s: float = 60
) -> PrometheusRun:
    """Start Prometheus with ``config`` on ``host:port``, its data in ``data_dir``; wait
    until it is ready.

    Raises:
        ClusterError: no binary, the port is taken, or it did not become ready.
    """
    exe = binary()
    if exe is None:
        raise ClusterError(f"no Prometheus binary found: install it with `{INSTALL_HINT}`")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    config_file = data_dir / "prometheus.yml"
    config_file.write_text(config)
    url = f"http://{host}:{port}"
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            raise ClusterError(f"{host}:{port} is in use already; choose another Prometheus port")
    log = open(data_dir / "prometheus.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={config_file}",
            f"--web.listen-address={host}:{port}",
            f"--storage.tsdb.path={data_dir / 'tsdb'}",
            "--storage.tsdb.retention.time=15d",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    run = PrometheusRun(proc.pid, url, str(data_dir))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(
                f"prometheus exited with code {proc.returncode}; see {data_dir / 'prometheus.log'}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return run
        time.sleep(0.3)
    stop(run)
    raise ClusterError(f"prometheus did not become ready at {url} within {timeout_s:.0f} s")


def stop(run: PrometheusRun, timeout_s: float = 20) -> bool:
    """Stop a Prometheus :func:`start` started (its pid only, while it is still that
    Prometheus). True if it was running."""
    if not _ours(run):
        return False
    try:
        os.kill(run.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(run.pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for the pid instead
            try:
                os.kill(run.pid, 0)
            except ProcessLookupError:
                return True
            done = 0
        if done:
            return True
        time.sleep(0.2)
    if _ours(run):
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGKILL)
    return True


def platform_url(settings: Settings) -> str:
    """Where :func:`launch` serves: ``QINGLIANG_PROMETHEUS_PORT`` (default 9090) on the
    platform's host."""
    return f"http://{settings.host}:{int(os.environ.get(PORT_ENV, '9090'))}"


def prepare(settings: Settings) -> str:
    """Check that :func:`launch` can run (a binary is installed) and return the URL it
    will serve on, for the Ray head's dashboard (``QINGLIANG_PROMETHEUS_URL``).

    Raises:
        ClusterError: no Prometheus binary.
    """
    if binary() is None:
        raise ClusterError(
            f"--prometheus: no Prometheus binary found; install it with `{INSTALL_HINT}`"
        )
    return platform_url(settings)


def launch(settings: Settings, *, interval_s: float = 10, wait_s: float = 15) -> PrometheusRun:
    """The platform's Prometheus (``qingliang up --prometheus``): on :func:`platform_url`,
    its data in ``$QINGLIANG_HOME/prometheus``, scraping the nodes Ray's head lists (the
    head's own metrics port until the list appears). Idempotent: a running one is kept.
    Call it after the head started; ``qingliang down`` stops it (:func:`shutdown`)."""
    record = settings.home / RUN_FILE
    current = PrometheusRun.load(record)
    if current is not None and _ours(current):
        return current
    found = discovery_file(settings.ray_temp)
    deadline = time.monotonic() + wait_s
    while not found.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if found.exists():
        config = scrape_config(discovery=found, interval_s=interval_s)
    else:
        config = scrape_config(targets=[f"{settings.host}:{settings.metrics_port}"])
    port = int(platform_url(settings).rsplit(":", 1)[1])
    run = start(config, port=port, data_dir=settings.home / "prometheus", host=settings.host)
    run.save(record)
    return run


def shutdown(settings: Settings) -> bool:
    """Stop the Prometheus :func:`launch` started for ``settings`` (if any)."""
    record = settings.home / RUN_FILE
    run = PrometheusRun.load(record)
    record.unlink(missing_ok=True)
    return run is not None and stop(run)


def _ours(run: PrometheusRun) -> bool:
    """Whether ``run.pid`` is still the Prometheus started with ``run``'s data folder (a
    pid reused by another process since is never signalled)."""
    try:
        argv = Path(f"/proc/{run.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    wanted = f"--config.file={Path(run.data_dir) / 'prometheus.yml'}".encode()
    return wanted in argv
