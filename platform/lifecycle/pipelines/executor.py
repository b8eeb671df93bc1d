"""Run a long step (fine-tuning, a dataset cut, an evaluation) as a Ray task, streaming events.

A step is a plain function ``fn(emit, **kwargs) -> result``: it calls ``emit(event)`` with
a JSON-able dict for each progress event and returns a JSON-able result. The executor
runs it and yields the events as they happen, then ``{"kind": "result", "value": …}``.

:class:`RayExecutor` runs the function as a Ray *streaming generator task* on the local
cluster started by ``qingliang up`` (or any Ray address): the events travel back through
Ray as the task produces them, and the task gets the CPUs / GPUs the step asks for. If
the driver dies, Ray kills its tasks; the steps are written so that running them again
continues where they stopped (see ``qingliang.platform.lifecycle.pipelines``).

:class:`InlineExecutor` runs the same function in this process (the same events and
result); unit tests use it, and ``--inline`` on the CLI for a machine without Ray.

Errors raised by the function reach the caller as the same Qingliang error class with
the same message (``BadRequest`` subclasses keep their ``param``); anything else
becomes :class:`StepFailed`.

Example:
    >>> def double(emit, x):
    ...     emit({"kind": "log", "message": f"doubling {x}"})
    ...     return 2 * x
    >>> [e["kind"] for e in InlineExecutor().stream(double, {"x": 2})]
    ['log', 'result']
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from qingliang.platform import errors
from qingliang.platform.errors import ClusterError, QingliangError
from qingliang.platform.settings import Settings

logger = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
StepFn = Callable[..., Any]


class StepFailed(QingliangError):
    """A step raised something that is not a Qingliang error (a bug or a crash)."""


@dataclass(frozen=True)
class Resources:
    """What one step reserves on the cluster."""

    cpus: float = 1.0
    gpus: float = 0.0


class Executor(Protocol):
    def stream(
        self, fn: StepFn, kwargs: Mapping[str, Any], resources: Resources = ...
    ) -> Iterator[dict[str, Any]]: ...


def run_to_result(
    executor: Executor,
    fn: StepFn,
    kwargs: Mapping[str, Any],
    resources: Resources = Resources(),
    on_event: Emit | None = None,
) -> Any:
    """Run ``fn`` on ``executor``, pass each event to ``on_event``, return the result.

    The stream is read to its end, not left at the result: the result is the task's
    last event, and a stream abandoned early has its task cancelled (see
    :meth:`RayExecutor.stream`), which would kill a worker the next step may be given.
    """
    found, value = False, None
    for event in executor.stream(fn, kwargs, resources):
        if event.get("kind") == "result" and not found:
            found, value = True, event.get("value")
        elif on_event is not None:
            on_event(event)
    if not found:
        raise StepFailed(f"{getattr(fn, '__name__', fn)} ended without a result")
    return value


def _error_event(exc: BaseException) -> dict[str, Any]:
    return {
        "kind": "error",
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "param": getattr(exc, "param", None),
    }


def raise_error_event(event: Mapping[str, Any]) -> None:
    """Re-raise an ``error`` event as the Qingliang error it came from."""
    import importlib

    name, message, param = event.get("type", ""), str(event.get("message", "")), event.get("param")
    cls: Any = None
    module = str(event.get("module") or "")
    if module.startswith("qingliang."):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    if cls is None:
        cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.ApiError):
        try:
            err = cls(message, param=param)
        except TypeError:  # a subclass with its own constructor (e.g. InvalidFineTune)
            err = errors.BadRequest(message, param=param)
        raise err
    if isinstance(cls, type) and issubclass(cls, QingliangError):
        try:
            raise cls(message)
        except TypeError:
            pass
    raise StepFailed(f"{name}: {message}")


def _threaded(fn: StepFn, kwargs: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Run ``fn`` in a thread; yield its events, then its result or error event."""
    events: queue.Queue[dict[str, Any] | None] = queue.Queue()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn(events.put, **kwargs)
        except BaseException as exc:  # reported to the caller, never swallowed
            if not isinstance(exc, QingliangError):
                logger.exception("step %s failed", getattr(fn, "__name__", fn))
            box["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=work, name="qingliang-step", daemon=True)
    thread.start()
    while (event := events.get()) is not None:
        yield event
    thread.join()
    if "error" in box:
        yield _error_event(box["error"])
    else:
        yield {"kind": "result", "value": box.get("value")}


class InlineExecutor:
    """Runs steps in this process (tests, and machines without a Ray cluster)."""

    def stream(
        self, fn: StepFn, kwargs: Mapping[str, Any], resources: Resources = Resources()
    ) -> Iterator[dict[str, Any]]:
        for event in _threaded(fn, kwargs):
            if event["kind"] == "error":
                raise_error_event(event)
            yield event


def _ray_step(fn: StepFn, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from _threaded(fn, kwargs)


class RayExecutor:
    """Runs steps as Ray streaming-generator tasks.

    Args:
        address: a Ray GCS address; default: the cluster of ``qingliang up`` for
            ``settings`` (an error if none is running).
    """

    def __init__(self, settings: Settings | None = None, *, address: str | None = None) -> None:
        self.settings = settings or Settings()
        self.address = address
        self._remote: Any = None

    def _connect(self) -> Any:
        from qingliang.platform.control.cluster import RAY_ENV, SERVE_TUNING_ENV

        # Before Ray reads them: without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 a driver
        # rewrites 127.0.0.1 to the machine's address and never reaches a loopback GCS.
        for key, value in {**SERVE_TUNING_ENV, **RAY_ENV}.items():
            os.environ.setdefault(key, value)
        import ray

        if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
            # Ray reads this once, at import: a process that imported Ray before this call
            # would still resolve its own address to the machine's and never connect.
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        if not ray.is_initialized():
            address = self.address
            if address is None:
                from qingliang.platform.control import cluster

                info = cluster.running(self.settings)
                if info is None:
                    raise ClusterError(
                        f"no local Ray cluster is running for {self.settings.home}: start it "
                        "with `qingliang up` (or run the step in this process with --inline)"
                    )
                address = info.gcs_address
                host, _, port = address.rpartition(":")
                if not cluster._port_open(host, int(port)):
                    raise ClusterError(
                        f"the Ray cluster of {self.settings.home} does not answer at {address}"
                    )
            try:
                ray.init(
                    address=address,
                    namespace="qingliang",
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(f"cannot connect to Ray at {address}: {exc}") from exc
        if self._remote is None:
            self._remote = ray.remote(_ray_step)
        return ray

    def _check_resources(self, ray: Any, fn: StepFn, resources: Resources) -> str | None:
        """Refuse a step the cluster can never run; say why one has to wait."""
        total, free = ray.cluster_resources(), ray.available_resources()
        name = getattr(fn, "__name__", "step")
        wanted = [(k, w) for k, w in (("CPU", resources.cpus), ("GPU", resources.gpus)) if w > 0]
        for key, want in wanted:
            if total.get(key, 0.0) < want:
                raise ClusterError(
                    f"{name} asks for {want:g} {key}(s) but the Ray cluster has "
                    f"{total.get(key, 0.0):g} in all; lower the step's resources or add nodes"
                )
        for key, want in wanted:
            if free.get(key, 0.0) < want:
                return (
                    f"waiting for {want:g} {key}(s) for {name}: {free.get(key, 0.0):g} of "
                    f"{total.get(key, 0.0):g} free (deployments hold the rest)"
                )
        return None

    def stream(
        self, fn: StepFn, kwargs: Mapping[str, Any], resources: Resources = Resources()
    ) -> Iterator[dict[str, Any]]:
        ray = self._connect()
        waiting = self._check_resources(ray, fn, resources)
        if waiting:
            logger.warning("%s", waiting)
            yield {"kind": "log", "message": waiting}
        gen = self._remote.options(
            num_cpus=resources.cpus,
            num_gpus=resources.gpus,
            num_returns="streaming",
            max_retries=0,
            name=f"qingliang:{getattr(fn, '__name__', 'step')}",
        ).remote(fn, dict(kwargs))
        finished = False
        try:
            for ref in gen:
                try:
                    event = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    finished = True  # the task is over: nothing to cancel
                    raise ClusterError(f"the Ray task of {fn.__name__} failed: {exc}") from exc
                if event["kind"] == "error":
                    finished = True  # the error is the task's last event
                    raise_error_event(event)
                yield event
            finished = True
        finally:
            # Only a task whose caller walked away mid-stream (Ctrl-C, a cancelled run)
            # is cancelled. Force-cancelling one that finished kills its worker as it
            # goes back to the pool, and the next task leased to it dies with it.
            if not finished:
                with contextlib.suppress(Exception):  # it may have just finished
                    ray.cancel(gen, force=True)
