"""Request bodies of the gateway as pydantic models: what ``/openapi.json`` documents and
what each route checks a parsed body against.

A route reads its body with :func:`.limits.parse_json_body` (size and depth guards), never
with FastAPI's own parsing, then checks the parsed object with :func:`validated`. The
model is declared for the OpenAPI document with :func:`request_body` (the route's
``openapi_extra``) and its schema added to ``components`` once by :func:`install_openapi`.
A :class:`pydantic.ValidationError` becomes one :class:`BadRequest` (:func:`bad_request`):
``param`` is the path of the field as the client wrote it (``messages[1].content``), an
unknown field is named with a "did you mean" hint and the accepted names, and a missing
one says what it is for.

Our own bodies (:class:`Body`: pipelines; the knowledge and agents ones are
:mod:`qingliang.knowledge.api`'s and :mod:`qingliang.agents.api`'s, alike) refuse unknown
fields and take JSON types as they are (``"5"`` is not a number, ``1`` is not ``true``).
The values a service checks itself (ranges, names, dates) are documented here with
``json_schema_extra`` and refused by that service, whose messages say more than a range.
OpenAI's bodies and their policy on fields: :mod:`.openai_bodies`.

Example:
    >>> from qingliang.agents.api import FeedbackBody
    >>> validated(FeedbackBody, {"run_id": "run_1", "score": 1}).score
    1.0
    >>> try:
    ...     validated(FeedbackBody, {"run_id": "run_1", "scroe": 1})
    ... except BadRequest as exc:
    ...     print(exc.param, "|", exc.message.split(";")[0])
    scroe | unknown field 'scroe' (did you mean 'score'?)
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Collection, Sequence
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic.json_schema import models_json_schema

from qingliang.agents.api import BODIES as AGENTS_BODIES
from qingliang.knowledge.api import BODIES as KNOWLEDGE_BODIES
from qingliang.platform.bodies import Body
from qingliang.platform.errors import BadRequest, did_you_mean

logger = logging.getLogger(__name__)

#: Where a model's schema lives in the OpenAPI document.
REF = "#/components/schemas/"
#: Accepted field names an unknown field's message lists; a longer list points to /docs.
MAX_LISTED = 16
#: Error statuses every operation may answer, all in OpenAI's error format.
_ERROR_RANGES = ("4XX", "5XX")

M = TypeVar("M", bound=BaseModel)


# ----------------------------------------------------------------------- error format


class ErrorDetail(BaseModel):
    message: str = Field(description="What is wrong, for a person to read.")
    type: str = Field(description="invalid_request_error, authentication_error, …")
    param: str | None = Field(description="The field or parameter at fault, if one is.")
    code: str | int | None = Field(description="A machine-readable code, or the status.")


class ErrorResponse(BaseModel):
    """Every error the gateway answers, in OpenAI's format."""

    error: ErrorDetail


# ------------------------------------------------------------------------- pipelines


class PipelineStartBody(Body):
    """``POST /v1/pipelines``: start a run of a Pipeline manifest."""

    manifest: dict[str, Any] = Field(
        description="A Pipeline manifest (apiVersion, kind: Pipeline, metadata, spec) as "
        "JSON; checked as `qingliang validate` checks its YAML."
    )
    base_dir: str = Field(
        description="An absolute folder on the platform host: the files the steps name "
        "(dataset, job) are read from there."
    )


class PipelineApproveBody(Body):
    """``POST /v1/pipelines/{run_id}/approve``: decide a run's approval step."""

    approve: bool = Field(description="true to go on, false to stop the run.")
    reason: str = Field("", description="Kept with the decision.")


class PipelineCancelBody(Body):
    """``POST /v1/pipelines/{run_id}/cancel``: end a waiting, interrupted or failed run."""

    reason: str = Field("", description="Kept with the cancellation.")


# ------------------------------------------------------------------ operator's routes


class ManifestTextBody(Body):
    """``POST /v1/manifests/validate`` and ``/v1/manifests/diff``: the text of one YAML
    manifest file (one or more ``---`` documents). Nothing is applied or stored."""

    yaml: str = Field(
        description="The file's text, as `qingliang validate -f` would read it (at most 1 MiB)."
    )


class DemoUpBody(Body):
    """``POST /v1/demos/{name}/up``: what `qingliang demo up` does besides applying."""

    train: bool = Field(
        False, description="Train each domain's adapter with its Pipeline (minutes on CPU)."
    )
    approve: bool = Field(
        False,
        description="Approve the training pipelines' gates as this key, so the adapters go "
        "live (only with train).",
    )


class DemoDownBody(Body):
    """``POST /v1/demos/{name}/down``: no options (the body may be left out or ``{}``)."""


#: Our own bodies, for :func:`install_openapi`.
BODIES: tuple[type[BaseModel], ...] = (
    ErrorResponse,
    *KNOWLEDGE_BODIES,
    *AGENTS_BODIES,
    PipelineStartBody,
    PipelineApproveBody,
    PipelineCancelBody,
    ManifestTextBody,
    DemoUpBody,
    DemoDownBody,
)


# -------------------------------------------------------------------------- checking


def validated(model: type[M], body: Any) -> M:
    """``body`` (a parsed JSON object) checked against ``model``.

    Raises:
        BadRequest: naming the first bad field (see :func:`bad_request`).
    """
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise bad_request(exc, model, body) from None


def bad_request(exc: ValidationError, model: type[BaseModel], body: Any) -> BadRequest:
    """The 400 for a body ``model`` refused: its first unknown field, else its first error.

    ``param`` is the field's path in the body as sent (``attachments[0].name``): pydantic's
    own location also names union members (``str``, a message's role), which are left out.
    """
    errors = exc.errors(include_url=False)
    paths = [_path(e["loc"], body, missing=e["type"] == "missing") for e in errors]
    # Unknown fields first, as the routes refused them before anything else; else the
    # error deepest in the body (of a union's members, the one that got furthest).
    unknown = [i for i, e in enumerate(errors) if e["type"] == "extra_forbidden"]
    at = unknown[0] if unknown else max(range(len(errors)), key=lambda i: len(paths[i]))
    first, path = errors[at], paths[at]
    param = field_path(path)
    if first["type"] == "extra_forbidden":
        return _unknown(model, path)
    if first["type"] == "missing":
        info = _field_at(model, path)
        what = f": {info.description}" if info is not None and info.description else ""
        message = f"`{param}` is required{what}"
    else:
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return BadRequest(message, param=param or None)


def refuse_unknown(model: type[BaseModel], body: dict) -> None:
    """Refuse a top-level field ``model`` does not declare, as :func:`validated` would, but
    before anything else is checked."""
    for name in body:
        if name not in _by_alias(model):
            raise _unknown(model, [name])


def _unknown(model: type[BaseModel], path: Sequence[str | int]) -> BadRequest:
    name = str(path[-1]) if path else "?"
    where = field_path(path[:-1])
    accepted = sorted(_fields_at(model, path[:-1]))
    hint = did_you_mean(name, accepted)
    inside = f" in {where}" if where else ""
    listed = (
        ", ".join(accepted) if len(accepted) <= MAX_LISTED else f"see {model.__name__} in /docs"
    )
    return BadRequest(
        f"unknown field {name!r}{inside}{hint}; accepted: {listed}", param=field_path(path)
    )


def field_path(path: Sequence[str | int]) -> str:
    """``["messages", 1, "content"]`` → ``"messages[1].content"``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _path(loc: Sequence[str | int], body: Any, *, missing: bool = False) -> list[str | int]:
    """The parts of pydantic's ``loc`` that are keys or indexes of ``body`` (and, for a
    ``missing`` field, its name last)."""
    path: list[str | int] = []
    here = body
    for i, part in enumerate(loc):
        key = isinstance(here, dict) and isinstance(part, str)
        index = isinstance(here, list) and isinstance(part, int) and 0 <= part < len(here)
        if (key and part in here) or index:
            here = here[part]
        elif key and missing and i == len(loc) - 1:
            here = None  # a missing field: named, though the body lacks it
        else:
            continue  # a union member's tag or type name
        path.append(part)
    return path


def _members(tp: Any) -> list[Any]:
    """The types ``tp`` may hold, through ``Annotated`` and unions."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(tp) for m in _members(arg)]
    return [tp]


def _step(types_here: list[Any], part: str | int) -> list[Any]:
    """The types found one key (or index) down from ``types_here``."""
    out: list[Any] = []
    for tp in (m for t in types_here for m in _members(t)):
        origin = get_origin(tp)
        if isinstance(part, int) and origin in (list, tuple):
            out.extend(get_args(tp)[:1])
        elif isinstance(part, str) and origin is dict:
            out.extend(get_args(tp)[1:2])
        elif isinstance(part, str) and isinstance(tp, type) and issubclass(tp, BaseModel):
            info = _by_alias(tp).get(part)
            if info is not None:
                out.append(info.annotation)
    return out


def _by_alias(model: type[BaseModel]) -> dict[str, FieldInfo]:
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _fields_at(model: type[BaseModel], path: Sequence[str | int]) -> set[str]:
    """Field names (as sent) of the objects the body may hold at ``path``."""
    here: list[Any] = [model]
    for part in path:
        here = _step(here, part)
    names: set[str] = set()
    for tp in (m for t in here for m in _members(t)):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            names |= set(_by_alias(tp))
    return names


def _field_at(model: type[BaseModel], path: Sequence[str | int]) -> FieldInfo | None:
    """The declared field at ``path`` (its last part a field name), if one is found."""
    if not path or not isinstance(path[-1], str):
        return None
    here: list[Any] = [model]
    for part in path[:-1]:
        here = _step(here, part)
    for tp in (m for t in here for m in _members(t)):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = _by_alias(tp).get(path[-1])
            if info is not None:
                return info
    return None


# --------------------------------------------------------------------------- OpenAPI


def request_body(
    model: type[BaseModel],
    *,
    required: bool = True,
    media_type: Literal["application/json", "multipart/form-data"] = "application/json",
) -> dict[str, Any]:
    """A route's ``openapi_extra`` declaring ``model`` as its request body.

    The route still reads the body itself (:func:`.limits.parse_json_body`), so FastAPI
    never parses it; the model's schema is added by :func:`install_openapi`.
    """
    schema = {"$ref": f"{REF}{model.__name__}"}
    return {"requestBody": {"required": required, "content": {media_type: {"schema": schema}}}}


def install_openapi(
    app: Any,
    models: Sequence[type[BaseModel]],
    public: Collection[tuple[str, str]] = (),
) -> None:
    """Make ``app.openapi()`` document ``models`` (in ``components.schemas``), answer
    every operation's errors in OpenAI's format (``4XX``/``5XX``: :class:`ErrorResponse`)
    instead of FastAPI's 422, which the gateway never sends, and ask for an API key
    (``Authorization: Bearer``) on every operation but the ``public`` ones (method and
    path template), so ``/docs`` can send one."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # FastAPI's, cached on the app; completed here once
            _, top = models_json_schema(
                [(m, "validation") for m in models], ref_template=REF + "{model}"
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in top.get("$defs", {}).items():
                if name in schemas and schemas[name] != definition:
                    raise ValueError(f"two request-body schemas are named {name!r}")
                schemas[name] = definition
            _openai_errors(schema)
            _bearer(schema, {(m.lower(), path) for m, path in public})
        return app.openapi_schema  # type: ignore[no-any-return]

    app.openapi = openapi


def _bearer(schema: dict[str, Any], public: set[tuple[str, str]]) -> None:
    schema["components"].setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key, ql-<id>-<secret> (`qingliang keys create`).",
    }
    schema["security"] = [{"apiKey": []}]
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if (method, path) in public:
                operation["security"] = []


def _openai_errors(schema: dict[str, Any]) -> None:
    error = {
        "description": "An error in OpenAI's format.",
        "content": {"application/json": {"schema": {"$ref": f"{REF}ErrorResponse"}}},
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in _ERROR_RANGES:
                responses.setdefault(status, error)
    schemas = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
