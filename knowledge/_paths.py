"""Which files a request may reach, and how host paths are shown to the caller.

Two rules of the knowledge API (issue 13) live here, for the service to apply:

- **The upload folder is the only place a request writes or deletes.** An upload is
  stored under a plain file name (:func:`upload_name`); a delete names a plain file name
  too, and only a regular file directly inside the KB's own upload folder qualifies
  (:func:`upload_file`). A symlink, a folder, ``..``, a separator, NUL or an absolute
  path never does — and is refused without looking at anything outside the folder.
- **No response names a host path.** :class:`PublicPaths` shows a document relative to the
  KB's own roots (its upload folder, its source folders, the manifest's folder) and
  rewrites the host paths inside a message the same way; what is left is ``<path>``.
  :func:`public_errors` applies it to every error a service call raises.

Example:
    >>> from pathlib import Path
    >>> shown = PublicPaths([Path("/srv/q/uploads/gov"), Path("/data/policies")], Path("/srv/q"))
    >>> shown.path("/srv/q/uploads/gov/通知.md"), shown.path("/data/policies/sub/a.md")
    ('通知.md', 'sub/a.md')
    >>> shown.text("cannot read /srv/q/snapshots/gov/v000001/meta.json or /etc/x")
    'cannot read <data>/snapshots/gov/v000001/meta.json or <path>'
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Literal

from qingliang.knowledge.ingest import Skipped, SourceFiles
from qingliang.knowledge.ingest.errors import redact_paths
from qingliang.platform.errors import ApiError, BadRequest, QingliangError

log = logging.getLogger(__name__)

#: A stored upload's name: a plain file name (no separator, NUL, leading dot or space).
UPLOAD_NAME = re.compile(r"^[\w\u3400-\u9fff][\w\u3400-\u9fff .()+-]{0,199}\Z")

_LINK = "symbolic link in the upload folder: not followed"
_OTHER = "not a regular file: not read"


def upload_name(filename: object) -> str:
    """The name an upload is stored under: the last part of ``filename``, checked.

    Raises:
        BadRequest: (``param="file"``) no usable name is left.
    """
    if not isinstance(filename, str) or not filename:
        raise BadRequest("the upload needs a file name", param="file")
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name in (".", "..") or not UPLOAD_NAME.match(name):
        raise BadRequest(
            f"file name {filename!r}: use letters, digits, spaces and . _ - ( ) +",
            param="file",
        )
    return name


def is_upload_name(doc: object) -> bool:
    """Whether ``doc`` is, exactly, a name an upload can be stored under."""
    return isinstance(doc, str) and UPLOAD_NAME.match(doc) is not None and doc == doc.strip()


def upload_file(folder: Path, name: str) -> Literal["file", "missing", "other"]:
    """What ``folder / name`` is: a regular file directly inside ``folder`` (``file``),
    nothing (``missing``), or anything else — a symlink, a folder, a FIFO (``other``).

    ``name`` must pass :func:`is_upload_name`, so the only entry looked at is one in
    ``folder``; nothing outside it is ever stat-ed.
    """
    if not is_upload_name(name):
        return "other"
    candidate = folder / name
    try:
        mode = os.lstat(candidate).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "other"
    if not stat.S_ISREG(mode):
        return "other"
    try:
        real, base = candidate.resolve(strict=True), folder.resolve(strict=True)
    except (OSError, RuntimeError):
        return "other"
    return "file" if real.is_relative_to(base) and real.parent == base else "other"


def list_uploads(folder: Path) -> SourceFiles:
    """The regular files of an upload folder (hidden ones are uploads in progress), and
    the entries skipped: a symlink is never followed, here as in source folders."""
    out = SourceFiles()
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        try:
            mode = p.lstat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode):
            out.files.append(p)
        else:
            out.skipped.append(Skipped(str(p), _LINK if stat.S_ISLNK(mode) else _OTHER))
    return out


class PublicPaths:
    """Shows host paths relative to a knowledge base's own roots.

    Args:
        roots: Folders whose files are shown by their path below the folder (the upload
            folder, each source folder, the manifest's folder); the longest match wins.
        data_dir: The data directory: what else lies in it is shown as ``<data>/...``.
    """

    def __init__(self, roots: Iterable[Path] = (), data_dir: Path | None = None) -> None:
        pairs: dict[str, str] = {}
        for root in roots:
            for form in _forms(root):
                pairs.setdefault(form, "")
        if data_dir is not None:
            for form in _forms(data_dir):
                pairs.setdefault(form, "<data>/")
        self._roots = sorted(pairs.items(), key=lambda kv: len(kv[0]), reverse=True)
        self._pattern = (
            re.compile("|".join(re.escape(r) + r"(?:/|(?![\w.-]))" for r, _ in self._roots))
            if self._roots
            else None
        )

    def path(self, raw: str) -> str:
        """A stored source path as the caller sees it; never absolute."""
        if not isinstance(raw, str) or not raw.startswith("/"):
            return raw
        for root, prefix in self._roots:
            if raw.startswith(root + "/"):
                return prefix + raw[len(root) + 1 :]
        return PurePosixPath(raw).name

    def text(self, raw: str) -> str:
        """``raw`` with host paths under a root made relative, and every other one
        ``<path>``."""
        if self._pattern is not None:
            prefixes = dict(self._roots)

            def swap(m: re.Match[str]) -> str:
                found = m.group(0)
                root = found[:-1] if found.endswith("/") else found
                prefix = prefixes.get(root, "")
                return prefix if found.endswith("/") else (prefix.rstrip("/") or ".")

            raw = self._pattern.sub(swap, raw)
        return redact_paths(raw)


def _forms(root: Path) -> list[str]:
    """``root`` as written and normalised (no disk access: a request must not stat); a
    root of ``/`` alone is left out (it would show every path)."""
    forms = {str(root), os.path.normpath(root), os.path.abspath(root)}
    return [f.rstrip("/") for f in forms if f.startswith("/") and f.rstrip("/")]


@contextmanager
def public_errors(paths: PublicPaths) -> Iterator[None]:
    """Show the errors raised inside through ``paths`` (no host path leaves), and an
    ``OSError`` as an :class:`ApiError` that says what failed."""
    try:
        yield
    except ApiError as exc:
        exc.message = paths.text(exc.message)
        exc.args = (exc.message,)
        raise
    except QingliangError as exc:
        exc.args = tuple(paths.text(a) if isinstance(a, str) else a for a in exc.args)
        raise
    except OSError as exc:
        log.debug("knowledge file operation failed", exc_info=True)
        what = f"{type(exc).__name__}: {exc.strerror or paths.text(str(exc))}"
        if exc.filename is not None:
            what += f" ({paths.path(os.fsdecode(exc.filename))})"
        raise ApiError(f"the knowledge base's files could not be read or written: {what}") from exc
