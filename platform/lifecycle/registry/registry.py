"""The model registry: base models, dataset versions, fine-tuning jobs, adapters, quantised
artifacts and deployments, joined by lineage edges.

Every write is one transaction under the registry's write lock (see ``_db``), so a failed
call leaves nothing behind. Rows are never deleted. Refs and statuses: see
:mod:`qingliang.platform.lifecycle.registry.records`; storage and migrations: docs/registry.md.

Example:
    >>> reg = Registry("sqlite:////tmp/ql/registry.sqlite")  # doctest: +SKIP
    >>> reg.register_base_model("qwen2.5-0.5b", source="Qwen/Qwen2.5-0.5B-Instruct",
    ...                         format="safetensors")  # doctest: +SKIP
    >>> reg.register_dataset_version("faq", "sha256:" + "0" * 64,
    ...                              record_counts={"train": 900, "eval": 100})  # doctest: +SKIP
    >>> reg.register_job("faq-lora-1", method="lora", base_model="qwen2.5-0.5b",
    ...                  train=["faq@sha256:" + "0" * 64])  # doctest: +SKIP
    >>> reg.set_job_status("faq-lora-1", "running")  # doctest: +SKIP
    >>> reg.register_adapter("faq-bot", path="/data/a/faq-bot-1", sha256="ab" * 32,
    ...                      job="faq-lora-1").ref  # doctest: +SKIP
    'faq-bot@1'
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from qingliang.platform.errors import BadRequest, Conflict
from qingliang.platform.lifecycle.registry import _checks, _lifecycle, _rows, _training
from qingliang.platform.lifecycle.registry._db import (
    make_engine,
    normalize_url,
    read_session,
    safe,
    upgrade,
    write_session,
)
from qingliang.platform.lifecycle.registry.deployments import Deployments
from qingliang.platform.lifecycle.registry.quantized import QuantizedArtifacts
from qingliang.platform.lifecycle.registry.records import (
    DERIVED_FROM,
    LINKABLE,
    MERGED_FROM,
    PROPAGATES_STALENESS,
    Adapter,
    AdapterStatus,
    BaseModel,
    DatasetVersion,
    Job,
    JobStatus,
    Kind,
    Lineage,
    StatusEvent,
    check_kind,
    check_name,
    check_sha256,
    check_token,
    check_version,
    split_adapter_ref,
    split_dataset_ref,
)
from qingliang.platform.lifecycle.registry.tables import (
    ADAPTER_STATUSES,
    JOB_METHODS,
    JOB_STATUSES,
    AdapterEventRow,
    AdapterRow,
    BaseModelRow,
    DatasetVersionRow,
    JobRow,
)

logger = logging.getLogger(__name__)

DEFAULT_FILE = "registry.sqlite"


class Registry:
    """The registry over one database; safe to use from several threads and processes.

    Args:
        url: ``sqlite:///<path>`` or ``postgresql+psycopg://user:pw@host/db``
            (``postgresql://`` means psycopg too). Default: ``$QINGLIANG_DATABASE_URL`` when
            set, else ``sqlite:///<home>/registry.sqlite``.
        home: the data directory for the default URL (default: ``$QINGLIANG_HOME``).

    Opening connects and upgrades the schema to the newest revision (once, under a lock,
    whatever the number of processes opening at the same moment); ``schema_upgraded``
    says whether this instance did it.

    Raises:
        RegistryError: the database is unreachable or was written by a newer Qingliang.
    """

    def __init__(self, url: str | None = None, *, home: Path | None = None) -> None:
        if url is None:
            if home is None:
                from qingliang.platform.settings import Settings

                home = Settings().home
            from qingliang.platform.storage.database import database_url

            # $QINGLIANG_DATABASE_URL (every store in one database) when set.
            url = database_url(home, "registry", file=DEFAULT_FILE)
        self.url = normalize_url(url)
        self.backend: str = self.url.get_backend_name()
        self._engine = make_engine(self.url)
        try:
            self.schema_upgraded = upgrade(self._engine, self.url)
        except BaseException:
            self._engine.dispose()
            raise
        #: What each deployment serves, and served: ``reg.deployments.set_serving(...)``.
        self.deployments = Deployments(self._read, self._write)
        #: Quantised artifacts of base models: ``reg.quantized.register(...)``.
        self.quantized = QuantizedArtifacts(self._read, self._write)

    def __repr__(self) -> str:
        return f"Registry({safe(self.url)!r})"

    def close(self) -> None:
        """Close the pooled connections."""
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with read_session(self._engine, self.url) as s:
            yield s

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with write_session(self._engine, self.url) as s:
            yield s

    # -- base models ---------------------------------------------------------------------

    def register_base_model(
        self,
        name: str,
        *,
        source: str,
        format: str,
        revision: str | None = None,
        sha256: str | None = None,
        size_bytes: int | None = None,
        merged_from: str | None = None,
    ) -> BaseModel:
        """Record a model: ``source`` is a hub id, path or URI; ``merged_from`` names the
        adapter (``name@version``) a merged model was made from."""
        check_name(name, "base_model")
        source = _checks.text(source, "source")
        check_token(format, "format")
        revision = _checks.optional_text(revision, "revision", 200)
        sha = None if sha256 is None else check_sha256(sha256)
        size = _checks.size(size_bytes)
        with self._write() as s:
            old = s.scalar(select(BaseModelRow).where(BaseModelRow.name == name))
            if old is not None:
                raise Conflict(
                    f"base model {name!r} is already registered (source {old.source!r}); "
                    "register a changed model under a new name",
                    param="base_model",
                )
            adapter = None
            if merged_from is not None:
                adapter = _rows.adapter(s, merged_from)
                if adapter.status in ("stale", "retired"):
                    raise Conflict(
                        f"base model {name!r}: adapter {merged_from} is {adapter.status}; "
                        "a merged model cannot be made from it",
                        param="merged_from",
                    )
            row = BaseModelRow(
                name=name,
                source=source,
                format=format,
                revision=revision,
                sha256=sha,
                size_bytes=size,
                created_at=_rows.now(),
            )
            s.add(row)
            s.flush()
            if adapter is not None:
                _rows.add_edge(s, ("adapter", adapter.id), ("base_model", row.id), MERGED_FROM)
            return _rows.base_model_record(s, row)

    def get_base_model(self, name: str) -> BaseModel:
        with self._read() as s:
            return _rows.base_model_record(s, _rows.by_name(s, "base_model", name))

    def list_base_models(self) -> list[BaseModel]:
        with self._read() as s:
            rows = s.scalars(select(BaseModelRow).order_by(BaseModelRow.name))
            return [_rows.base_model_record(s, r) for r in rows]

    # -- dataset versions ----------------------------------------------------------------

    def register_dataset_version(
        self,
        dataset: str,
        version: str,
        *,
        record_counts: Mapping[str, int],
        report: Mapping[str, Any] | None = None,
        derived_from: Sequence[str] = (),
    ) -> DatasetVersion:
        """Record a version the DatasetStore wrote: ``version`` is its content address
        (``sha256:…``), ``record_counts`` e.g. ``{"train": 900, "eval": 100}``, ``report``
        the governance report's summary; ``derived_from`` lists ``dataset@version`` refs
        it was built from (lineage only: superseding those does not supersede this)."""
        check_name(dataset, "dataset")
        check_version(version)
        counts = _checks.counts(record_counts)
        summary = _checks.json_object(report, "report")
        if isinstance(derived_from, str):
            raise BadRequest(
                "derived_from must be a list of dataset versions", param="derived_from"
            )
        for ref in derived_from:
            split_dataset_ref(ref)
        with self._write() as s:
            old = s.scalar(
                select(DatasetVersionRow).where(
                    DatasetVersionRow.dataset == dataset, DatasetVersionRow.version == version
                )
            )
            if old is not None:
                raise Conflict(
                    f"dataset version {dataset}@{version} is already registered "
                    f"({old.status}, {old.created_at:%Y-%m-%d %H:%M:%S} UTC)",
                    param="dataset_version",
                )
            parents = [_rows.dataset_version(s, r) for r in derived_from]
            row = DatasetVersionRow(
                dataset=dataset,
                version=version,
                record_counts=counts,
                report=summary,
                status="active",
                created_at=_rows.now(),
            )
            s.add(row)
            s.flush()
            for parent in parents:
                _rows.add_edge(
                    s, ("dataset_version", parent.id), ("dataset_version", row.id), DERIVED_FROM
                )
            return _rows.dataset_record(row)

    def get_dataset_version(self, ref: str) -> DatasetVersion:
        """``dataset@sha256:…``"""
        with self._read() as s:
            return _rows.dataset_record(_rows.dataset_version(s, ref))

    def list_dataset_versions(
        self, dataset: str | None = None, *, status: str | None = None
    ) -> list[DatasetVersion]:
        with self._read() as s:
            stmt = select(DatasetVersionRow).order_by(
                DatasetVersionRow.dataset, DatasetVersionRow.id
            )
            if dataset is not None:
                stmt = stmt.where(DatasetVersionRow.dataset == dataset)
            if status is not None:
                stmt = stmt.where(DatasetVersionRow.status == status)
            return [_rows.dataset_record(r) for r in s.scalars(stmt)]

    def mark_stale_from_dataset(self, superseded: Mapping[str, str], reason: str) -> list[str]:
        """Supersede dataset versions and mark stale every adapter built from them.

        Args:
            superseded: old version -> new version. Keys are ``sha256:…`` (every dataset
                with that version) or ``dataset@sha256:…``; values the replacing version of
                the same dataset, which must be registered and not superseded itself.
            reason: why (kept on the dataset versions and in each adapter's stale reason).

        Returns:
            Refs (``name@version``) of the adapters this call marked stale: those trained
            on an old version, directly or through jobs, merged models and adapters they
            continued from. Adapters already stale or retired are not listed. Calling it
            again with the same mapping is harmless (and catches adapters registered since).

        Raises:
            NotFound: an old or new version is not registered.
            Conflict: an old version is already superseded by a different one, or the
                new one is itself superseded.
        """
        why = _checks.text(reason, "reason")
        if not isinstance(superseded, Mapping):
            raise BadRequest("superseded must map old versions to new ones", param="superseded")
        with self._write() as s:
            return _lifecycle.supersede(s, superseded, why)

    # -- jobs ----------------------------------------------------------------------------

    def register_job(
        self,
        name: str,
        *,
        method: Literal["lora", "qlora"],
        base_model: str,
        train: Sequence[str],
        eval: Sequence[str] = (),
        settings: Mapping[str, Any] | None = None,
    ) -> Job:
        """Record a fine-tuning job (status ``pending``) before it runs. ``train`` and
        ``eval`` are ``dataset@sha256:…`` refs; superseded data or a model merged from a
        stale adapter is refused."""
        check_name(name, "job")
        if method not in JOB_METHODS:
            raise BadRequest(
                f"job {name!r}: method {method!r} is not one of {', '.join(JOB_METHODS)}",
                param="method",
            )
        if isinstance(train, str) or not train:
            raise BadRequest(f"job {name!r}: train must list at least one dataset version")
        if isinstance(eval, str):
            raise BadRequest(f"job {name!r}: eval must be a list of dataset versions")
        for ref in (*train, *eval):
            split_dataset_ref(ref)
        opts = _checks.json_object(settings, "settings")
        with self._write() as s:
            return _training.register_job(s, name, method, base_model, train, eval, opts)

    def set_job_status(
        self,
        name: str,
        status: JobStatus,
        *,
        metrics: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> Job:
        """Move a job along ``pending -> running -> succeeded | failed | cancelled``
        (``interrupted`` when its driver died, ``running`` again when it resumes);
        ``metrics`` (replacing earlier ones) and ``error`` are stored with it."""
        if status not in JOB_STATUSES:
            raise BadRequest(
                f"job status {status!r} is not one of {', '.join(JOB_STATUSES)}", param="status"
            )
        values = None if metrics is None else _checks.json_object(metrics, "metrics")
        with self._write() as s:
            return _training.set_job_status(s, name, status, values, error)

    def get_job(self, name: str) -> Job:
        with self._read() as s:
            return _rows.job_record(s, _rows.by_name(s, "job", name))

    def list_jobs(self, *, status: str | None = None) -> list[Job]:
        with self._read() as s:
            stmt = select(JobRow).order_by(JobRow.id)
            if status is not None:
                stmt = stmt.where(JobRow.status == status)
            return [_rows.job_record(s, r) for r in s.scalars(stmt)]

    # -- adapters ------------------------------------------------------------------------

    def register_adapter(
        self,
        name: str,
        *,
        path: str,
        sha256: str,
        job: str | None = None,
        base_model: str | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> Adapter:
        """Record the next version of adapter ``name`` (1, 2, … per name, never reused).

        Give the ``job`` that produced it (its base model is the job's), or for an
        adapter made elsewhere its ``base_model``. ``sha256`` is the digest of its files.
        An adapter whose training inputs were superseded meanwhile is registered ``stale``.
        """
        check_name(name, "adapter")
        path = _checks.text(path, "path")
        digest = check_sha256(sha256)
        values = _checks.json_object(metrics, "metrics")
        if job is None and base_model is None:
            raise BadRequest(f"adapter {name!r}: give the job that produced it or its base_model")
        with self._write() as s:
            return _training.register_adapter(s, name, path, digest, job, base_model, values)

    def get_adapter(self, ref: str) -> Adapter:
        """``name@version``, or ``name`` for its newest version."""
        with self._read() as s:
            return _rows.adapter_record(s, _rows.adapter(s, ref, need_version=False))

    def list_adapters(self, name: str | None = None, *, status: str | None = None) -> list[Adapter]:
        with self._read() as s:
            stmt = select(AdapterRow).order_by(AdapterRow.name, AdapterRow.version)
            if name is not None:
                stmt = stmt.where(AdapterRow.name == name)
            if status is not None:
                stmt = stmt.where(AdapterRow.status == status)
            return [_rows.adapter_record(s, r) for r in s.scalars(stmt)]

    def adapter_history(self, ref: str) -> list[StatusEvent]:
        """Every status the adapter ``name@version`` went through, oldest first."""
        with self._read() as s:
            row = _rows.adapter(s, ref)
            events = s.scalars(
                select(AdapterEventRow)
                .where(AdapterEventRow.adapter_id == row.id)
                .order_by(AdapterEventRow.id)
            )
            label = f"{row.name}@{row.version}"
            return [StatusEvent(label, e.from_status, e.to_status, e.reason, e.at) for e in events]

    def set_status(
        self,
        adapter: str,
        status: AdapterStatus,
        reason: str = "",
        *,
        metrics: Mapping[str, Any] | None = None,
    ) -> Adapter:
        """Move adapter ``name@version`` to ``status`` (see the transition table in
        :mod:`~qingliang.platform.lifecycle.registry.records`); ``metrics`` are merged into its
        metrics (an evaluation's results). ``stale`` needs a reason and also marks stale
        the adapters built from this one. The current status again is a no-op.

        Raises:
            Conflict: the transition is not allowed (the message names from and to), the
                status is one only deployments set (``canary``, ``serving``), or a retired
                adapter is still served.
        """
        split_adapter_ref(adapter)
        if status not in ADAPTER_STATUSES:
            raise BadRequest(
                f"adapter status {status!r} is not one of {', '.join(ADAPTER_STATUSES)}",
                param="status",
            )
        values = None if metrics is None else _checks.json_object(metrics, "metrics")
        if status == "stale":
            reason = _checks.text(reason, "reason")
        with self._write() as s:
            return _training.set_status(s, adapter, status, reason, values)

    # -- lineage -------------------------------------------------------------------------

    def link(
        self, from_kind: Kind, from_ref: str, to_kind: Kind, to_ref: str, relation: str
    ) -> bool:
        """Add a lineage edge the register calls do not make themselves: ``derived_from``
        (dataset version -> dataset version) or ``initialized_from`` (adapter -> the job
        that continued training from it). True if added, False if it was there."""
        if relation not in LINKABLE:
            raise BadRequest(
                f"relation {relation!r} cannot be linked by hand; use one of "
                f"{', '.join(sorted(LINKABLE))} (the others come with register_*)",
                param="relation",
            )
        kinds = LINKABLE[relation]
        if (check_kind(from_kind), check_kind(to_kind)) != kinds:
            raise BadRequest(
                f"relation {relation!r} joins {kinds[0]} to {kinds[1]}, not "
                f"{from_kind} to {to_kind}",
                param="relation",
            )
        with self._write() as s:
            src = (from_kind, _rows.find(s, from_kind, from_ref).id)
            dst = (to_kind, _rows.find(s, to_kind, to_ref).id)
            if src == dst or src in _rows.reachable(s, [dst], upstream=False):
                raise Conflict(
                    f"linking {from_kind} {from_ref} -> {to_kind} {to_ref} would make a cycle",
                    param="relation",
                )
            added = _rows.add_edge(s, src, dst, relation)
            if added and relation in PROPAGATES_STALENESS:
                causes = _lifecycle.stale_causes(s, [src])
                if causes:
                    _lifecycle.mark_stale_downstream(
                        s, [(dst[0], dst[1], "; ".join(causes))], _rows.now()
                    )
            return added

    def lineage(
        self,
        kind: Kind,
        ref: str,
        *,
        direction: Literal["upstream", "downstream", "both"] = "both",
        depth: int | None = None,
    ) -> Lineage:
        """Walk the lineage of one node: upstream (what it came from: an adapter's job,
        dataset versions and base model) and downstream (what came of it: a dataset
        version's jobs, adapters, merged models, deployments), ``depth`` edges at most."""
        check_kind(kind)
        if direction not in ("upstream", "downstream", "both"):
            raise BadRequest(
                f"direction {direction!r} is not upstream, downstream or both", param="direction"
            )
        if depth is not None and (not isinstance(depth, int) or depth < 0):
            raise BadRequest("depth must be a non-negative integer", param="depth")
        with self._read() as s:
            row = _rows.find(s, kind, ref)
            node = (kind, row.id)
            up = _rows.tree(s, node, True, depth, {node}) if direction != "downstream" else ()
            down = _rows.tree(s, node, False, depth, {node}) if direction != "upstream" else ()
            return Lineage(
                kind=kind,
                ref=_rows.ref_of(s, kind, row.id),
                status=_rows.status_of(s, kind, row.id),
                upstream=up,
                downstream=down,
            )
