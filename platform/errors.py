"""Qingliang's exception tree.

Third-party errors are translated at the boundary (``raise OwnError(...) from exc``)
so callers catch one family::

    QingliangError
    ├── ManifestError            a manifest is invalid (carries file and field path)
    ├── ResolveError             a manifest is valid but names something unusable
    │   └── ModelSourceError     a model source is missing, corrupt or unconvertible
    ├── EngineError              an engine failed to start or to serve
    ├── ClusterError             Ray / Serve is not reachable or did not do what was asked
    └── ApiError                 a request the gateway refuses (has an HTTP status)
        ├── BadRequest           400
        ├── Unauthorized         401
        ├── NotFound             404
        ├── Conflict             409 (valid, but the current state does not allow it)
        └── Saturated            429 (carries retry_after seconds)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class QingliangError(Exception):
    """Base of every error Qingliang raises on purpose."""


@dataclass(frozen=True)
class FieldIssue:
    """One problem in a manifest: where (``spec.engine.dtype``) and what."""

    path: str
    message: str

    def render(self, source: str | None) -> str:
        where = f"{source}: " if source else ""
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.message}"


class ManifestError(QingliangError):
    """A manifest failed validation; ``issues`` lists every bad field."""

    def __init__(self, issues: list[FieldIssue], source: str | None = None) -> None:
        self.issues = list(issues)
        self.source = source
        super().__init__("\n".join(i.render(source) for i in self.issues))


class ResolveError(QingliangError):
    """A valid manifest names something that cannot be used here."""


class ModelSourceError(ResolveError):
    """A model source is missing, corrupt (size/sha256) or cannot be converted."""


class EngineError(QingliangError):
    """An engine failed to start or to serve a request."""


class ClusterError(QingliangError):
    """Ray or Ray Serve is not reachable, or a deployment did not become ready."""


class ApiError(QingliangError):
    """A request refused by the gateway, rendered in OpenAI's error format."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_openai(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code if self.code is not None else self.status_code,
            }
        }


class BadRequest(ApiError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(ApiError):
    status_code = 401
    error_type = "authentication_error"


class Forbidden(ApiError):
    status_code = 403
    error_type = "permission_error"


class NotFound(ApiError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(ApiError):
    status_code = 409
    error_type = "conflict_error"


class Retryable(ApiError):
    """A refusal that passes with time: answered with ``Retry-After: retry_after``."""

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class Saturated(Retryable):
    status_code = 429
    error_type = "rate_limit_error"


class Unavailable(Retryable):
    """A part the request needs (the key store, a replica) cannot answer now; retry."""

    status_code = 503
    error_type = "server_error"


#: Words longer than this get no "did you mean" (a pasted blob is not a typo).
HINT_MAX_CHARS = 200


def closest(word: object, options: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The option closest to ``word`` when one is close enough, else None.

    Example:
        >>> closest("max_model_lenn", ["max_model_len", "dtype"])
        'max_model_len'
        >>> closest(3, ["a"]) is None
        True
    """
    if not isinstance(word, str) or len(word) > HINT_MAX_CHARS:
        return None
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(word: object, options: Iterable[str], *, cutoff: float = 0.6) -> str:
    """The one "did you mean" hint every error message uses: ``" (did you mean 'x'?)"``
    for the closest option, or ``""`` when none is close.

    Example:
        >>> "unknown key" + did_you_mean("scroe", ["score", "limit"])
        "unknown key (did you mean 'score'?)"
        >>> did_you_mean("zzz", ["score"])
        ''
    """
    near = closest(word, options, cutoff=cutoff)
    return f" (did you mean {near!r}?)" if near else ""


#: The one HTTP status -> error class table (the engines' error answers, the CLI's clients).
_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: Saturated,
}


def from_status(status: int, message: str, *, param: str | None = None) -> ApiError:
    """The :class:`ApiError` for an HTTP status and message (the inverse of rendering one).

    Example:
        >>> type(from_status(404, "no such run")).__name__
        'NotFound'
        >>> err = from_status(418, "teapot")
        >>> (err.status_code, err.error_type)
        (418, 'invalid_request_error')
    """
    cls = _BY_STATUS.get(status, ApiError)
    err = cls(message, param=param)
    if cls is ApiError:
        err.error_type = "invalid_request_error" if 400 <= status < 500 else "server_error"
    err.status_code = status
    return err
