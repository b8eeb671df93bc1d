"""ClipImageEmbedder on a tiny random CLIP saved here (no CLIP weights ship in any package).

The model is random, so these tests check the plumbing a user relies on — loading from a
folder, shapes, unit length, paths and bytes alike, batching, errors — not what it finds.
"""

from __future__ import annotations

import doctest
import io
import math
import threading
from pathlib import Path

import pytest

from qingliang.knowledge import image_embedding as mod
from qingliang.knowledge.image_embedding import ClipImageEmbedder, ImageEmbedder
from qingliang.platform.errors import BadRequest, ModelSourceError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

PROJECTION = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIPModel of ~10k parameters with a character-level tokenizer and a 32-px
    image processor, saved as a real one would be."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as Processor

    folder = tmp_path_factory.mktemp("tiny-clip")
    vocab = {"<|pad|>": 0, "<|unk|>": 1, "<|startoftext|>": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789 ":
        vocab[ch] = len(vocab)
    eos = vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", eos)],
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        model_max_length=16,
    ).save_pretrained(folder)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": 2,
            "eos_token_id": eos,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=PROJECTION,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    Processor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> ClipImageEmbedder:
    return ClipImageEmbedder(model_dir, batch_size=2)


def png(color: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_constructor_reads_nothing(tmp_path: Path) -> None:
    embedder = ClipImageEmbedder(tmp_path / "not-there")
    assert embedder.model_id == "clip:not-there"
    with pytest.raises(ModelSourceError, match="no config.json in"):
        embedder.embed_text(["a cat"])
    with pytest.raises(ModelSourceError, match="no config.json in"):
        _ = embedder.dimensions


def test_incomplete_folder_is_a_model_source_error(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    with pytest.raises(ModelSourceError, match="cannot be loaded"):
        ClipImageEmbedder(tmp_path).embed_text(["a cat"])


def test_images_and_texts_share_one_unit_length_space(
    embedder: ClipImageEmbedder, tmp_path: Path
) -> None:
    assert isinstance(embedder, ImageEmbedder)
    assert embedder.dimensions == PROJECTION
    red = tmp_path / "red.png"
    red.write_bytes(png("red"))
    images = embedder.embed_images([red, png("red"), png("blue", (64, 20)), str(red)])
    assert len(images) == 4 and all(len(v) == PROJECTION for v in images)
    assert all(abs(norm(v) - 1) < 1e-5 for v in images)
    assert images[0] == pytest.approx(images[1], abs=1e-6)  # a path and its bytes agree
    assert images[0] == pytest.approx(images[3], abs=1e-6)  # across batches too
    assert images[0] != pytest.approx(images[2], abs=1e-3)
    texts = embedder.embed_text(["a red square", "a blue stripe", "x" * 500])  # long: cut
    assert len(texts) == 3 and all(abs(norm(v) - 1) < 1e-5 for v in texts)
    assert embedder.embed_text(["a red square"])[0] == pytest.approx(texts[0], abs=1e-6)


def test_bad_inputs_name_the_item(embedder: ClipImageEmbedder, tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="images must not be empty"):
        embedder.embed_images([])
    with pytest.raises(BadRequest, match=r"images\[1\]: not an image Pillow can read"):
        embedder.embed_images([png("red"), b"not an image"])
    with pytest.raises(BadRequest, match=r"images\[0\]: cannot read .*missing.png"):
        embedder.embed_images([tmp_path / "missing.png"])
    with pytest.raises(BadRequest, match=r"images\[0\] must be a path or bytes, not int"):
        embedder.embed_images([3])  # type: ignore[list-item]
    with pytest.raises(BadRequest, match=r"texts\[1\] must be a non-empty string"):
        embedder.embed_text(["fine", "  "])
    with pytest.raises(BadRequest, match="texts must be a list"):
        embedder.embed_text("a cat")  # type: ignore[arg-type]


def test_concurrent_calls_agree(embedder: ClipImageEmbedder) -> None:
    expected = embedder.embed_images([png("green")])[0]
    results: list[list[float]] = []

    def work() -> None:
        results.append(embedder.embed_images([png("green")])[0])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert all(r == pytest.approx(expected, abs=1e-6) for r in results)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(mod)
    assert result.failed == 0 and result.attempted > 0
