"""serving/deployments/bind.py: Ray's gRPC servers in a worker bind to the node's address."""

from __future__ import annotations

import pytest
from ray._common import tls_utils
from ray._private import ray_constants

from qingliang.platform.control import cluster
from qingliang.serving.deployments import bind


@pytest.mark.parametrize(
    ("address", "node_ip", "expected"),
    [
        ("[::]:0", "127.0.0.1", "127.0.0.1:0"),
        ("[::]:40123", "10.1.2.3", "10.1.2.3:40123"),
        ("[::]:0", "fd00::5", "[fd00::5]:0"),
        ("127.0.0.1:7000", "10.1.2.3", "127.0.0.1:7000"),  # a named host is kept
    ],
)
def test_all_interfaces_becomes_the_node_address(address: str, node_ip: str, expected: str) -> None:
    assert bind.node_address(address, node_ip) == expected


def test_every_ray_process_the_platform_starts_runs_the_hook() -> None:
    # Ray reads the hook from this variable when a worker starts (default_worker.py).
    assert bind.HOOK_ENV_VAR == ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    assert cluster.ray_env()[bind.HOOK_ENV_VAR] == bind.HOOK
    module, _, name = bind.HOOK.rpartition(".")
    assert module == bind.__name__ and callable(getattr(bind, name))


def test_the_hook_binds_grpc_servers_to_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    replica = sys.modules.get("ray.serve._private.replica")
    if replica is not None:  # restored after the test, as the patched module is
        monkeypatch.setattr(replica, "add_port_to_grpc_server", replica.add_port_to_grpc_server)
    calls: list[str] = []
    monkeypatch.setattr(tls_utils, "add_port_to_grpc_server", lambda _s, a: calls.append(a))
    monkeypatch.setattr("ray.util.get_node_ip_address", lambda: "127.0.0.1")
    bind.bind_replica_grpc_to_node()
    bind.bind_replica_grpc_to_node()  # a second run does not wrap twice
    tls_utils.add_port_to_grpc_server(object(), "[::]:0")
    assert calls == ["127.0.0.1:0"]
