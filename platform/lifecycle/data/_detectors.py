"""The built-in PII detectors of :mod:`~qingliang.platform.lifecycle.data.pii` (helpers of
``pii``): their patterns, checks (identity-number check character, Luhn), finders and
masks, and the width normalisation they see the text through. What each one matches, and
why, is described in ``pii``'s docstring.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

logger = logging.getLogger(__name__)

# The full-width characters a finding can hold (digits, letters, @ + - .), one for one.
# Only these: full-width punctuation such as "，" is in nearly every Chinese text, and
# mapping all of it would cost more than the whole scan. (The ideographic space U+3000 is
# accepted as a separator by the number patterns themselves.)
_FULL_WIDTH_CHARS: Final = "".join(
    chr(ord(c) + 0xFEE0) for c in "+-.@" + string.digits + string.ascii_letters
)
WIDTH_TABLE: Final = {ord(c): ord(c) - 0xFEE0 for c in _FULL_WIDTH_CHARS}
FULL_WIDTH_RE = re.compile(f"[{re.escape(_FULL_WIDTH_CHARS)}]")
# Stretches where a number may be: a digit and 10+ more digits or separators (spaces,
# dashes, dots, brackets). Every digit detector needs 11 characters at least, so the rest
# of the text is never looked at.
_DIGIT_RUN_RE = re.compile(r"[0-9][0-9 .()（）\-\u3000]{10,}")
# Characters a number may start with, just before its first digit.
_NUMBER_OPENERS: Final = "+(（"
_SEP = r"[ \-\u3000]"

_PHONE_RE = re.compile(
    r"(?<![0-9])"
    r"(?:(?:\+|00)?86[ \-\u3000]?)?"
    r"1[3-9][0-9](?:[0-9]{8}|[ \-\u3000][0-9]{4}[ \-\u3000][0-9]{4}|\.[0-9]{4}\.[0-9]{4})"
    r"(?![0-9])"
)
_MMDD = r"(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
_ID_RE = re.compile(
    r"(?<![0-9])"
    r"[1-8][0-9]{5}"  # region code
    r"(?:"
    rf"(?P<s>{_SEP}?)(?:19|20)[0-9]{{2}}{_MMDD}(?P=s)"  # birth date: 6-8-4 or contiguous
    rf"|(?P<t>{_SEP})(?:19|20)[0-9]{{2}}(?P=t){_MMDD}(?P=t)"  # 6-4-4-4
    r")"
    r"[0-9]{3}[0-9Xx]"  # sequence, check character
    r"(?![0-9])"
)
# The 15-digit number of before 1999: region, YYMMDD (1900s), sequence; contiguous or 6-6-3.
_OLD_ID_RE = re.compile(
    rf"(?<![0-9])[1-8][0-9]{{5}}(?P<s>{_SEP}?)[0-9]{{2}}{_MMDD}(?P=s)[0-9]{{3}}(?![0-9])"
)
_PROVINCES: Final = frozenset(
    str(n)
    for n in (*range(11, 16), *range(21, 24), *range(31, 38), *range(41, 47), *range(50, 55))
    + (*range(61, 66), 71, 81, 82)
)
_AREA = r"(?:10|2[0-9]|[3-9][0-9]{2})"  # without its leading 0
_LANDLINE_RE = re.compile(
    r"(?<![0-9])(?:"
    rf"[(（]0{_AREA}[)）][ \u3000]?"  # (0591) 8765 4321
    rf"|0{_AREA}{_SEP}"  # 010-12345678
    rf"|(?:\+|00)86{_SEP}?{_AREA}{_SEP}"  # +86 10 12345678
    r")"
    rf"[1-9][0-9]{{2,3}}(?:[0-9]{{4}}|{_SEP}[0-9]{{4}})"  # local number: 7-8 digits
    r"(?:-[0-9]{1,5})?"  # extension
    r"(?![0-9])"
)
_ID_SEPARATORS_RE = re.compile(_SEP)
_CARD_RE = re.compile(
    r"(?<![0-9])(?:"
    r"[0-9]{13,19}"
    r"|[0-9]{4}[ \-\u3000][0-9]{6}[ \-\u3000][0-9]{5}"  # 15 digits as 4-6-5 (Amex)
    # 4-4-4, 4-4-4-4, then maybe a short group: 4-4-4-1..3, 4-4-4-4-1..3
    r"|[0-9]{4}(?:[ \-\u3000][0-9]{4}){2}(?:[ \-\u3000][0-9]{4})?"
    r"(?:[ \-\u3000][0-9]{1,3})?"
    r")(?![0-9])"
)
_CARD_SEPARATORS_RE = re.compile(r"[ \-\u3000]")
_CARD_FIRST_DIGITS: Final = frozenset("234569")

# IDN top-level domains in scripts written without spaces: Chinese or Japanese text may
# follow the address directly, so only these known names are taken (none is a prefix of
# another, so their order does not matter).
_CJK_TLDS: Final = (
    "中国|中國|香港|台湾|台灣|澳门|澳門|新加坡|公司|网络|網絡|在线|中文网|网址|网店|网站"
    "|商城|商店|商标|集团|手机|游戏|企业|信息|我爱你|世界|政务|公益|八卦|时尚|微博|移动"
    "|联通|佛山|广东|慈善|娱乐|购物|健康|한국|삼성|닷컴|닷넷|コム|みんな"
)
_EMAIL_LOCAL_CHARS: Final = frozenset(string.ascii_letters + string.digits + "_%+-.")
_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9_%+\-.])"  # the same set as _EMAIL_LOCAL_CHARS
    r"[A-Za-z0-9_%+\-]+(?:\.[A-Za-z0-9_%+\-]+)*"  # local part, ASCII only
    r"@(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+"  # domain labels, any script
    r"(?:"
    r"xn--[A-Za-z0-9\-]{1,59}(?![A-Za-z0-9\-])"
    r"|[A-Za-z]{2,63}(?![A-Za-z0-9\-])"
    r"|" + _CJK_TLDS + r"|"
    # Letters of other scripts (Cyrillic рф, Greek ελ, Thai ไทย …), not ASCII or CJK.
    r"[^\W\d_A-Za-z\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff00-\uffef"
    r"\U00020000-\U0003ffff]{2,63}(?![^\W_])"
    r")"
)

_ID_WEIGHTS: Final = tuple(2 ** (17 - i) % 11 for i in range(17))
_ID_CHECK_CHARS: Final = "10X98765432"  # indexed by the weighted sum mod 11


def id_cn_check_char(first17: str) -> str:
    """The GB 11643-1999 check character (ISO 7064 MOD 11-2) for 17 leading digits.

    Example:
        >>> id_cn_check_char("11010519491231002")
        'X'
    """
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("an identity number's check character needs exactly 17 ASCII digits")
    total = sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK_CHARS[total % 11]


def luhn_valid(digits: str) -> bool:
    """Whether a string of ASCII digits passes the Luhn (mod 10) check.

    Example:
        >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
        (True, False)
    """
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# A detector yields (start, end, value) for each valid match in text[pos:endpos].
Find = Callable[[str, int, int], Iterator[tuple[int, int, str]]]


@dataclass(frozen=True, slots=True)
class Detector:
    kind: str
    label: str
    tag: str
    find: Find
    mask: Callable[[str], str]
    digits_only: bool = False  # runs only over the windows of digit_windows()
    on_original: bool = False  # sees the text as given, not width-normalised


def _id_value(candidate: str) -> str | None:
    """The identity number without separators, upper-cased, if ``candidate`` is a valid
    one (18 characters, or 15 digits of the old format), else None."""
    value = _ID_SEPARATORS_RE.sub("", candidate).upper()
    if len(value) == 15:
        return _old_id_value(value)
    if len(value) != 18:
        return None
    if not value.isascii() or not value[:17].isdigit() or value[0] not in "12345678":
        return None
    if id_cn_check_char(value[:17]) != value[17]:
        return None
    try:
        born = dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:  # 19490230 and the like
        return None
    if born.year < 1900 or born > dt.date.today():
        return None
    return value


def _old_id_value(value: str) -> str | None:
    if not value.isascii() or not value.isdigit() or value[:2] not in _PROVINCES:
        return None
    try:
        dt.date(1900 + int(value[6:8]), int(value[8:10]), int(value[10:12]))
    except ValueError:
        return None
    return value


def digit_windows(text: str) -> list[tuple[int, int]]:
    """(pos, endpos) around every run that may hold a number.

    The window starts one character early at a ``+`` (``+86``) or an opening bracket
    (``(0591)``) and ends two characters late: a final ``X`` of an identity number, and
    the character after it, which the detectors' ``(?![0-9])`` must see. No match can lie
    in that tail alone (all need 11 characters), so windows never report one finding
    twice.
    """
    n = len(text)
    windows = []
    for m in _DIGIT_RUN_RE.finditer(text):
        pos, end = m.span()
        if pos and text[pos - 1] in _NUMBER_OPENERS:
            pos -= 1
        windows.append((pos, min(n, end + 2)))
    return windows


def _find_id(text: str, pos: int, endpos: int) -> Iterator[tuple[int, int, str]]:
    for regex in (_ID_RE, _OLD_ID_RE):
        for m in regex.finditer(text, pos, endpos):
            value = _id_value(m.group())
            if value is not None:
                yield m.start(), m.end(), value


def _find_phone(text: str, pos: int, endpos: int) -> Iterator[tuple[int, int, str]]:
    for m in _PHONE_RE.finditer(text, pos, endpos):
        digits = "".join(c for c in m.group() if c.isdigit())
        yield m.start(), m.end(), digits[-11:]


def _find_landline(text: str, pos: int, endpos: int) -> Iterator[tuple[int, int, str]]:
    for m in _LANDLINE_RE.finditer(text, pos, endpos):
        raw = m.group()
        digits = "".join(c for c in raw if c.isdigit())
        # +86 10 … and 0086 10 … are 010 …: one value, one hash token.
        if raw[0] == "+":
            digits = "0" + digits[2:]
        elif raw.startswith("0086"):
            digits = "0" + digits[4:]
        yield m.start(), m.end(), digits


def _mask_landline(value: str) -> str:
    # Keep the area code (010, 02x: three digits; the others four) and the last two.
    return _keep(value, 3 if value[1] in "12" else 4, 2)


def _card_value(digits: str) -> str | None:
    if 13 <= len(digits) <= 19 and digits[0] in _CARD_FIRST_DIGITS and luhn_valid(digits):
        return digits
    return None


def _find_card(text: str, pos: int, endpos: int) -> Iterator[tuple[int, int, str]]:
    for m in _CARD_RE.finditer(text, pos, endpos):
        start, end, raw = m.start(), m.end(), m.group()
        groups = _CARD_SEPARATORS_RE.split(raw)
        if len(groups) == 1:
            # A valid identity number is not a card, whether or not id_cn is enabled
            # (with a final X the card pattern stops one character short of it).
            # A phone number never gets here: 11 digits, or 13+ starting with 8 or 0.
            if (
                len(raw) == 18 or (len(raw) == 17 and text[end : end + 1] in ("X", "x"))
            ) and _id_value(text[start : start + 18]) is not None:
                continue
            value = _card_value(raw)
        else:
            value = _card_value("".join(groups))
            if value is None and len(groups) == 5:
                # 4-4-4-4 followed by an unrelated short number: try the card alone.
                value = _card_value("".join(groups[:4]))
                end = start + len(raw) - len(groups[4]) - 1
        if value is not None:
            yield start, end, value


def _find_email(text: str, pos: int, endpos: int) -> Iterator[tuple[int, int, str]]:
    # Anchored at each "@": walk back over the local part's characters and match once
    # there, instead of trying the pattern at every position of the text (5-10x faster).
    # A walk stops at the previous "@", so all walks together cover the text once.
    at = text.find("@", pos, endpos)
    while at != -1:
        start = at
        while start > pos and text[start - 1] in _EMAIL_LOCAL_CHARS:
            start -= 1
        m = _EMAIL_RE.match(text, start, endpos)
        if m is not None and m.end() > at:
            yield m.start(), m.end(), m.group().lower()
            at = text.find("@", m.end(), endpos)
        else:
            at = text.find("@", at + 1, endpos)


def pattern_finder(compiled: re.Pattern[str]) -> Find:
    def find(text: str, pos: int, endpos: int) -> Iterator[tuple[int, int, str]]:
        for m in compiled.finditer(text, pos, endpos):
            if m.end() > m.start():
                yield m.start(), m.end(), m.group()

    return find


def _keep(value: str, head: int, tail: int) -> str:
    return value[:head] + "*" * (len(value) - head - tail) + value[len(value) - tail :]


def _mask_email(value: str) -> str:
    local, _, domain = value.rpartition("@")
    return f"{local[:1]}***@{domain}"


def mask_generic(value: str) -> str:
    n = len(value)
    keep = 0 if n <= 4 else 1 if n <= 8 else 2
    return _keep(value, keep, keep)


BUILTINS: Final[dict[str, Detector]] = {
    d.kind: d
    for d in (
        Detector("id_cn", "ID", "[ID]", _find_id, lambda v: _keep(v, 3, 4), digits_only=True),
        Detector(
            "phone_cn", "PHONE", "[PHONE]", _find_phone, lambda v: _keep(v, 3, 4), digits_only=True
        ),
        Detector(
            "landline_cn", "PHONE", "[PHONE]", _find_landline, _mask_landline, digits_only=True
        ),
        Detector(
            "bank_card",
            "BANK_CARD",
            "[BANK_CARD]",
            _find_card,
            lambda v: _keep(v, 4, 4),
            digits_only=True,
        ),
        Detector("email", "EMAIL", "[EMAIL]", _find_email, _mask_email),
    )
}
