"""Render the gov demo's photographed-document stand-ins (PNG, committed next to this file).

The residence-permit application form of the fictional city 清源市, filled in for a
fictional applicant, drawn slightly rotated on a grey background like a phone photo.
Run by a developer after changing the form (needs Debian `fonts-wqy-zenhei`):

    .venv/bin/python deploy/domains/gov/samples/render.py

Every value here is invented; the ID number's check digit is deliberately wrong, so it
cannot be a real person's.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent
FONT = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")

#: The form's rows: (label, value). The labels match the residence_permit form's fields.
FORM = [
    ("姓名", "林晓雨"),
    ("身份证号", "330102199203154528"),
    ("手机号", "13957112345"),
    ("居住区", "青石区"),
    ("居住地址", "青石区建设路88号3幢502室"),
    ("入住日期", "2025-03-01"),
    ("申领依据", "合法稳定就业"),
]


def residence_permit_form() -> Image.Image:
    """The filled form, as a slightly tilted, softly blurred photo (grey, small file)."""
    title_font = ImageFont.truetype(str(FONT), 34)
    font = ImageFont.truetype(str(FONT), 26)
    page = Image.new("L", (760, 600), 255)
    draw = ImageDraw.Draw(page)
    draw.text((120, 30), "清源市居住证申领登记表", font=title_font, fill=0)
    y = 110
    for label, value in FORM:
        draw.rectangle((40, y - 10, 720, y + 45), outline=90, width=2)
        draw.line((230, y - 10, 230, y + 45), fill=90, width=2)
        draw.text((55, y), label, font=font, fill=0)
        draw.text((250, y), value, font=font, fill=20)
        y += 55
    draw.text((55, y + 20), "申请人签名：林晓雨      受理单位：清源市公安局", font=font, fill=0)
    photo = Image.new("L", (840, 690), 200)
    photo.paste(page.rotate(1.2, expand=True, fillcolor=200), (30, 30))
    return photo.filter(ImageFilter.GaussianBlur(0.6))


def main() -> None:
    out = HERE / "residence_permit_form.png"
    residence_permit_form().save(out, optimize=True)
    print(f"{out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
