"""What the operator's routes read: deployments with their replicas, adapters and live
arm counts, an adapter's lineage, metric series, and where the Ray dashboard is.

:class:`Operations` is a plain class over the platform's data directory. The one part
that needs the running cluster, Serve's application details (status, message and every
replica's state, pid and node), comes from an injected function (:data:`ServeDetails`;
by default :func:`dashboard_details`, Serve's REST API on this platform's dashboard), so
unit tests give it a fake and nothing else.

Deployments are read as ``qingliang get`` reads them
(:meth:`~qingliang.platform.control.apply.Controller.get`), the adapters' registry refs and
shares through serving's :class:`~qingliang.serving.traffic.ServingView`, the arm counts
from :mod:`qingliang.platform.storage.arm_stats`, an adapter's lineage as
``qingliang registry show`` and ``qingliang lineage`` read it.

Example:
    >>> ops = Operations(Path("/tmp/ql"), serve_details=lambda: {})  # doctest: +SKIP
    >>> ops.deployments(window_s=600)[0]["replicas"]                  # doctest: +SKIP
    [{'state': 'RUNNING', 'pid': 4242, 'node_id': '…', ...}]
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from qingliang.platform.errors import ClusterError, NotFound, did_you_mean
from qingliang.platform.settings import Settings
from qingliang.platform.storage import arm_stats
from qingliang.platform.storage.state import StateStore
from qingliang.serving.traffic import ServingView

logger = logging.getLogger(__name__)

#: Serve's application details by application name, as its REST API answers them
#: (``GET /api/serve/applications/`` → ``applications``).
ServeDetails = Callable[[], Mapping[str, Any]]

#: Keys of a stored plan shown as a deployment's ``engine``.
_ENGINE_KEYS = (
    "dtype",
    "accelerator",
    "quantization",
    "lora_enabled",
    "max_loras",
    "max_lora_rank",
    "max_ongoing_requests",
    "max_queued_requests",
    "options",
    "placement",
)


def settings_of(home: Path) -> Settings:
    """The settings of the platform running on ``home`` (its ports from its run file)."""
    from qingliang.platform.control.cluster import settings_for

    return settings_for(home)


def dashboard_details(home: Path, timeout_s: float = 10) -> Mapping[str, Any]:
    """Serve's application details from the dashboard of the platform on ``home``.

    Raises:
        ClusterError: the dashboard does not answer.
    """
    import httpx

    settings = settings_of(home)
    url = f"http://{settings.host}:{settings.dashboard_port}/api/serve/applications/"
    try:
        r = httpx.get(url, timeout=timeout_s)
        r.raise_for_status()
    except httpx.HTTPError as exc:
        raise ClusterError(f"the Ray dashboard at {url} does not answer: {exc}") from None
    return r.json().get("applications") or {}


class _Statuses:
    """The controller's Deployer, reading statuses from details already fetched (this
    view never applies anything)."""

    def __init__(self, details: Mapping[str, Any]) -> None:
        self._details = details

    def apply_config(self, config: dict) -> None:  # pragma: no cover - never called
        raise NotImplementedError("the operator's routes never apply anything")

    def statuses(self) -> dict[str, tuple[str, str]]:
        out = {}
        for name, app in self._details.items():
            message = app.get("message") or ""
            for dep in (app.get("deployments") or {}).values():
                if dep.get("message") and dep.get("status") != "HEALTHY":
                    message = dep["message"]
            out[name] = (str(app.get("status")), message)
        return out


def replicas_of(app: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every replica of a Serve application's details: state, pid, node, deployment."""
    out = []
    for dep_name, dep in sorted((app.get("deployments") or {}).items()):
        for r in dep.get("replicas") or ():
            out.append(
                {
                    "state": r.get("state"),
                    "pid": r.get("pid"),
                    "node_id": r.get("node_id"),
                    "node_ip": r.get("node_ip"),
                    "replica_id": r.get("replica_id"),
                    "deployment": dep_name,
                    "start_time_s": r.get("start_time_s"),
                }
            )
    return out


def jsonable(value: Any) -> Any:
    """A registry record (dataclasses, datetimes, tuples) as JSON values."""
    if isinstance(value, datetime):
        return value.timestamp()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        ref = getattr(value, "ref", None)
        fields = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {**({"ref": ref} if isinstance(ref, str) else {}), **fields}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value


@dataclasses.dataclass
class Operations:
    """The operator's view of the platform on ``home`` (see the module docstring)."""

    home: Path
    serve_details: ServeDetails | None = None
    settings: Callable[[], Settings] | None = None
    #: Makes the Controller the admin's routes apply and delete through (default: the
    #: platform's own; a unit test gives one with a fake deployer).
    controller: Callable[[Settings], Any] | None = None

    def __post_init__(self) -> None:
        self.home = Path(self.home)
        if self.serve_details is None:
            home = self.home
            self.serve_details = lambda: dashboard_details(home)

    def _settings(self) -> Settings:
        return self.settings() if self.settings is not None else settings_of(self.home)

    def dashboard_url(self) -> str | None:
        """The Ray dashboard of the running platform, or None when none runs on ``home``."""
        from qingliang.platform.control.cluster import RunInfo

        settings = self._settings()
        if RunInfo.load(settings.run_file) is None:
            return None
        return f"http://{settings.host}:{settings.dashboard_port}"

    def names(self) -> list[str]:
        """The applied ModelDeployments, in the state store's order."""
        return list(ServingView.read(StateStore(self.home / "state.sqlite")).names())

    def deployments(self, window_s: float) -> list[dict[str, Any]]:
        """Every applied deployment as ``qingliang get`` shows it, with its engine, Serve
        replicas, adapters (ref, share) and each arm's counts over ``window_s`` seconds."""
        from qingliang.platform.control.apply import MODEL_KIND, Controller

        assert self.serve_details is not None
        details = self.serve_details()
        ctl = Controller(self._settings(), deployer=_Statuses(details))
        view = ServingView.read(ctl.store)
        plans = {row.name: row.plan or {} for row in ctl.store.list(MODEL_KIND)}
        since = time.time() - window_s
        out = []
        for row in ctl.get(live=True):
            name = row["name"]
            entry = view.get(name)
            shares = entry.routed_shares() if entry is not None else {}
            refs = entry.refs if entry is not None else {}
            plan = plans.get(name, {})
            arms = arm_stats.summary(self.home, name, since=since)
            out.append(
                {
                    **{k: row[k] for k in ("name", "source", "status", "message")},
                    "generation": row["generation"],
                    "applied_at": row["applied_at"],
                    "engine": {
                        # What the plan runs (``auto`` resolved), and what the file asked.
                        "kind": plan.get("engine", row["engine"]),
                        "requested": row["engine"],
                        **{k: plan[k] for k in _ENGINE_KEYS if k in plan},
                    },
                    "replicas": replicas_of(details.get(name) or {}),
                    "adapters": [
                        {"name": a, "ref": refs.get(a), "share": shares.get(a)}
                        for a in row["adapters"]
                    ],
                    "traffic": row["traffic"],
                    "aliases": row["aliases"],
                    "arms": {
                        arm: {k: v for k, v in s.to_dict().items() if k != "arm"}
                        for arm, s in sorted(arms.items())
                    },
                }
            )
        return out

    def deployment(self, name: str, window_s: float) -> dict[str, Any]:
        """One deployment as in :meth:`deployments`.

        Raises:
            NotFound: no ModelDeployment ``name`` is applied (named, with a hint).
        """
        rows = self.deployments(window_s)
        for row in rows:
            if row["name"] == name:
                return row
        names = [r["name"] for r in rows]
        raise NotFound(
            f"no deployment {name!r}{did_you_mean(name, names)}"
            + (f" (applied: {', '.join(names)})" if names else " (none is applied)"),
            param="name",
            code="deployment_not_found",
        )

    def lineage(self, adapter: str, deployment: str | None) -> dict[str, Any]:
        """An adapter's registry record and its lineage back to its job, datasets and base
        model: what ``qingliang registry show`` and ``qingliang lineage --direction up``
        print. ``adapter`` is ``NAME@VERSION`` or ``NAME`` (the newest) in the registry, or,
        with ``deployment``, the adapter's name on that deployment (through its
        ``spec.lora.refs``).

        Raises:
            NotFound: no such deployment, adapter, or registry ref (named).
        """
        from qingliang.platform.lifecycle.registry import Registry
        from qingliang.platform.lifecycle.registry.lineage import resolve, trace

        query = f"{deployment}:{adapter}" if deployment else adapter
        view = ServingView.read(StateStore(self.home / "state.sqlite"))
        with Registry(home=self.home) as reg:
            found = resolve(reg, query, "adapter", applied=view.adapter_refs)
            record = reg.get_adapter(found.ref)
            job = reg.get_job(record.job) if record.job else None
            roles = (
                [("train", r) for r in job.train] + [("eval", r) for r in job.eval] if job else []
            )
            datasets = []
            for role, ref in roles:
                version = reg.get_dataset_version(ref)
                datasets.append(
                    {
                        "role": role,
                        "dataset": version.dataset,
                        "version": version.version,
                        "ref": version.ref,
                        "status": version.status,
                        "record_counts": version.record_counts,
                    }
                )
            served = [
                s
                for d in reg.deployments.names()
                for s in reg.deployments.serving(d)
                if s.target_kind == "adapter" and s.target == record.ref
            ]
            doc = trace(reg, found, query, direction="upstream")
            history = reg.adapter_history(record.ref)
        return {
            "query": query,
            "resolved_via": found.via,
            "adapter": jsonable(record),
            "job": jsonable(job),
            "datasets": datasets,
            "served_by": jsonable(served),
            "history": jsonable(history),
            "upstream": doc.get("upstream", []),
        }

    def series(
        self, window_s: int, step_s: int, deployment: str | None
    ) -> tuple[int, dict[str, dict[str, list]]]:
        """Each deployment's metric series (:func:`~.arm_stats.series`) over the last
        ``window_s`` seconds; every applied deployment has one (zeros when idle).

        Raises:
            NotFound: ``deployment`` is neither applied nor counted in the window.
        """
        names = self.names()
        t0, out = arm_stats.series(
            self.home,
            since=time.time() - window_s,
            step_s=step_s,
            deployments=names,
            only=deployment,
        )
        if deployment is not None and deployment not in out:
            raise NotFound(
                f"no deployment {deployment!r}{did_you_mean(deployment, names)}",
                param="deployment",
                code="deployment_not_found",
            )
        return t0, out
