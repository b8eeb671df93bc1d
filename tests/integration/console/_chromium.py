"""The system Chromium the console's browser tests drive (Debian's ``chromium`` package).

``make test`` runs this file first (``python tests/integration/console/_chromium.py``): as
root it installs what is missing with apt, otherwise it prints one line saying what is
missing and how to install it. It always exits 0, so a failed install leaves the rest of
the suite to run; the browser tests then skip with the same line (``missing()``).
Playwright's own browser download is never used (``playwright install`` needs the network).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: ``QINGLIANG_CHROMIUM`` points at another Chromium or Chrome binary.
CHROMIUM = os.environ.get("QINGLIANG_CHROMIUM", "/usr/bin/chromium")
#: Without a CJK font Chinese labels render as boxes in the screenshots.
CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
PACKAGES = ("chromium", "fonts-noto-cjk")
INSTALL = "apt-get install -y --no-install-recommends " + " ".join(PACKAGES)
#: The flags the closed network needs (no update, sync or QUIC traffic) and root needs
#: (no sandbox); launch() gives every browser a fresh temporary profile.
ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _has_chromium() -> bool:
    return os.access(CHROMIUM, os.X_OK)


def missing() -> str | None:
    """Why the browser tests cannot run here, with the command that fixes it; None if they can."""
    if _has_chromium():
        return None
    return (
        f"the console's browser tests (tests/integration/console) skip: no Chromium at {CHROMIUM} "
        f"(Debian package 'chromium'); install it with: sudo {INSTALL}"
    )


def _apt_install() -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], [*INSTALL.split(), "-q"]):
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, env=env, check=True, timeout=1200, stdout=subprocess.DEVNULL)


def ensure() -> None:
    """Install Chromium and the CJK fonts with apt if they are missing and we are root."""
    if _has_chromium() and CJK_FONT.exists():
        return
    if os.geteuid() == 0 and shutil.which("apt-get") and "QINGLIANG_CHROMIUM" not in os.environ:
        try:
            _apt_install()
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"apt-get failed ({exc}); the browser tests will skip", flush=True)
    if reason := missing():
        print(reason, flush=True)
    elif not CJK_FONT.exists():
        print(
            f"no CJK font at {CJK_FONT}: Chinese renders as boxes in the console screenshots; "
            "install it with: sudo apt-get install -y fonts-noto-cjk",
            flush=True,
        )


if __name__ == "__main__":
    ensure()
    sys.exit(0)
