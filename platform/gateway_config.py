"""The gateway application's settings: the ``args`` of its Ray Serve application.

``apply`` builds a :class:`GatewayConfig` and writes it into the Serve config; the
gateway's ``app_builder`` reads it back and refuses an unknown or mistyped field by name.

Example:
    >>> GatewayConfig(home="/tmp/ql", auth_enabled=False).to_args()
    {'home': '/tmp/ql', 'auth_enabled': False}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qingliang.platform.errors import FieldIssue, ManifestError, did_you_mean


class GatewayConfig(BaseModel):
    """The gateway application's settings: the ``args`` of its Ray Serve application
    (``qingliang.platform.gateway.ingress:app_builder``), as ``apply`` writes them into
    the Serve config and the gateway reads them back. An unknown or mistyped field is
    refused (:meth:`from_args`).

    Example:
        >>> GatewayConfig.from_args({"home": "/tmp/ql", "replica": 2})
        Traceback (most recent call last):
        ...
        qingliang.platform.errors.ManifestError: gateway args: replica: unknown field (did you mean 'replicas'?)
    """  # noqa: E501

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: str = Field(
        description="The data directory (``$QINGLIANG_HOME``) the gateway reads its API keys, "
        "applied manifests, knowledge bases and conversation log from."
    )
    auth_enabled: bool = Field(
        default=True, description="Require an API key on every route but the health checks."
    )
    embeddings: bool = Field(
        default=True,
        description="Run the embedding deployment (``/v1/embeddings``, knowledge search).",
    )
    conversation_log: bool = Field(
        default=False,
        description="Record answered chat requests in ``home/conversations.sqlite``.",
    )
    replicas: int = Field(default=1, ge=1, description="Gateway replicas.")
    knowledge: bool = Field(
        default=True, description="Run the knowledge deployment (``/v1/knowledge/...``)."
    )
    agents: bool = Field(
        default=True, description="Run the agents deployment (``/v1/agents/...``)."
    )
    max_ongoing_requests: int = Field(
        default=1000, ge=1, description="Requests one gateway replica handles at once."
    )
    shared_helpers: bool = Field(
        default=True,
        description="Run the embedder, knowledge and agents services in one replica (one "
        "process instead of three: less memory and idle CPU on a small machine); false runs "
        "each as its own deployment (Embedder, Knowledge, Agents), e.g. to place them apart "
        "on a cluster.",
    )

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> GatewayConfig:
        """The config in a Serve application's ``args`` (or a stored gateway body).

        Raises:
            ManifestError: a field is unknown, missing or of the wrong type; the message
                names each such field.
        """
        try:
            return cls.model_validate(dict(args))
        except ValidationError as exc:
            raise ManifestError(_issues(exc), "gateway args") from None

    def to_args(self) -> dict[str, Any]:
        """The Serve application's ``args``: the fields that were set, JSON-ready (so an
        unchanged config stays byte-identical and does not restart the gateway)."""
        return self.model_dump(mode="json", exclude_unset=True)


def _issues(exc: ValidationError) -> list[FieldIssue]:
    issues = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            message = "unknown field" + did_you_mean(path, GatewayConfig.model_fields)
        else:
            message = error["msg"]
        issues.append(FieldIssue(path, message))
    return issues
