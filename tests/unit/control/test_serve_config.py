"""The gateway application's config: one GatewayConfig from `apply` to the gateway.

``serve_config`` dumps it into the Serve config's ``args``; the gateway's ``app_builder``
validates those args back into the same model, refusing an unknown or mistyped field.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qingliang.platform.control.serve_config import serve_config
from qingliang.platform.errors import ManifestError
from qingliang.platform.gateway_config import GatewayConfig
from qingliang.platform.settings import Settings


def _gateway_args(config: dict) -> dict:
    (app,) = [a for a in config["applications"] if a["name"] == "qingliang-gateway"]
    return app["args"]


def test_the_config_round_trips_through_the_serve_config(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    gateway = GatewayConfig(
        home=str(tmp_path), auth_enabled=False, embeddings=True, conversation_log=True
    )
    args = _gateway_args(serve_config(settings, gateway, []))
    # Only the fields that were set travel, in the order the Serve config always had.
    assert args == {
        "home": str(tmp_path),
        "auth_enabled": False,
        "embeddings": True,
        "conversation_log": True,
    }
    assert list(args) == ["home", "auth_enabled", "embeddings", "conversation_log"]
    back = GatewayConfig.from_args(args)
    assert back == gateway and back.to_args() == args
    assert (back.replicas, back.knowledge, back.agents, back.max_ongoing_requests) == (
        1,
        True,
        True,
        1000,
    )


def test_every_field_is_described() -> None:
    for name, info in GatewayConfig.model_fields.items():
        assert info.description, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"replica": 2}, "replica: unknown field (did you mean 'replicas'?)"),
        ({"replicas": "many"}, "replicas: Input should be a valid integer"),
        ({"auth_enabled": "perhaps"}, "auth_enabled: Input should be a valid boolean"),
        ({"home": None}, "home: Input should be a valid string"),
        ({"replicas": 0}, "replicas: Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_arg_is_refused_naming_the_field(args: dict, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        GatewayConfig.from_args({"home": "/q", **args})
    assert str(caught.value).startswith(f"gateway args: {message}")
    with pytest.raises(ManifestError, match="gateway args: home: Field required"):
        GatewayConfig.from_args({"auth_enabled": True})


def test_the_gateways_app_builder_refuses_a_bad_arg_before_building_anything() -> None:
    pytest.importorskip("fastapi")
    from qingliang.platform.gateway.ingress import app_builder

    with pytest.raises(
        ManifestError, match=r"replica: unknown field \(did you mean 'replicas'\?\)"
    ):
        app_builder({"home": "/q", "replica": 2})
