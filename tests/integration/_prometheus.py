"""The Prometheus server the dashboard test scrapes with (Debian's ``prometheus`` package).

``make test`` runs this file first (``python tests/integration/_prometheus.py``): as root it
installs the package with apt when the binary is missing, otherwise it prints one line
saying how to install it. It always exits 0, so a failed install leaves the rest of the
suite to run; tests/integration/test_prometheus.py then skips with the same line
(``missing()``). Prometheus is never downloaded any other way (``ray metrics
launch-prometheus`` needs the internet).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

INSTALL = "apt-get install -y --no-install-recommends prometheus"


def _binary() -> str | None:
    named = os.environ.get("QINGLIANG_PROMETHEUS_BIN")
    if named:
        return named if os.access(named, os.X_OK) else None
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )


def missing() -> str | None:
    """Why the Prometheus test cannot run here, with the command that fixes it."""
    if _binary() is not None:
        return None
    return (
        "tests/integration/test_prometheus.py skips: no `prometheus` binary (Debian package "
        f"'prometheus'); install it with: sudo {INSTALL}"
    )


def ensure() -> None:
    """Install Prometheus with apt if it is missing and we are root."""
    if _binary() is not None:
        return
    if (
        os.geteuid() == 0
        and shutil.which("apt-get")
        and "QINGLIANG_PROMETHEUS_BIN" not in os.environ
    ):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            for cmd in (["apt-get", "update", "-q"], [*INSTALL.split(), "-q"]):
                print("+", " ".join(cmd), flush=True)
                subprocess.run(cmd, env=env, check=True, timeout=1200, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"apt-get failed ({exc}); the Prometheus test will skip", flush=True)
    if reason := missing():
        print(reason, flush=True)


if __name__ == "__main__":
    ensure()
    sys.exit(0)
