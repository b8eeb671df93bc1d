"""A Ray worker setup hook: Serve replicas' inter-deployment gRPC servers bind to the node's
own address, not to every interface.

Ray Serve 2.60 starts a gRPC server in every replica for calls between deployments and
binds it to ``[::]:0`` (``ray/serve/_private/replica.py``), whatever address the cluster
runs on: on a laptop bound to 127.0.0.1, each replica still listened on all interfaces.
Callers reach a replica at its node's address (the address Ray registered for the node),
so binding there changes nothing for them. Every Ray process the platform starts gets
:data:`HOOK` in Ray's setup-hook variable (:data:`~qingliang.platform.control.cluster.RAY_ENV`),
so each worker runs it when it starts, before any replica opens its server.

Example:
    >>> HOOK
    'qingliang.serving.deployments.bind.bind_replica_grpc_to_node'
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: The hook as Ray's workers load it (``module.function``).
HOOK = "qingliang.serving.deployments.bind.bind_replica_grpc_to_node"
#: The variable a Ray worker reads its setup hook from at start
#: (``ray._private.ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR``; a unit test checks it).
HOOK_ENV_VAR = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"

_ALL_INTERFACES = "[::]:"


def node_address(address: str, node_ip: str) -> str:
    """``address`` with an all-interfaces host replaced by ``node_ip`` (port kept).

    >>> node_address("[::]:0", "127.0.0.1")
    '127.0.0.1:0'
    >>> node_address("[::]:0", "fd00::5")
    '[fd00::5]:0'
    >>> node_address("10.0.0.2:7000", "127.0.0.1")
    '10.0.0.2:7000'
    """
    if not address.startswith(_ALL_INTERFACES):
        return address
    port = address[len(_ALL_INTERFACES) :]
    host = f"[{node_ip}]" if ":" in node_ip else node_ip
    return f"{host}:{port}"


def bind_replica_grpc_to_node() -> None:
    """Make Ray's gRPC servers in this worker bind to the node's address.

    Patched where Serve's replica module imports it from (``ray._common.tls_utils``, a
    light module), so a worker that never hosts a replica does not import Serve for it.
    """
    import sys

    try:
        import ray
        from ray._common import tls_utils
    except ImportError:  # pragma: no cover - ray is a hard dependency
        return
    original = getattr(tls_utils, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "qingliang_bound", False):
        return

    def add_port(server: Any, address: str) -> Any:
        return original(server, node_address(address, ray.util.get_node_ip_address()))

    add_port.qingliang_bound = True  # type: ignore[attr-defined]
    tls_utils.add_port_to_grpc_server = add_port
    replica = sys.modules.get("ray.serve._private.replica")
    if replica is not None:  # imported already: its own name is bound to the original
        replica.add_port_to_grpc_server = add_port  # type: ignore[attr-defined]
