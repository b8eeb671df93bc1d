"""Image embeddings for ``image`` chunks and text-to-image search: a narrow protocol and
a CLIP implementation loaded from a local folder.

An :class:`ImageEmbedder` puts images and texts into one vector space (L2-normalised, so
the dot product is the cosine): ``embed_images`` for what is stored, ``embed_text`` for
the query that searches it. :class:`ClipImageEmbedder` runs a transformers ``CLIPModel``
saved in a folder (``config.json``, weights, tokenizer files and the image processor's
``preprocessor_config.json``), e.g. ``openai/clip-vit-base-patch32`` or a Chinese CLIP
fine-tune exported the same way. Nothing is downloaded and the constructor reads nothing:
the model loads on first use (``torch`` and ``transformers`` are imported then too).

Example:
    >>> from qingliang.knowledge.image_embedding import ClipImageEmbedder
    >>> embedder = ClipImageEmbedder("models/clip-vit-b32")  # reads nothing yet
    >>> embedder.model_id
    'clip:clip-vit-b32'

    With the folder in place, ``embedder.dimensions`` (from ``config.json``) sizes the
    collection, ``embedder.embed_images(["scan.png"])`` embeds what is stored and
    ``embedder.embed_text(["a red stamp"])`` the query.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from qingliang.platform.errors import BadRequest, ModelSourceError

logger = logging.getLogger(__name__)

#: What ``embed_images`` accepts per image: a file path, or the file's bytes.
ImageInput = str | os.PathLike[str] | bytes


@runtime_checkable
class ImageEmbedder(Protocol):
    """Images and texts into one L2-normalised vector space."""

    @property
    def model_id(self) -> str:
        """Stable name of the model, stored with the vectors it made."""
        ...

    @property
    def dimensions(self) -> int:
        """Length of every vector."""
        ...

    def embed_images(self, images: Sequence[ImageInput]) -> list[list[float]]:
        """One vector per image (a path or the file's bytes), in order."""
        ...

    def embed_text(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, comparable with :meth:`embed_images` vectors."""
        ...


class ClipImageEmbedder:
    """A transformers CLIP model from a local folder, loaded on first use.

    Thread-safe: loading happens once; forward passes are serialised.

    Args:
        model_dir: Folder with the saved ``CLIPModel``, its tokenizer and its image
            processor (``spec.embedding.image.model_dir`` of a knowledge base).
        batch_size: Images or texts per forward pass.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self._dir = Path(model_dir)
        self._batch_size = batch_size
        self._parts: tuple[Any, Any, Any] | None = None
        self._dimensions: int | None = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """``clip:<folder name>``."""
        return f"clip:{self._dir.name}"

    @property
    def dimensions(self) -> int:
        """The model's projection size, read from its ``config.json`` (the model itself
        is not loaded)."""
        if self._dimensions is None:
            try:
                config = json.loads((self._dir / "config.json").read_text(encoding="utf-8"))
                self._dimensions = int(config["projection_dim"])
            except FileNotFoundError:
                raise ModelSourceError(self._missing()) from None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelSourceError(
                    f"image embedding model: unreadable config.json in {self._dir}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
        return self._dimensions

    def embed_images(self, images: Sequence[ImageInput]) -> list[list[float]]:
        """Embed images given as file paths or file bytes.

        Raises:
            BadRequest: ``images`` is empty or not a list, or an item is not a path or
                bytes, or cannot be read as an image (the message names its index).
            ModelSourceError: the model folder is missing or incomplete.
        """
        pictures = [_open(i, item) for i, item in enumerate(_items(images, "images"))]
        model, _, processor = self._load()
        import torch

        out: list[list[float]] = []
        for start in range(0, len(pictures), self._batch_size):
            batch = pictures[start : start + self._batch_size]
            inputs = processor(images=batch, return_tensors="pt")
            with self._run_lock, torch.inference_mode():
                features = model.get_image_features(pixel_values=inputs["pixel_values"])
            out += _normalised(features)
        return out

    def embed_text(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed search texts for text-to-image retrieval (truncated to the model's
        context, 77 tokens for OpenAI CLIP).

        Raises:
            BadRequest: ``texts`` is empty or not a list, or an item is not a non-empty
                string (the message names its index).
            ModelSourceError: the model folder is missing or incomplete.
        """
        items = _items(texts, "texts")
        for i, text in enumerate(items):
            if not isinstance(text, str) or not text.strip():
                raise BadRequest(f"texts[{i}] must be a non-empty string", param=f"texts[{i}]")
        model, tokenizer, _ = self._load()
        import torch

        max_length = int(model.config.text_config.max_position_embeddings)
        out: list[list[float]] = []
        for start in range(0, len(items), self._batch_size):
            batch = list(items[start : start + self._batch_size])
            enc = tokenizer(
                batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            with self._run_lock, torch.inference_mode():
                features = model.get_text_features(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                )
            out += _normalised(features)
        return out

    def _load(self) -> tuple[Any, Any, Any]:
        if self._parts is not None:
            return self._parts
        with self._load_lock:
            if self._parts is None:
                if not (self._dir / "config.json").is_file():
                    raise ModelSourceError(self._missing())
                from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

                try:
                    model = CLIPModel.from_pretrained(self._dir, local_files_only=True)
                    tokenizer = AutoTokenizer.from_pretrained(self._dir, local_files_only=True)
                    processor = AutoImageProcessor.from_pretrained(self._dir, local_files_only=True)
                except (OSError, ValueError, KeyError) as exc:
                    raise ModelSourceError(
                        f"image embedding model in {self._dir} cannot be loaded: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                model.eval()
                self._parts = (model, tokenizer, processor)
                logger.debug(
                    "loaded CLIP from %s (%d dimensions)", self._dir, model.config.projection_dim
                )
        return self._parts

    def _missing(self) -> str:
        return (
            f"image embedding model: no config.json in {self._dir} (save a CLIPModel there "
            "with save_pretrained, with its tokenizer and image processor)"
        )


def _items(value: object, name: str) -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise BadRequest(f"{name} must be a list", param=name)
    if not value:
        raise BadRequest(f"{name} must not be empty", param=name)
    return value


def _open(index: int, item: object) -> Any:
    """A Pillow RGB image (EXIF orientation applied, transparency on white)."""
    from qingliang.knowledge.ingest.errors import DocumentError
    from qingliang.knowledge.ingest.images import load_frames

    if isinstance(item, bytes):
        data = item
    elif isinstance(item, str | os.PathLike):
        try:
            data = Path(item).read_bytes()
        except OSError as exc:
            raise BadRequest(
                f"images[{index}]: cannot read {item}: {exc.strerror or exc}",
                param=f"images[{index}]",
            ) from None
    else:
        raise BadRequest(
            f"images[{index}] must be a path or bytes, not {type(item).__name__}",
            param=f"images[{index}]",
        )
    try:
        return load_frames(data)[0]
    except DocumentError as exc:
        raise BadRequest(f"images[{index}]: {exc.reason}", param=f"images[{index}]") from None


def _normalised(features: Any) -> list[list[float]]:
    # transformers 5 returns a model output whose pooler_output holds the projected
    # features; 4.x returned the tensor itself.
    tensor = features if hasattr(features, "norm") else features.pooler_output
    tensor = tensor.float()
    tensor = tensor / tensor.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return tensor.tolist()
