"""The environment the platform gives the Ray processes it starts (platform/control/cluster.py)."""

from __future__ import annotations

import pytest

from qingliang.platform.control import cluster


def test_serve_runs_over_grpc_with_a_slower_control_loop_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAY_SERVE_USE_GRPC_BY_DEFAULT", raising=False)
    monkeypatch.delenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", raising=False)
    env = cluster.ray_env()
    assert env["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"
    assert env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.5"
    # Every body the gateway accepts (50 MiB uploads) fits a replica's gRPC message.
    assert int(env["RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"]) >= 64 * 1024 * 1024
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_an_operator_can_turn_a_serve_default_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_SERVE_USE_GRPC_BY_DEFAULT", "0")
    assert cluster.ray_env()["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "0"


def test_the_loopback_and_auth_settings_cannot_be_overridden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without them Ray binds to the machine's address or turns token auth on.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    env = cluster.ray_env()
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env["RAY_AUTH_MODE"] == "disabled"
