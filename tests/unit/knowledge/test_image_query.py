"""Knowledge search with an image as the query.

A photo of a nameplate or a form searches by the text OCR reads in it (the packaged OCR
models, for real); with ``kinds: [image]`` and an image embedder, by its own vector among
the KB's images. Hits from images cite the image and the region the text was found in.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.errors import BadRequest
from tests.unit.knowledge.test_knowledge_service import BigramEmbedder, _build_clip, _manifest


def picture(lines: tuple[str, ...], size: tuple[int, int] = (820, 220)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(image)
    for row, text in enumerate(lines):
        pen.text((30, 30 + 80 * row), text, fill="black", font=ImageFont.load_default(size=40))
    return image


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def svc(tmp_path: Path) -> KnowledgeService:
    s = KnowledgeService(tmp_path / "home", embedder_factory=lambda _m: BigramEmbedder())
    yield s
    s.close()


@pytest.fixture
def plant(tmp_path: Path, svc: KnowledgeService) -> KnowledgeService:
    folder = tmp_path / "plant"
    folder.mkdir()
    (folder / "pumps.md").write_text(
        "# Pumps\n\nPump P-101 bearing overheating: replace the bearing, check lubrication.\n",
        encoding="utf-8",
    )
    (folder / "conveyor.md").write_text(
        "# Conveyors\n\nBelt C-7 slipping: tension the belt and clean the drum.\n",
        encoding="utf-8",
    )
    picture(("MOTOR M-330", "400 V 15 kW")).save(folder / "motor-plate.png")
    svc.register(_manifest("plant", folder, chunking={"max_chars": 200}), base=folder)
    svc.sync("plant")
    return svc


def test_a_photo_searches_by_the_text_read_in_it(plant: KnowledgeService) -> None:
    out = plant.search("plant", None, tenant="city-a", image=data_url(picture(("PUMP P-101",))))
    assert out["image_query"]["mode"] == "ocr"
    assert "P-101" in out["image_query"]["ocr_text"]
    assert out["image_query"]["image"].startswith("[image image/png 820x220 sha256:")
    assert out["citations"][0]["source"].endswith("pumps.md")


def test_text_and_a_photo_search_together(plant: KnowledgeService) -> None:
    out = plant.search("plant", "belt slipping", tenant="city-a", image=data_url(picture(("C-7",))))
    assert out["citations"][0]["source"].endswith("conveyor.md")


def test_a_hit_from_an_image_cites_the_image_and_the_region(plant: KnowledgeService) -> None:
    photo = data_url(picture(("MOTOR M-330",), (600, 160)))
    hits = plant.search("plant", None, tenant="city-a", image=photo)["citations"]
    top = hits[0]
    assert top["kind"] == "image-ocr" and top["image_path"].endswith("motor-plate.png")
    x0, y0, x1, y1 = top["region"]
    assert 0 <= x0 < x1 <= 820 and 0 <= y0 < y1 <= 220
    assert "M-330" in top["text"]


@pytest.mark.parametrize(
    ("image", "says"),
    [
        ("https://example.com/plate.png", "not fetched from the network"),
        ("data:image/png;base64,AAAA", "not an image that can be read"),
        (12, "image must be a data URL"),
    ],
)
def test_a_bad_image_is_a_400_naming_it(plant: KnowledgeService, image: object, says: str) -> None:
    with pytest.raises(BadRequest, match=says) as err:
        plant.search("plant", None, tenant="city-a", image=image)  # type: ignore[arg-type]
    assert err.value.param == "image"


def test_a_photo_without_text_and_no_query(plant: KnowledgeService) -> None:
    blank = data_url(Image.new("RGB", (200, 100), "white"))
    with pytest.raises(BadRequest, match="OCR found no text in the image") as err:
        plant.search("plant", None, tenant="city-a", image=blank)
    assert "kinds: [image]" in err.value.message
    with pytest.raises(BadRequest, match="`query` is required"):
        plant.search("plant", None, tenant="city-a")


def test_image_vectors_find_the_same_picture(svc: KnowledgeService, tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    for colour in ("red", "blue", "green"):
        Image.new("RGB", (40, 30), colour).save(folder / f"{colour}.png")
    clip = tmp_path / "clip"
    _build_clip(clip)
    kb = _manifest(
        "pics",
        folder,
        embedding={"image": {"model_dir": str(clip)}},
        parsers={"image": {"ocr": False}},
    )
    svc.register(kb, base=folder)
    svc.sync("pics")
    for colour in ("red", "blue"):
        photo = data_url(Image.new("RGB", (40, 30), colour))
        out = svc.search("pics", None, tenant="city-a", kinds=["image"], image=photo)
        assert out["image_query"]["mode"] == "image-vector"
        assert Path(out["citations"][0]["image_path"]).name == f"{colour}.png"
        assert out["citations"][0]["score"] == pytest.approx(1.0, abs=1e-3)
