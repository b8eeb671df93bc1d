"""Every process of the running platform listens on loopback only.

Ray Serve 2.60 binds each replica's inter-deployment gRPC server to all interfaces; the
platform's worker setup hook (serving/deployments/bind.py) binds it to the node's address,
127.0.0.1 here. Read from /proc: the sockets each process of the Ray head's tree holds.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from _platform import Platform

pytestmark = pytest.mark.integration


def _tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found


def _listeners(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state the processes hold."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in owner:  # 0A: LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_addr)
            if family == socket.AF_INET:
                addr = socket.inet_ntop(family, raw[::-1])
            else:
                addr = socket.inet_ntop(
                    family, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                )
            found.append((addr, int(hex_port, 16), owner[cols[9]]))
    return found


def test_every_process_of_the_platform_listens_on_loopback_only(platform: Platform) -> None:
    head = json.loads((platform.settings.home / "run.json").read_text())["pid"]
    pids = _tree(int(head))
    listeners = _listeners(pids)
    replicas = [
        pid
        for pid in pids
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ServeReplica")
    ]
    assert replicas, "no Serve replica found under the Ray head"
    # The replicas do listen (their gRPC servers), on loopback.
    assert any(pid in replicas for _, _, pid in listeners)
    exposed = [
        (addr, port, Path(f"/proc/{pid}/cmdline").read_bytes()[:50])
        for addr, port, pid in listeners
        if not (addr.startswith(("127.", "::ffff:127.")) or addr == "::1")
    ]
    assert exposed == []
