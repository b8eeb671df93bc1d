"""Render the manufacturing demo's photographed-document stand-ins (run by a developer).

    python deploy/domains/manufacturing/samples/render.py

Writes ``nameplate.png`` (the nameplate of the jaw crusher CR-101: model, serial, rated
power) and ``fault_panel.png`` (the fault-code panel of the cone crusher CR-102) next to
this file. Needs Pillow and a CJK font (Debian: ``fonts-wqy-zenhei``); the PNGs are
committed, so users need neither. Everything on them is fictional (清源重工 does not exist).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
HERE = Path(__file__).resolve().parent

NAMEPLATE = [
    ("清源重工  QINGYUAN HEAVY INDUSTRY", 30),
    ("颚式破碎机  JAW CRUSHER", 28),
    ("Model  QJC-1100", 26),
    ("Serial No.  QY-JC-2019-0417", 26),
    ("Rated power  160 kW    10000 V  50 Hz", 26),
    ("Feed opening 1100 x 850 mm   Mass 48 t", 24),
    ("Made in 2019-04   Qingyuan, China", 24),
]

PANEL = [
    ("CR-102  圆锥破碎机  CONE CRUSHER", 28),
    ("FAULT  E-418", 40),
    ("Setting drift: hydraulic pressure low", 26),
    ("Tramp release accumulator 5.8 MPa", 26),
    ("Serial QY-CC-2020-0088   Line 1", 24),
    ("2024-11-03 14:27   ACK: press RESET", 24),
]


def render(lines: list[tuple[str, int]], out: Path, *, dark: bool) -> None:
    """Black text on a brushed-steel plate, or amber text on a dark panel."""
    width, pad = 760, 28
    fonts = [ImageFont.truetype(str(FONT), size) for _, size in lines]
    height = pad * 2 + sum(int(size * 1.5) for _, size in lines)
    bg, fg, edge = (
        ((24, 28, 32), (255, 196, 64), (90, 90, 90))
        if dark
        else (
            (214, 218, 222),
            (20, 20, 24),
            (120, 124, 128),
        )
    )
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle([6, 6, width - 7, height - 7], outline=edge, width=4)
    y = pad
    for (text, size), font in zip(lines, fonts, strict=True):
        draw.text((pad + 8, y), text, font=font, fill=fg)
        y += int(size * 1.5)
    img.save(out, optimize=True)


def main() -> int:
    if not FONT.exists():
        print(f"missing font {FONT} (apt-get install fonts-wqy-zenhei)", file=sys.stderr)
        return 1
    render(NAMEPLATE, HERE / "nameplate.png", dark=False)
    render(PANEL, HERE / "fault_panel.png", dark=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
