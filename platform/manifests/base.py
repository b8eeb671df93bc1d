"""What every manifest section shares: :class:`Strict`, and the ``metadata`` of every kind.

Each kind (``ModelDeployment``, ``KnowledgeBase``, ``AgentGraph``, ``Dataset``,
``FineTuneJob``, ``Pipeline``) subclasses :class:`BaseMetadata` only to say, in its field
descriptions, what the name and labels mean for that kind; the checks are shared.

Example:
    >>> from pydantic import Field
    >>> class Metadata(BaseMetadata):
    ...     name: str = Field(description="Widget name.")
    >>> Metadata(name="tiny").labels
    {}
    >>> Metadata(name="Tiny")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for Metadata
    name
      Value error, 'Tiny' is not a valid name: ...
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Manifest names (deployments, knowledge bases, ...): lower-case DNS-like labels, so no
#: ``:``, the separator in ``model="deployment:adapter"``. ``\Z``, not ``$``: ``$`` also
#: matches before a trailing newline, so ``"tiny\n"`` would pass.
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")

#: ``metadata.labels``: free keys and values, each at most 63 characters.
MetadataLabels = dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=63)]]


def valid_name(v: str) -> str:
    """Check a manifest name (deployments, knowledge bases, ...); raise ValueError."""
    if not NAME_RE.match(v):
        raise ValueError(
            f"{v!r} is not a valid name: use 1-63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return v


class Strict(BaseModel):
    """Base of every manifest section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BaseMetadata(Strict):
    """A manifest's ``metadata``: its name, free labels and a description.

    A kind's subclass redeclares ``name`` (and ``labels`` or ``description`` where its
    wording differs) with the same type and default, only to give the field a description
    that fits the kind; the name check below is inherited. All three are declared here so
    that the field order stays ``name``, ``labels``, ``description`` in every subclass.
    """

    name: str = Field(description="Manifest name: 1-63 lower-case letters, digits and '-'.")
    labels: MetadataLabels = Field(
        default_factory=dict, description="Free labels (team, owner, domain)."
    )
    description: str = Field(default="", description="Free text.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return valid_name(v)


class Envelope(Strict):
    """What every kind's top level shares: ``apiVersion``, and ``name`` from its metadata.

    A kind declares ``kind``, ``metadata`` and ``spec`` with its own types, after
    ``apiVersion`` (the field order of every manifest).
    """

    api_version: Literal["qingliang.io/v1"] = Field(
        alias="apiVersion", description="Always `qingliang.io/v1`."
    )

    if TYPE_CHECKING:  # each kind declares its own metadata model; pydantic never sees this
        metadata: BaseMetadata

    @property
    def name(self) -> str:
        """The manifest's ``metadata.name``."""
        return self.metadata.name
