"""Model traffic: which deployment, adapter and canary arm a request goes to.

The applied ``ModelDeployment`` manifests are read through one typed view,
:class:`ServingView`: each deployment as a :class:`ModelEntry` (its adapters and their
directories, whether LoRA is on, canary shares, registry refs, labels, description, when
it was applied), never by digging into the stored dicts. ``model`` in a request names a
deployment or ``deployment:adapter`` (:func:`parse_model`); a bare deployment with canary
shares (``spec.lora.traffic``) sends each request to one adapter or to the base model
(:func:`choose_adapter`).

Example:
    >>> view = ServingView.of([])
    >>> view.names()
    ()
    >>> parse_model("qwen:faq-v4")
    ('qwen', 'faq-v4')
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from qingliang.platform.errors import BadRequest, NotFound

#: The manifest kind of a model deployment, as the state store keeps it.
MODEL_KIND = "ModelDeployment"


@dataclass(frozen=True)
class ModelEntry:
    """A servable deployment as the gateway knows it."""

    name: str
    adapters: tuple[str, ...] = ()
    created: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    description: str = ""
    #: Canary shares of bare-deployment requests by adapter (the rest: the base model).
    traffic: dict[str, float] = field(default_factory=dict)
    #: Stable adapter names → the adapters they send requests to, with shares (what they
    #: leave below 1: the base model); ``model="<deployment>:<alias>"`` (``spec.lora.aliases``).
    aliases: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Model-registry refs (``name@version``) of the adapters, where known.
    refs: dict[str, str] = field(default_factory=dict)
    #: The adapters' local directories by name (``spec.lora.adapters``), in manifest order.
    adapter_paths: Mapping[str, str] = field(default_factory=dict)
    #: Whether the replicas run with LoRA (``LoraOptions.active``): ``spec.lora.enabled``,
    #: or, where it is not set, whether any adapter is listed.
    lora_enabled: bool = False
    #: Where the base model comes from (``spec.model.source``).
    source: str = ""
    #: The engine kind (``spec.engine.kind``).
    engine: str = ""
    #: What the deployment does with images (``spec.multimodal.image``): native, ocr or
    #: reject; and how many one request may carry.
    image_mode: str = "reject"
    max_images: int = 4

    def routed_shares(self) -> dict[str, float]:
        """Each adapter requests are routed to, with its share: of the bare deployment's
        requests (``traffic``) or of its alias's.

        Example:
            >>> ModelEntry("q", traffic={"a-v1": 0.1}, aliases={"b": {"b-v2": 1.0}}).routed_shares()
            {'a-v1': 0.1, 'b-v2': 1.0}
        """
        routed = dict(self.traffic)
        for shares in self.aliases.values():
            routed.update(shares)
        return routed

    def adapter_refs(self) -> dict[str, str | None]:
        """Every adapter named in ``adapters`` or ``refs``, in name order, to its
        registry ref (None: loaded without one)."""
        return {name: self.refs.get(name) for name in sorted({*self.adapters, *self.refs})}


class AppliedRow(Protocol):
    """What :class:`ServingView` reads of a state-store row (``StateStore.list``)."""

    name: str
    body: dict[str, Any]
    applied_at: float


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def entry_of(row: AppliedRow) -> ModelEntry:
    """One applied ``ModelDeployment`` row as a :class:`ModelEntry`."""
    return entry_of_body(row.name, row.body, row.applied_at)


def entry_of_body(name: str, body: Mapping[str, Any], applied_at: float = 0) -> ModelEntry:
    """A ``ModelDeployment`` manifest in its stored (JSON) form as a :class:`ModelEntry`.

    Example:
        >>> body = {"spec": {"lora": {"adapters": {"faq": "/a/faq"}, "refs": {"faq": "faq@3"}}}}
        >>> entry = entry_of_body("qwen", body)
        >>> entry.adapters, dict(entry.adapter_paths), entry.lora_enabled
        (('faq',), {'faq': '/a/faq'}, True)
    """
    spec = _mapping(body.get("spec"))
    meta = _mapping(body.get("metadata"))
    lora = _mapping(spec.get("lora"))
    paths = {str(k): str(v) for k, v in _mapping(lora.get("adapters")).items()}
    enabled = lora.get("enabled")
    return ModelEntry(
        name=name,
        adapters=tuple(sorted(paths)),
        created=int(applied_at),
        labels=dict(meta.get("labels") or {}),
        description=str(meta.get("description") or ""),
        traffic={str(k): float(v) for k, v in (lora.get("traffic") or {}).items()},
        refs={str(k): str(v) for k, v in (lora.get("refs") or {}).items()},
        aliases={
            str(a): {str(k): float(v) for k, v in _mapping(shares).items()}
            for a, shares in _mapping(lora.get("aliases")).items()
        },
        adapter_paths=paths,
        lora_enabled=bool(enabled) or (enabled is None and bool(paths)),
        source=str(_mapping(spec.get("model")).get("source", "")),
        engine=str(_mapping(spec.get("engine")).get("kind", "")),
        **_images(_mapping(spec.get("multimodal")).get("image")),
    )


def _images(image: object) -> dict[str, Any]:
    """``image_mode`` and ``max_images`` of a stored ``spec.multimodal.image``: a mode, an
    object (without ``mode``: native), or absent (reject)."""
    if isinstance(image, str):
        return {"image_mode": image}
    if isinstance(image, Mapping):
        out: dict[str, Any] = {"image_mode": str(image.get("mode", "native"))}
        if isinstance(image.get("max_per_prompt"), int):
            out["max_images"] = image["max_per_prompt"]
        return out
    return {}


@dataclass(frozen=True)
class ServingView:
    """The applied model deployments, typed: what the gateway and agents route by."""

    models: tuple[ModelEntry, ...] = ()

    @classmethod
    def of(cls, rows: Iterable[AppliedRow]) -> ServingView:
        """The view of the state store's ``ModelDeployment`` rows."""
        return cls(tuple(entry_of(row) for row in rows))

    @classmethod
    def read(cls, store: Any) -> ServingView:
        """The view of what ``store`` (a ``StateStore``) has applied now."""
        return cls.of(store.list(MODEL_KIND))

    def names(self) -> tuple[str, ...]:
        """The deployments' names, in the store's order."""
        return tuple(entry.name for entry in self.models)

    def get(self, name: str) -> ModelEntry | None:
        """The deployment called ``name``, or None."""
        return next((entry for entry in self.models if entry.name == name), None)

    def adapter_refs(self) -> dict[str, dict[str, str | None]]:
        """Each deployment's adapters to their registry refs (:meth:`ModelEntry.adapter_refs`),
        in the store's order: what ``qingliang lineage`` resolves ``DEPLOYMENT:ADAPTER`` by."""
        return {entry.name: entry.adapter_refs() for entry in self.models}


def parse_model(value: object) -> tuple[str, str | None]:
    """``"dep"`` → (dep, None); ``"dep:adapter"`` → (dep, adapter)."""
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(
            "`model` is required: a deployment name or deployment:adapter", param="model"
        )
    dep, sep, adapter = value.partition(":")
    if not dep:
        raise BadRequest(f"model {value!r}: empty deployment name before ':'", param="model")
    if sep and not adapter:
        raise BadRequest(f"model {value!r}: empty adapter name after ':'", param="model")
    if ":" in adapter:
        raise BadRequest(f"model {value!r}: use deployment:adapter (one ':')", param="model")
    return dep, adapter or None


def choose_adapter(entry: ModelEntry, user: object = None) -> str | None:
    """The adapter a request for the bare deployment goes to, or None for the base model.

    A string ``user`` (OpenAI's end-user id) is hashed with the deployment name to a
    point in [0, 1), so one user stays on one arm while the shares stay the same; without
    it the point is drawn at random. The point falls into the adapters' shares laid end
    to end in name order, or past them (the base model).

    Example:
        >>> entry = ModelEntry("qwen", ("faq-v4",), traffic={"faq-v4": 0.1})
        >>> choose_adapter(entry, "user-17") == choose_adapter(entry, "user-17")
        True
        >>> choose_adapter(ModelEntry("qwen"), "user-17") is None
        True
    """
    return _pick(entry.traffic, entry.name, user)


def _pick(shares: Mapping[str, float], key: str, user: object) -> str | None:
    """The arm a point in [0, 1) falls on, ``shares`` laid end to end in name order (past
    them: None). The point is ``user`` hashed with ``key`` where it is a string, else random."""
    if not shares:
        return None
    if isinstance(user, str):
        digest = hashlib.sha256(f"{key}\0{user}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
    else:
        point = random.random()
    edge = 0.0
    for name in sorted(shares):
        edge += shares[name]
        if point < edge:
            return name
    return None


def resolve_adapter(entry: ModelEntry, adapter: str | None, user: object = None) -> str | None:
    """The adapter that answers a request for ``entry`` that named ``adapter`` (None: the
    base model): a bare deployment follows its canary shares (:func:`choose_adapter`); a
    loaded adapter is itself; an alias (``spec.lora.aliases``) is one of its adapters by
    their shares, or the base model for what they leave below 1. Anything else is a 404
    naming what is loaded.

    Example:
        >>> entry = ModelEntry("qwen", ("gov-v1",), aliases={"gov": {"gov-v1": 1.0}})
        >>> resolve_adapter(entry, "gov"), resolve_adapter(entry, "gov-v1")
        ('gov-v1', 'gov-v1')
    """
    if adapter is None:
        return choose_adapter(entry, user)
    if adapter in entry.adapters:
        return adapter
    shares = entry.aliases.get(adapter)
    if shares is None:
        known = [*entry.adapters, *(f"{a} (alias)" for a in sorted(entry.aliases))]
        raise NotFound(
            f"adapter {adapter!r} is not loaded on deployment {entry.name!r}"
            + (f"; loaded: {', '.join(known)}" if known else ""),
            param="model",
        )
    return _pick(shares, f"{entry.name}:{adapter}", user)
