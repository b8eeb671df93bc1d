"""platform/gateway/services.py: the embedder, knowledge and agents servers in one replica.

The clients the gateway builds for separate deployments (``HandleKnowledge``,
``HandleAgents``, ``HandleEmbedder``) work unchanged against the shared replica, through a
view that renames their methods; inside the replica the agents reach the other two in
process. Here the Serve handle is replaced by :class:`LocalHandle` (the narrow boundary);
the servers behind it are the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qingliang.agents.deployment import HandleAgents
from qingliang.knowledge.deployment import HandleKnowledge
from qingliang.platform.errors import ApiError
from qingliang.platform.gateway.ingress import build_gateway_app
from qingliang.platform.gateway.services import (
    AGENTS_METHODS,
    HELPERS,
    KNOWLEDGE_METHODS,
    HelperServices,
    LocalHandle,
    Renamed,
)
from qingliang.platform.gateway_config import GatewayConfig


class _Recorder:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.options_given: list[dict] = []

    def options(self, **kwargs: Any) -> _Recorder:
        self.options_given.append(kwargs)
        return self

    def __getattr__(self, name: str) -> str:
        self.asked.append(name)
        return name


def test_renamed_maps_the_clients_method_names_and_keeps_them_through_options() -> None:
    handle = _Recorder()
    view = Renamed(handle, AGENTS_METHODS)
    assert view.call == "agents_call"
    assert view.options(stream=True).stream == "agents_stream"
    assert view.check_health == "check_health"  # not mapped: the name as it is
    assert handle.options_given == [{"stream": True}]


async def test_local_handle_awaits_methods_and_iterates_streams() -> None:
    class Server:
        async def double(self, x: int) -> int:
            return 2 * x

        async def count(self, n: int):
            for i in range(n):
                yield i

    handle = LocalHandle(Server())
    assert await handle.double.remote(21) == 42
    assert [i async for i in handle.options(stream=True).count.remote(3)] == [0, 1, 2]


@pytest.fixture
def services(tmp_path: Path) -> HelperServices:
    return HelperServices(str(tmp_path), embeddings=False, knowledge=True, agents=False)


async def test_the_knowledge_client_reaches_the_real_knowledge_server(
    services: HelperServices,
) -> None:
    kb = HandleKnowledge(Renamed(LocalHandle(services), KNOWLEDGE_METHODS))
    assert await kb.call("names", None, None, "tester", {}) == {"data": []}
    with pytest.raises(ApiError, match="unknown knowledge method 'nope'"):
        await kb.call("nope", None, None, "tester", {})


async def test_a_service_that_is_off_is_not_built(services: HelperServices) -> None:
    assert services._agents is None and services._embedder is None
    agents = HandleAgents(Renamed(LocalHandle(services), AGENTS_METHODS))
    # The gateway builds no agents client then; one that calls anyway gets a 500.
    with pytest.raises(ApiError, match=r"internal error \(AssertionError\)"):
        await agents.call("list_runs", None, False, "tester", {})


def _helper_deployments(config: GatewayConfig) -> dict[str, tuple]:
    app = build_gateway_app(config)
    gateway = app._bound_deployment
    found = {}
    for arg in gateway.init_args:
        bound = getattr(arg, "_bound_deployment", None)
        if bound is not None:
            found[bound.name] = bound.init_args
    return found


def test_the_gateway_app_has_one_helper_replica_by_default(tmp_path: Path) -> None:
    deployments = _helper_deployments(GatewayConfig(home=str(tmp_path)))
    assert deployments == {HELPERS: (str(tmp_path), True, True, True)}


def test_separate_helpers_are_three_deployments(tmp_path: Path) -> None:
    config = GatewayConfig(home=str(tmp_path), shared_helpers=False)
    assert sorted(_helper_deployments(config)) == ["Agents", "Embedder", "Knowledge"]


def test_a_gateway_without_helpers_builds_none(tmp_path: Path) -> None:
    config = GatewayConfig(home=str(tmp_path), embeddings=False, knowledge=False, agents=False)
    assert _helper_deployments(config) == {}
