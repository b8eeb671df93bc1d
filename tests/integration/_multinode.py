"""Two Ray nodes on this machine, started as a team starts them (docs/cluster.md, "Two
nodes on one machine"): a head and a worker node, each its own ``ray start --block`` (its
own raylet, temp dir and process group) on 127.0.0.1 with the platform's ``ray_env()``.
The custom resource ``accel`` exists only on the worker.

Only the processes started here are ever stopped: a node's process group and, taken while
its raylet runs, the Ray workers below it (each in a process group of its own). Never Ray's
machine-wide stop command.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench._load import descendants, port_open
from qingliang.platform.control.cluster import ray_env

#: Ports of the two-node cluster: 28xxx, apart from tests/integration/_platform.py's.
HEAD_PORTS = {
    "gcs": 28380,
    "client": 28381,
    "dashboard": 28365,
    "agent": 28366,
    "metrics": 28180,
}
WORKER_PORTS = {"agent": 28367, "metrics": 28181}
#: The platform's HTTP port on this cluster (Serve's proxy on the head).
HTTP_PORT = 28100
GCS = f"127.0.0.1:{HEAD_PORTS['gcs']}"
DASHBOARD = f"http://127.0.0.1:{HEAD_PORTS['dashboard']}"
#: What the worker node offers beyond its CPUs; the head has none of it.
WORKER_RESOURCES = {"accel": 1}
#: ``ray start`` of a worker node that keeps 127.0.0.1 (see its docstring).
RAY_NODE = Path(__file__).with_name("_ray_node.py")
#: Shared-memory object store per node: the default (30 % of RAM each) is far more than a
#: test needs on a small machine.
OBJECT_STORE_BYTES = 200 * 1024 * 1024


def _ray_bin() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else "ray"


def head_command(temp_dir: Path, num_cpus: int = 2) -> list[str]:
    """``ray start`` for the head: GCS, dashboard and Serve's proxy, no ``accel``."""
    p = HEAD_PORTS
    return [
        _ray_bin(), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={p['gcs']}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={p['dashboard']}",
        f"--dashboard-agent-listen-port={p['agent']}",
        f"--ray-client-server-port={p['client']}",
        f"--metrics-export-port={p['metrics']}",
        f"--num-cpus={num_cpus}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--include-log-monitor=False",
    ]  # fmt: skip


def worker_command(temp_dir: Path, num_cpus: int = 1) -> list[str]:
    """``ray start`` for the worker node: joins the head, offers ``accel``."""
    p = WORKER_PORTS
    return [
        sys.executable, str(RAY_NODE), "start", "--block",
        f"--address={GCS}",
        "--node-ip-address=127.0.0.1",
        f"--resources={json.dumps(WORKER_RESOURCES)}",
        f"--num-cpus={num_cpus}",
        f"--dashboard-agent-listen-port={p['agent']}",
        f"--metrics-export-port={p['metrics']}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--include-log-monitor=False",
    ]  # fmt: skip


@dataclass
class Node:
    """One ``ray start --block`` process (its own process group) and its log."""

    name: str
    cmd: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    #: Every process seen below it ({pid: start time}): what :meth:`kill` may stop.
    seen: dict[int, str] = field(default_factory=dict)
    #: Set over ``ray_env()`` for the node and every Ray process it starts (the shared
    #: database's URL, as every node of a cluster gets it).
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**ray_env(), **self.env},
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> set[int]:
        """The node's live processes: the ``ray start`` process and everything below it."""
        if self.proc is None:
            return set()
        found = descendants([self.proc.pid])
        self.seen.update(found)
        return set(found)

    def kill(self) -> None:
        """SIGKILL the node as a crash would: its process group, then every process seen
        below it (Ray workers run in process groups of their own), and wait for them."""
        if self.proc is None:
            return
        self.pids()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid, started in list(self.seen.items()):
            if _same_process(pid, started):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            _same_process(pid, started) for pid, started in self.seen.items()
        ):
            time.sleep(0.2)
        self.proc = None
        self.seen.clear()


def _same_process(pid: int, started: str) -> bool:
    """``pid`` still runs and is the process seen then (not a later one with its pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and fields[19] == started


@dataclass
class TwoNodes:
    """The head and the worker node; :meth:`stop` stops both (only their processes)."""

    head: Node
    worker: Node

    @classmethod
    def create(cls, root: Path, env: dict[str, str] | None = None) -> TwoNodes:
        # Ray's socket paths must stay under ~107 bytes: short temp dirs of their own.
        tag = f"{os.getpid()}"
        extra = dict(env or {})
        head = Node("head", head_command(Path(f"/tmp/qlmn-h{tag}")), root / "head.log", env=extra)
        worker = Node(
            "worker", worker_command(Path(f"/tmp/qlmn-w{tag}")), root / "worker.log", env=extra
        )
        return cls(head, worker)

    def start_head(self, timeout_s: float = 120) -> None:
        for what, port in (("GCS", HEAD_PORTS["gcs"]), ("dashboard", HEAD_PORTS["dashboard"])):
            if port_open("127.0.0.1", port):
                raise RuntimeError(f"port {port} ({what}) is in use: another test run?")
        self.head.start()
        _until(
            lambda: (
                port_open("127.0.0.1", HEAD_PORTS["gcs"])
                and port_open("127.0.0.1", HEAD_PORTS["dashboard"])
            ),
            timeout_s,
            "the Ray head did not come up",
            self.head,
        )

    def start_worker(self, timeout_s: float = 120) -> None:
        """Start the worker node and wait until the cluster counts it alive."""
        self.worker.start()
        _until(
            lambda: bool(alive_nodes_with("accel")),
            timeout_s,
            "the worker node did not join",
            self.worker,
        )

    def pids(self) -> set[int]:
        return self.head.pids() | self.worker.pids()

    def stop(self) -> None:
        """Kill both nodes (the worker first); what was seen below them goes too."""
        for node in (self.worker, self.head):
            with contextlib.suppress(Exception):
                node.kill()
        for node in (self.worker, self.head):
            temp = next(a.split("=", 1)[1] for a in node.cmd if a.startswith("--temp-dir="))
            _kill_naming(temp)
            shutil.rmtree(temp, ignore_errors=True)


def _kill_naming(marker: str) -> None:
    """SIGKILL processes whose command line names ``marker`` (a temp dir of ours)."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in line:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


def _until(check, timeout_s: float, what: str, node: Node) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not node.alive():
            tail = node.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{what}: `ray start` exited\n{tail}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    raise RuntimeError(f"{what} within {timeout_s:.0f} s")


def nodes() -> list[dict]:
    """Every node the cluster knows (Ray's state API on the head's dashboard)."""
    import httpx

    r = httpx.get(f"{DASHBOARD}/api/v0/nodes", params={"limit": 100}, timeout=30)
    r.raise_for_status()
    return r.json()["data"]["result"]["result"]


def alive_nodes_with(resource: str) -> list[dict]:
    return [
        n for n in nodes() if n["state"] == "ALIVE" and resource in (n.get("resources_total") or {})
    ]


def actors(class_name_part: str) -> list[dict]:
    """Live actors whose class name contains ``class_name_part`` (Ray's state API)."""
    import httpx

    r = httpx.get(
        f"{DASHBOARD}/api/v0/actors",
        params={"limit": 1000, "filter_keys": "state", "filter_predicates": "=",
                "filter_values": "ALIVE"},
        timeout=30,
    )  # fmt: skip
    r.raise_for_status()
    return [a for a in r.json()["data"]["result"]["result"] if class_name_part in a["class_name"]]


def serve_applications() -> dict:
    import httpx

    r = httpx.get(f"{DASHBOARD}/api/serve/applications/", timeout=30)
    r.raise_for_status()
    return r.json().get("applications") or {}
