"""Render the photographed lab-report stand-in (``lab_report.png``) of the healthcare demo.

A developer runs it after changing the report; the PNG is committed so users need no font.
Needs Pillow and the WenQuanYi Zen Hei font (Debian: ``apt-get install fonts-wqy-zenhei``).

    python deploy/domains/healthcare/samples/render.py

The report is fictional (清源市第一人民医院, a made-up patient). It lists results without
reference ranges, as a cropped photo often does: the desk looks the ranges up in
``data/lab_reference.csv``. Out of range on purpose: ALT 86 U/L (high, 7-40) and
HGB 102 g/L (low, 115-175); the rest are inside their ranges.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
HERE = Path(__file__).resolve().parent

TITLE = "清源市第一人民医院  检验报告单"
HEADER = ["姓名：张某某", "性别：男", "年龄：52岁", "科别：内科门诊", "样本：静脉血"]
#: (code, name, result, unit): what the photo shows, row by row.
ROWS = [
    ("WBC", "白细胞计数", "6.2", "10^9/L"),
    ("HGB", "血红蛋白", "102", "g/L"),
    ("PLT", "血小板计数", "210", "10^9/L"),
    ("ALT", "谷丙转氨酶", "86", "U/L"),
    ("AST", "谷草转氨酶", "32", "U/L"),
    ("CREA", "肌酐", "78", "umol/L"),
    ("GLU", "空腹血糖", "5.4", "mmol/L"),
    ("K", "钾", "4.1", "mmol/L"),
]
FOOTER = "报告日期：2026-11-20    检验者：李某    审核者：王某"


def render(out: Path) -> Path:
    """Draw the report into ``out`` (grayscale PNG) and return it."""
    if not FONT.is_file():
        sys.exit(f"{FONT}: font not found (apt-get install fonts-wqy-zenhei)")
    big, font = ImageFont.truetype(str(FONT), 34), ImageFont.truetype(str(FONT), 26)
    img = Image.new("L", (900, 640), 255)
    d = ImageDraw.Draw(img)
    d.text((190, 28), TITLE, font=big, fill=0)
    d.text((40, 96), "    ".join(HEADER[:3]), font=font, fill=0)
    d.text((40, 134), "    ".join(HEADER[3:]), font=font, fill=0)
    d.line((30, 178, 870, 178), fill=0, width=2)
    cols = (50, 200, 470, 640)
    for x, head in zip(cols, ("代码", "项目", "结果", "单位"), strict=True):
        d.text((x, 190), head, font=font, fill=0)
    d.line((30, 228, 870, 228), fill=0, width=1)
    for i, row in enumerate(ROWS):
        y = 242 + i * 40
        for x, cell in zip(cols, row, strict=True):
            d.text((x, y), cell, font=font, fill=0)
    d.line((30, 570, 870, 570), fill=0, width=2)
    d.text((40, 586), FOOTER, font=font, fill=0)
    img.save(out, optimize=True)
    return out


if __name__ == "__main__":
    path = render(HERE / "lab_report.png")
    print(f"{path} ({path.stat().st_size} bytes)")
