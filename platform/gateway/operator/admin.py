"""What the admin routes run (``routes/admin.py``) and what ``qingliang … --json`` prints
locally: one function per record, so a listing has the same shape on this machine and
over ``--server``.

:class:`PlatformAdmin` is a plain class over the platform's data directory. Changes go
through the same :class:`~qingliang.platform.control.apply.Controller` the CLI uses
locally, as :mod:`.manifest_check` does for ``diff``: the text of a manifest file is
handed to it as a file in a private temporary folder, removed at once. Nothing here
imports FastAPI.

Example:
    >>> admin = PlatformAdmin(Path("/tmp/ql"))                     # doctest: +SKIP
    >>> admin.apply(open("deploy/defaults/tiny.yaml").read())     # doctest: +SKIP
    {'ok': True, 'changes': [{'kind': 'ModelDeployment', 'name': 'tiny', ...}]}
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from qingliang.platform.errors import BadRequest, ManifestError, NotFound, did_you_mean
from qingliang.platform.settings import Settings

logger = logging.getLogger(__name__)

#: What ``apply`` calls the text in its messages (the temporary file's path never shows).
LABEL = "manifest.yaml"
#: The kinds ``qingliang delete`` removes.
DELETABLE = ("ModelDeployment", "KnowledgeBase", "AgentGraph", "Dataset")
DAY_S = 86_400.0


def plain(value: Any) -> Any:
    """``json.dumps(default=plain)`` for registry records: dataclasses (with their
    ``ref``), datetimes as ISO 8601, tuples and sets as lists."""
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        ref = getattr(value, "ref", None)
        return {**({"ref": ref} if isinstance(ref, str) else {}), **dataclasses.asdict(value)}
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def jsonable(value: Any) -> Any:
    """``value`` with :func:`plain` applied all the way down (what an HTTP answer holds)."""
    import json

    return json.loads(json.dumps(value, default=plain, ensure_ascii=False))


def change_json(change: Any) -> dict[str, Any]:
    """One change of ``apply`` / ``diff`` as ``qingliang apply --json`` prints it."""
    return {
        "kind": change.kind,
        "name": change.name,
        "action": change.action,
        "fields": list(change.fields),
    }


def packaged_models(settings: Settings) -> list[dict[str, Any]]:
    """``qingliang models``: the packaged models and whether each is installed, cached."""
    from qingliang.serving.sources import list_packaged

    return [dict(m) for m in list_packaged(settings.model_cache)]


def registry_rows(
    home: Path, what: str, name: str | None = None, status: str | None = None
) -> list[Any]:
    """``qingliang registry adapters|jobs|datasets``' records, as JSON values.

    Raises:
        NotFound: ``name`` is not in the registry (with a "did you mean").
        BadRequest: ``what`` is none of the three.
    """
    from qingliang.platform.lifecycle.registry import Registry
    from qingliang.platform.lifecycle.registry import lineage as _lineage

    with Registry(home=home) as reg:
        if what == "adapters":
            rows: list[Any] = reg.list_adapters(name, status=status)
            if name and not rows and not reg.list_adapters(name):
                reg.get_adapter(name)  # NotFound with a did-you-mean
        elif what == "jobs":
            rows = reg.list_jobs(status=status)
        elif what == "datasets":
            rows = reg.list_dataset_versions(name, status=status)
            if name and not rows:
                _lineage.dataset_version_ref(reg, name)
        else:
            raise BadRequest(f"registry listing {what!r}: adapters, jobs or datasets")
    return jsonable(rows)


def lineage_doc(
    settings: Settings, ref: str, direction: str, depth: int | None, kind: str | None
) -> dict[str, Any]:
    """``qingliang lineage REF``'s document (``direction``: up, down or both).

    Raises:
        BadRequest: an unknown direction.
        NotFound: nothing in the registry is ``ref`` (with a "did you mean").
    """
    from qingliang.platform.lifecycle.registry import Registry
    from qingliang.platform.lifecycle.registry import lineage as _lineage
    from qingliang.platform.storage.state import StateStore
    from qingliang.serving.traffic import ServingView

    walk = _lineage.DIRECTIONS.get(direction)
    if walk is None:
        raise BadRequest(f"direction {direction!r}: use up, down or both", param="direction")

    def applied() -> Any:
        return ServingView.read(StateStore(settings.state_db)).adapter_refs()

    with Registry(home=settings.home) as reg:
        found = _lineage.resolve(reg, ref, kind, applied=applied)
        doc = _lineage.trace(reg, found, ref, direction=walk, depth=depth)
    return {**jsonable(doc), "via": found.via}


def platform_status(settings: Settings, *, answering: bool = False) -> dict[str, Any]:
    """``qingliang status``: whether the platform on ``settings.home`` runs, and where.

    From its run file (what ``qingliang up`` wrote). ``answering``: asked through the
    platform's own gateway, which runs whatever the file says (a KubeRay cluster has no
    run file): the fields the file would give are then null.
    """
    from qingliang.platform.control import cluster

    info = cluster.running(settings)
    out: dict[str, Any] = {
        "running": info is not None or answering,
        "home": str(settings.home),
        "started_at": None,
        "pid": None,
        "api": None,
        "console": None,
        "dashboard": None,
        "joined": None,
    }
    if info is not None:
        base = f"http://{settings.host}:{info.http_port}"
        out.update(
            started_at=info.started_at,
            # `up --ray-address`: no process of ours holds Ray; the cluster's GCS instead
            pid=None if info.joined else info.pid,
            joined=info.gcs_address if info.joined else None,
            api=f"{base}/v1",
            console=f"{base}/ui/",
            dashboard=info.dashboard_url,
        )
    return out


def ray_dashboard(settings: Settings) -> Settings:
    """``settings`` with the Ray dashboard this process's Ray knows (a Serve replica on a
    cluster without a run file, such as KubeRay's: the head's dashboard, which Serve is
    configured through); unchanged outside Ray or when Ray does not say."""
    import sys

    if "ray" not in sys.modules:  # never import Ray for this
        return settings
    import ray

    if not ray.is_initialized():
        return settings
    try:
        from ray._private.worker import get_dashboard_url

        url = str(get_dashboard_url() or "")
    except Exception:  # an internal API: whatever it raises, keep the defaults
        logger.debug("no dashboard URL from Ray", exc_info=True)
        return settings
    host, _, port = url.rpartition("://")[2].rpartition(":")
    if not host or not port.isdigit() or host == "0.0.0.0":
        return settings
    return dataclasses.replace(settings, host=host, dashboard_port=int(port))


@dataclasses.dataclass
class PlatformAdmin:
    """The admin's changes and listings of the platform on ``home``.

    ``settings`` gives the running platform's settings (default: its ports from its run
    file, as the operator's routes read them); ``controller`` makes the Controller (a
    unit test gives one with a fake deployer).
    """

    home: Path
    settings: Callable[[], Settings] | None = None
    controller: Callable[[Settings], Any] | None = None

    def __post_init__(self) -> None:
        self.home = Path(self.home)

    def _settings(self) -> Settings:
        if self.settings is not None:
            return self.settings()
        from qingliang.platform.control.cluster import RunInfo, settings_for

        settings = settings_for(self.home)
        if RunInfo.load(settings.run_file) is None:
            return ray_dashboard(settings)
        return settings

    def _ctl(self) -> Any:
        if self.controller is not None:
            return self.controller(self._settings())
        from qingliang.platform.control.apply import Controller

        return Controller(self._settings())

    # -- manifests ----------------------------------------------------------------------
    def apply(self, text: str) -> dict[str, Any]:
        """``qingliang apply`` of a manifest file's text: ``{"changes": [...]}``. It does
        not wait for the deployments (poll ``applied``); knowledge bases are registered,
        not synced (``POST /v1/knowledge/{kb}/sync``).

        Raises:
            BadRequest: the text is invalid (every error, each at its document and field),
                or names what cannot be used here (a missing file, an unknown model).
        """
        import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401  (every kind)
        from qingliang.platform.errors import ResolveError
        from qingliang.platform.gateway.operator.manifest_check import check

        _loaded, errors = check(text)
        if errors:
            lines = [
                (f"document {e['document']}: " if e["document"] is not None else "")
                + (f"{e['path']}: " if e["path"] else "")
                + e["message"]
                + (f" (line {e['line']})" if e["line"] else "")
                for e in errors
            ]
            raise BadRequest("invalid manifest: " + "; ".join(lines), param="yaml")
        ctl = self._ctl()
        with tempfile.TemporaryDirectory(prefix="qingliang-apply-") as folder:
            path = Path(folder) / LABEL
            path.write_text(text, encoding="utf-8")
            try:
                changes = ctl.apply([path], wait=False, progress=False)
            except (ManifestError, ResolveError) as exc:
                raise BadRequest(str(exc).replace(str(path), LABEL), param="yaml") from None
        return {"changes": [change_json(c) for c in changes]}

    def applied(self) -> list[dict[str, Any]]:
        """``qingliang get``: every applied deployment with its live status."""
        return jsonable(self._ctl().get(live=True))

    def delete(self, kind: str, name: str) -> dict[str, Any]:
        """``qingliang delete KIND/NAME`` of a deployment, agent graph or dataset.

        Raises:
            NotFound: nothing of that kind has that name; or the kind is unknown.
        """
        if kind not in DELETABLE:
            raise NotFound(
                f"kind {kind!r}{did_you_mean(kind, DELETABLE)}: one of {', '.join(DELETABLE)}",
                param="kind",
            )
        self._ctl().delete([name], kind=kind)
        return {"kind": kind, "name": name, "deleted": True}

    # -- adapters -----------------------------------------------------------------------
    def adapter(
        self, deployment: str, name: str, path: str | None, ref: str | None, wait_s: float
    ) -> dict[str, Any]:
        """``qingliang adapters load|unload`` (``path`` None): waits until RUNNING."""
        ctl = self._ctl()
        change = ctl.set_adapter(deployment, name, path, ref=ref)
        ctl.wait(deployment, timeout_s=wait_s)
        return change_json(change)

    def traffic(self, deployment: str, shares: Mapping[str, float]) -> dict[str, Any]:
        """``qingliang adapters traffic``: replace the canary shares."""
        return change_json(self._ctl().set_traffic(deployment, dict(shares)))

    def alias(
        self, deployment: str, alias: str, shares: Mapping[str, float] | None
    ) -> dict[str, Any]:
        """``qingliang adapters alias``: point ``alias`` at adapters (None: remove it)."""
        return change_json(
            self._ctl().set_alias(deployment, alias, None if shares is None else dict(shares))
        )

    # -- keys -----------------------------------------------------------------------------
    def key_limits(self, key: str, limits: Mapping[str, int | None]) -> Any:
        """``qingliang keys limits``: a limit absent from ``limits`` is kept, None lifts
        it; the key's record."""
        from qingliang.platform.storage.keys import KEEP, KeyStore

        store = KeyStore(self._settings().state_db)
        try:
            record = store.set_limits(
                key,
                requests_per_minute=limits.get("requests_per_minute", KEEP),
                tokens_per_day=limits.get("tokens_per_day", KEEP),
            )
        finally:
            store.close()
        return record

    # -- conversations ------------------------------------------------------------------
    @contextmanager
    def _log(self) -> Iterator[Any]:
        from qingliang.platform.storage.conversations import ConversationLog

        log = ConversationLog.for_home(self.home)
        try:
            yield log
        finally:
            log.close()

    def conversations_count(self) -> int:
        """``qingliang conversations count``."""
        with self._log() as log:
            return int(log.count())

    def conversations_export(self, filters: dict[str, Any]) -> str:
        """``qingliang conversations export``: the JSONL text (``filters`` as the log's
        ``export`` takes them)."""
        import io

        out = io.StringIO()
        with self._log() as log:
            log.export(out, **filters)
        return out.getvalue()

    def conversations_purge(self, older_than_days: float) -> int:
        """``qingliang conversations purge``: how many were deleted."""
        if older_than_days < 0:
            raise BadRequest("older_than_days must be 0 or more", param="older_than_days")
        with self._log() as log:
            return int(log.purge(older_than_days * DAY_S))

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``qingliang status`` of this platform (running: it answers)."""
        return platform_status(self._settings(), answering=True)

    def lineage(
        self, ref: str, direction: str, depth: int | None, kind: str | None
    ) -> dict[str, Any]:
        """``qingliang lineage``'s document, with ``via``: how ``ref`` was resolved."""
        return lineage_doc(self._settings(), ref, direction, depth, kind)

    def models(self) -> list[dict[str, Any]]:
        """``qingliang models`` as this platform's nodes see them."""
        return packaged_models(self._settings())


def not_found(what: str, name: str, names: list[str]) -> NotFound:
    """``no WHAT 'x' (did you mean 'y'?)`` for a name among ``names``."""
    return NotFound(f"no {what} {name!r}{did_you_mean(name, names)}")
