"""Documents of a knowledge base: the stored list, uploads through the API, deletes.

An upload is stored as ``uploads/<kb>/<filename>`` (an implicit source of the KB) and
synced alone; only regular files directly in that folder are ever written or removed
(:mod:`._paths`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from qingliang.knowledge._base import Kb
from qingliang.knowledge._paths import is_upload_name, public_errors, upload_file, upload_name
from qingliang.knowledge.ingest import IngestOptions, IngestReport, ingest_paths
from qingliang.knowledge.sync import LEARNED
from qingliang.knowledge.versions import SyncOutcome, Versions
from qingliang.platform import metrics
from qingliang.platform.errors import BadRequest, Conflict, NotFound

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 50 * 1024 * 1024


class Documents(Versions):
    """List, upload and delete a KB's documents (a base of KnowledgeService)."""

    def documents(self, name: str, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """One row per stored document (learned answers excluded), sorted by source.

        ``source`` is relative to the KB: an upload's file name, or the path below the
        source folder it comes from.
        """
        kb = self._kb(name, tenant)
        shown = self._public(kb)
        with public_errors(shown):
            rows = [{**r, "source": shown.path(str(r["source"]))} for r in self._rows(kb)]
        return sorted(rows, key=lambda r: (str(r["source"]), str(r["record"] or "")))

    def _rows(self, kb: Kb) -> list[dict[str, Any]]:
        """:meth:`documents` with the stored (host) ``source`` paths."""
        name = kb.name
        store = self._store(kb)
        coll = kb.manifest.collection
        if coll not in store.list_collections():
            return []
        uploads = str(self._uploads(name))
        docs: dict[str, dict[str, Any]] = {}
        for payload in self._payloads(store, coll, name):
            if payload.get("origin") == LEARNED:
                continue
            doc_id = str(payload.get("doc_id"))
            row = docs.setdefault(
                doc_id,
                {
                    "doc_id": doc_id,
                    "source": payload.get("source"),
                    "title": payload.get("title"),
                    "type": payload.get("doc_type"),
                    "record": payload.get("record"),
                    "chunks": 0,
                    "doc_sha256": payload.get("doc_sha256"),
                    "version": payload.get("version"),
                    "uploaded": str(payload.get("source", "")).startswith(uploads + os.sep),
                },
            )
            row["chunks"] += 1
            v = payload.get("version")
            if isinstance(v, int) and (row["version"] is None or v > row["version"]):
                row["version"] = v
        return sorted(docs.values(), key=lambda r: (str(r["source"]), str(r["record"] or "")))

    def upload(
        self,
        name: str,
        filename: str,
        data: bytes,
        *,
        tenant: str | None = None,
        actor: str = "api",
    ) -> SyncOutcome:
        """Store ``data`` as ``uploads/<kb>/<filename>`` and sync just that document.

        Uploading the same name again replaces the document (only changed chunks are
        re-embedded). A file that fails to parse is reported in ``errors`` and nothing is
        stored for it; a replaced document whose new version fails keeps its old chunks.
        """
        kb = self._kb(name, tenant)
        clean = upload_name(filename)
        if not data:
            raise BadRequest(f"{clean}: the file is empty", param="file")
        if len(data) > MAX_UPLOAD_BYTES:
            raise BadRequest(
                f"{clean}: {len(data)} bytes is over the {MAX_UPLOAD_BYTES >> 20} MiB limit",
                param="file",
            )
        started = time.perf_counter()
        shown = self._public(kb)
        with kb.lock, public_errors(shown):
            folder = self._uploads(name)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / clean
            # Hidden (so never a source) but with the real suffix, so it parses alike;
            # created exclusively, so nothing already there (a planted link) is written
            # through. os.replace then swaps the directory entry: a link at `target` is
            # replaced, never followed.
            tmp = folder / f".{uuid.uuid4().hex[:8]}.{clean}"
            with open(tmp, "xb") as f:
                f.write(data)
            report = ingest_paths([tmp], IngestOptions.from_spec(kb.manifest.spec))
            if report.errors and not report.chunks:
                tmp.unlink()
                reason = shown.text(report.errors[0].reason)
                raise BadRequest(f"{clean}: {reason}; nothing was stored", param="file")
            os.replace(tmp, target)
            report = ingest_paths([target], IngestOptions.from_spec(kb.manifest.spec))
            outcome = self._apply(
                kb,
                report,
                actor=actor,
                action="upload",
                progress=None,
                only_sources=[str(target)],
            )
            outcome.files = 1
        outcome.seconds = time.perf_counter() - started
        metrics.knowledge_ingested(kb.name, "upload", outcome)
        return outcome

    def delete_document(
        self, name: str, doc: str, *, tenant: str | None = None, actor: str = "api"
    ) -> SyncOutcome:
        """Delete an uploaded document (by doc_id or upload name) and its chunks.

        Only a regular file directly in the KB's upload folder is ever removed. Anything
        else ``doc`` may name — a path with ``..`` or separators, an absolute path, a
        symlink, another KB's upload — is the same ``NotFound`` as an unknown document,
        decided without looking at anything outside the folder.
        Documents of the manifest's own sources are refused (``Conflict``): the next sync
        would bring them back; remove them from the source folder instead.
        """
        kb = self._kb(name, tenant)
        shown = self._public(kb)
        # One message for every refusal, whatever `doc` is: it tells nothing about disk.
        unknown = NotFound(
            f"knowledge base {name!r} has no document by that doc_id or upload name",
            param="doc",
        )
        with kb.lock, public_errors(shown):
            folder = self._uploads(name)
            # Plain string comparisons: the listed doc_id or source, never a path.
            rows = [
                r
                for r in self._rows(kb)
                if isinstance(doc, str) and doc in (r["doc_id"], shown.path(str(r["source"])))
            ]
            rows.sort(key=lambda r: not r["uploaded"])
            if rows and not rows[0]["uploaded"]:
                raise Conflict(
                    f"document {doc!r} comes from the manifest's sources "
                    f"({shown.path(str(rows[0]['source']))}); remove it there and sync, "
                    "or change spec.sources"
                )
            if rows:
                file_name = Path(str(rows[0]["source"])).name
                if str(folder / file_name) != rows[0]["source"]:
                    raise unknown
            elif is_upload_name(doc):
                file_name = doc  # a file left without chunks (an upload that crashed)
            else:
                raise unknown
            on_disk = upload_file(folder, file_name)
            if on_disk == "other" or (on_disk == "missing" and not rows):
                raise unknown
            source = folder / file_name
            if on_disk == "file":
                source.unlink()
            outcome = self._apply(
                kb,
                IngestReport(),
                actor=actor,
                action="delete-document",
                progress=None,
                only_sources=[str(source)],
            )
        return outcome
