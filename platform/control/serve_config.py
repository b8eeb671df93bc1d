"""The whole Ray Serve config: the gateway application plus one application per deployment.

Ray Serve applies it as a whole (or refuses it); ``apply``, ``delete`` and the adapter
commands always push the complete config built here. The gateway application's ``args``
are a :class:`~qingliang.platform.gateway_config.GatewayConfig`, dumped here and validated
again by the gateway's ``app_builder``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from qingliang.platform.gateway_config import GatewayConfig
from qingliang.platform.settings import Settings
from qingliang.serving.plan import DeploymentPlan

GATEWAY_KIND = "Gateway"
GATEWAY_NAME = "gateway"


def serve_config(
    settings: Settings, gateway: GatewayConfig, plans: Iterable[DeploymentPlan]
) -> dict:
    """The whole Ray Serve config: the gateway application plus one per deployment."""
    from qingliang.serving.deployments.model import MODEL_DEPLOYMENT

    apps: list[dict[str, Any]] = [
        {
            "name": "qingliang-gateway",
            "route_prefix": "/",
            "import_path": "qingliang.platform.gateway.ingress:app_builder",
            "args": gateway.to_args(),
        }
    ]
    for plan in sorted(plans, key=lambda p: p.name):
        apps.append(
            {
                "name": plan.name,
                "route_prefix": None,
                "import_path": "qingliang.serving.deployments.model:app_builder",
                # Adapters stay out of args (the code version): see app_builder.
                "args": {"plan": dataclasses.replace(plan, adapters=()).to_dict()},
                "deployments": [
                    {"name": MODEL_DEPLOYMENT, "user_config": {"adapters": plan.adapter_map}}
                ],
            }
        )
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": settings.host, "port": settings.http_port},
        "applications": apps,
    }
