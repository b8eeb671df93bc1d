"""Keep the registry in step with the DatasetStore: cut versions, deletions, and a catch-up.

The DatasetStore is the source of truth for data; the registry records which versions
exist so jobs can name them, and which were superseded so adapters trained on them go
``stale``. These helpers are what the control plane and the CLI call after the store has
done its part; each is idempotent, so a step that failed (registry unreachable) is simply
run again, or caught up by :func:`sync_dataset`.

Example:
    >>> store = DatasetStore.for_home(home)                                  # doctest: +SKIP
    >>> with Registry(home=home) as reg:                                     # doctest: +SKIP
    ...     record_dataset_version(reg, store.cut(dataset, folder, actor="apply"))
    ...     result = store.delete_record("gov-sft", rid, actor="dpo", reason="request 17")
    ...     propagate_deletion(reg, result, "request 17", store=store)
    ['gov-desk@2']
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qingliang.platform.errors import Conflict, NotFound
from qingliang.platform.lifecycle.registry.records import DERIVED_FROM, DatasetVersion

if TYPE_CHECKING:
    from qingliang.platform.lifecycle.data.store import DatasetStore, DeletionResult
    from qingliang.platform.lifecycle.data.store import DatasetVersion as StoredVersion
    from qingliang.platform.lifecycle.registry.registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    """What :func:`sync_dataset` changed in the registry.

    Attributes:
        registered: dataset version refs (``dataset@sha256:…``) recorded by this call.
        superseded: old ref -> the version recorded as replacing it by this call.
        stale: adapter refs (``name@version``) this call marked stale.
    """

    registered: tuple[str, ...] = ()
    superseded: dict[str, str] = field(default_factory=dict)
    stale: tuple[str, ...] = ()


def record_dataset_version(
    registry: Registry, version: StoredVersion, *, derived_from: Sequence[str] = ()
) -> DatasetVersion:
    """Record a version the DatasetStore cut; recording it again returns the existing row.

    Record counts are the store's ``train``, ``eval`` and ``quarantined``; the report
    summary is the governance steps of its ``report.json`` while the version's files
    exist. ``derived_from`` (``dataset@sha256:…`` refs) is used only when the version is
    new to the registry.

    Args:
        registry: the registry to write to.
        version: a :class:`~qingliang.platform.lifecycle.data.store.DatasetVersion` from the store
            (what ``cut()`` or ``get()`` returns).
        derived_from: registered versions this one was made from (lineage only).

    Returns:
        The registry's record (``status`` ``active`` for a new one; an existing one
        comes back as it is, superseded or not).

    Example:
        >>> v = store.cut(dataset, Path("deploy/examples"), actor="apply")  # doctest: +SKIP
        >>> record_dataset_version(reg, v).ref                              # doctest: +SKIP
        'gov-sft@sha256:3c9a…'
    """
    return _record(registry, version, derived_from)[0]


def propagate_deletion(
    registry: Registry, result: DeletionResult, reason: str, *, store: DatasetStore
) -> list[str]:
    """Record what a record deletion did to the dataset's versions and mark stale every
    adapter trained on the versions it replaced.

    Each new version is recorded (counts read from ``store``, ``derived_from`` the old
    one); each old version the registry knows is superseded by it. An old version the
    registry never recorded is skipped: no job can have trained on it. Running it again
    with the same result is harmless.

    Args:
        registry: the registry to write to.
        result: what :meth:`DatasetStore.delete_record` returned.
        reason: why the records were deleted (the user's words; the record ids are added).
        store: the store that made ``result``.

    Returns:
        Refs of the adapters this call marked stale, sorted.

    Raises:
        QingliangError: the registry refused or could not be reached; the dataset
            deletion stands either way (run :func:`sync_dataset` to catch up).

    Example:
        >>> result = store.delete_record("gov-sft", rid, actor="dpo", reason="x")  # doctest: +SKIP
        >>> propagate_deletion(reg, result, "x", store=store)  # doctest: +SKIP
        ['gov-desk@2']
    """
    # The wording of the store's own supersession reason, so both read alike.
    why = f"deleted record(s) {', '.join(result.record_ids)}: {reason}"
    stale: list[str] = []
    for old, new in result.superseded.items():
        stale += _supersede(registry, store, result.name, old, new, why)
    return sorted(set(stale))


def sync_dataset(registry: Registry, store: DatasetStore, name: str) -> SyncResult:
    """Catch the registry up with everything the store holds for dataset ``name``.

    Every active version is recorded, and every supersession the store made (a record
    deletion) whose old version the registry knows is recorded too, oldest first, with
    the store's reason; adapters trained on superseded versions are marked stale. Safe
    to run any number of times: the retry after a failed ``propagate_deletion``.

    Raises:
        NotFound: the store has no dataset ``name``.
        QingliangError: the registry refused or could not be reached.

    Example:
        >>> sync_dataset(reg, store, "gov-sft").stale  # doctest: +SKIP
        ('gov-desk@2',)
    """
    versions = list(reversed(store.versions(name)))  # oldest first
    registered: list[str] = []
    for v in versions:
        if v.status == "active":
            record, new = _record(registry, v, ())
            if new:
                registered.append(record.ref)
    superseded: dict[str, str] = {}
    stale: list[str] = []
    for v in _chain_order(versions):
        assert v.superseded_by is not None
        before = _known(registry, f"{name}@{v.version}")
        if before is None or before.status == "superseded":
            continue
        target = _known(registry, f"{name}@{v.superseded_by}")
        stale += _supersede(
            registry, store, name, v.version, v.superseded_by, v.reason or "superseded"
        )
        if target is None:
            registered.append(f"{name}@{v.superseded_by}")
        after = registry.get_dataset_version(f"{name}@{v.version}")
        if after.superseded_by is not None:
            superseded[after.ref] = after.superseded_by
    return SyncResult(tuple(registered), superseded, tuple(sorted(set(stale))))


# -- helpers ---------------------------------------------------------------------------------


def _record(
    registry: Registry, version: StoredVersion, derived_from: Sequence[str]
) -> tuple[DatasetVersion, bool]:
    """The registry's row for ``version`` and whether this call created it."""
    ref = f"{version.name}@{version.version}"
    found = _known(registry, ref)
    if found is not None:
        return found, False
    try:
        record = registry.register_dataset_version(
            version.name,
            version.version,
            record_counts={
                "train": version.train,
                "eval": version.eval,
                "quarantined": version.quarantined,
            },
            report=_summary(version),
            derived_from=derived_from,
        )
    except Conflict:
        # Another process recorded it between our read and our write.
        found = _known(registry, ref)
        if found is None:
            raise
        return found, False
    logger.debug("registry: recorded dataset version %s", ref)
    return record, True


def _known(registry: Registry, ref: str) -> DatasetVersion | None:
    try:
        return registry.get_dataset_version(ref)
    except NotFound:
        return None


def _summary(version: StoredVersion) -> dict[str, Any]:
    """The governance steps of the version's report, when its files are still there."""
    if version.path is None:
        return {}
    try:
        report = json.loads((version.path / "report.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    steps = report.get("steps") if isinstance(report, dict) else None
    return {"steps": steps} if isinstance(steps, list) else {}


def _supersede(
    registry: Registry, store: DatasetStore, name: str, old: str, new: str, why: str
) -> list[str]:
    """Record ``new`` and supersede ``name@old`` by it (or by what superseded ``new`` in
    the registry meanwhile); the adapters marked stale."""
    old_ref = f"{name}@{old}"
    before = _known(registry, old_ref)
    new_record, _ = _record(registry, store.get(name, new), ())
    if before is None:
        logger.info("registry: %s was never recorded; nothing trained on it", old_ref)
        return []
    try:
        registry.link("dataset_version", old_ref, "dataset_version", new_record.ref, DERIVED_FROM)
    except Conflict:  # would close a cycle: lineage only, the supersession still holds
        logger.warning("registry: not linking %s -> %s (cycle)", old_ref, new_record.ref)
    # Recorded already (a retry). Superseded by something else: the registry's Conflict
    # (or, after a later deletion was recorded first, what replaced ``new``; see _current).
    if before.status == "superseded" and before.superseded_by == new:
        return []
    target = _current(registry, name, new)
    return registry.mark_stale_from_dataset({old_ref: target}, why)


def _current(registry: Registry, name: str, version: str) -> str:
    """``version``, or the version that replaced it in the registry (a later deletion
    was recorded before this one)."""
    seen = {version}
    record = registry.get_dataset_version(f"{name}@{version}")
    while record.status == "superseded" and record.superseded_by not in (None, *seen):
        assert record.superseded_by is not None
        seen.add(record.superseded_by)
        record = registry.get_dataset_version(f"{name}@{record.superseded_by}")
    return record.version


def _chain_order(versions: Iterable[StoredVersion]) -> list[StoredVersion]:
    """Superseded versions, each before the one that replaced it when that was
    superseded in turn (A -> B is recorded before B -> C)."""
    pending = [v for v in versions if v.status == "superseded" and v.superseded_by]
    out: list[StoredVersion] = []
    done: set[str] = set()
    while pending:
        targets = {v.superseded_by for v in pending}
        ready = [v for v in pending if v.version not in targets] or pending[:1]
        for v in ready:
            if v.version not in done:
                out.append(v)
                done.add(v.version)
        pending = [v for v in pending if v.version not in done]
    return out
