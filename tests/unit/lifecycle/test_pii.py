"""PII detection and redaction: a table of positives and negatives per detector, the three
redaction modes, overlap resolution, custom-pattern validation and repr hygiene."""

from __future__ import annotations

import datetime as dt
import doctest
import re
import time

import pytest

from qingliang.platform.lifecycle.data import pii as pii_mod
from qingliang.platform.lifecycle.data.pii import (
    BUILTIN_KINDS,
    Finding,
    PiiPattern,
    PiiScanner,
    Redaction,
    id_cn_check_char,
    luhn_valid,
)

# -- helpers written independently of the module, so the tests check it ---------------------

_W = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]


def check_char(first17: str) -> str:
    """GB 11643-1999 check character, straight from the standard's table."""
    return "10X98765432"[sum(int(c) * w for c, w in zip(first17, _W, strict=True)) % 11]


def make_id(first17: str) -> str:
    return first17 + check_char(first17)


def spaced(valid_id: str, sep: str = " ", groups: tuple[int, ...] = (6, 8, 4)) -> str:
    """An identity number written in groups: ``110101 19900307 123X``."""
    out, pos = [], 0
    for n in groups:
        out.append(valid_id[pos : pos + n])
        pos += n
    return sep.join(out)


def wrong_check(valid_id: str) -> str:
    """The same number with a different (wrong) check character."""
    alt = "1" if valid_id[-1] != "1" else "2"
    return valid_id[:-1] + alt


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def make_card(prefix: str) -> str:
    """``prefix`` plus the Luhn check digit."""
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


def bad_card(prefix: str) -> str:
    """``prefix`` plus a digit that fails the Luhn check."""
    return next(prefix + d for d in "0123456789" if not luhn_ok(prefix + d))


def full_width(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


def group(digits: str, sep: str = " ") -> str:
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


THIS_YEAR = dt.date.today().year
KNOWN_ID = "11010519491231002X"  # the textbook example of GB 11643-1999
KNOWN_ID_2 = "440308199901010012"
# An identity number that is also Luhn-valid, and one whose 17 digits before X are.
LUHN_ID = next(
    i
    for i in (make_id(f"44030119900307{n:03d}") for n in range(1000))
    if i[-1].isdigit() and luhn_ok(i)
)
LUHN_ID_X = next(
    i
    for i in (make_id(f"44030119900307{n:03d}") for n in range(1000))
    if i.endswith("X") and luhn_ok(i[:17])
)
# A 86-prefixed mobile number whose 13 digits pass Luhn.
LUHN_PHONE = next(p for p in (f"86138{n:08d}" for n in range(1000)) if luhn_ok(p))
# An identity number ending in X, for the grouped forms.
ID_X = next(i for i in (make_id(f"11010119900307{n:03d}") for n in range(1000)) if i.endswith("X"))
ID_DIGIT = make_id("44030119900307123")
OLD_ID = "110101900307123"  # 15 digits (before 1999): region, YYMMDD, sequence; no check
VISA = "4111111111111111"
UNIONPAY_19 = make_card("622202123456789012")


def test_helpers_agree_with_known_values() -> None:
    assert make_id(KNOWN_ID[:17]) == KNOWN_ID
    assert make_id(KNOWN_ID_2[:17]) == KNOWN_ID_2
    assert luhn_ok(VISA) and not luhn_ok("4111111111111112")
    assert luhn_ok(LUHN_ID) and luhn_ok(LUHN_ID_X[:17]) and luhn_ok(LUHN_PHONE)
    for first17 in ("11010519491231002", "44030119900307123", "81000019991231001"):
        assert id_cn_check_char(first17) == check_char(first17)
    for card in (VISA, UNIONPAY_19, "4111111111111112", LUHN_PHONE):
        assert luhn_valid(card) == luhn_ok(card)


# -- the table ---------------------------------------------------------------------------------
# Positives: (kind, text, the exact substring that must be found). They run through a scanner
# with every built-in kind, so the expected kind must also win against the others.

POSITIVES: list[tuple[str, str, str]] = [
    # phone_cn
    ("phone_cn", "13800138000", "13800138000"),
    ("phone_cn", "电话13800138000。", "13800138000"),
    ("phone_cn", "手机号是138 0013 8000，请回电", "138 0013 8000"),
    ("phone_cn", "call 138-0013-8000 now", "138-0013-8000"),
    ("phone_cn", "联系+86 13912345678", "+86 13912345678"),
    ("phone_cn", "tel:+86-159-1234-5678.", "+86-159-1234-5678"),
    ("phone_cn", "拨打008618612345678转人工", "008618612345678"),
    ("phone_cn", "86 19912345678", "86 19912345678"),
    ("phone_cn", "手机：１３８００１３８０００", "１３８００１３８０００"),
    ("phone_cn", "Tel17612345678, thanks", "17612345678"),
    ("phone_cn", "电话：１３８－００１３－８０００。", "１３８－００１３－８０００"),
    ("phone_cn", "电话：138\u30000013\u30008000。", "138\u30000013\u30008000"),
    ("phone_cn", "14712345678号码", "14712345678"),
    ("phone_cn", "2024年 13800138000 已登记", "13800138000"),
    ("phone_cn", "138.1234.5678", "138.1234.5678"),
    ("phone_cn", "手机138.1234.5678。", "138.1234.5678"),
    ("phone_cn", "138 1234 5678", "138 1234 5678"),
    ("phone_cn", "电话：+86 138-1234-5678，", "+86 138-1234-5678"),
    ("phone_cn", "tel +86 138.1234.5678", "+86 138.1234.5678"),
    ("phone_cn", "手机：１３８．１２３４．５６７８", "１３８．１２３４．５６７８"),
    # id_cn
    ("id_cn", KNOWN_ID, KNOWN_ID),
    ("id_cn", f"身份证号：{KNOWN_ID_2}，", KNOWN_ID_2),
    ("id_cn", "证件 11010519491231002x 已核验", "11010519491231002x"),
    ("id_cn", make_id("44030119900307123"), make_id("44030119900307123")),
    ("id_cn", f"生于闰日{make_id('32010220000229456')}号", make_id("32010220000229456")),
    ("id_cn", make_id("81000019991231001"), make_id("81000019991231001")),  # Hong Kong region
    ("id_cn", make_id("11010119000101001"), make_id("11010119000101001")),  # year 1900
    ("id_cn", f"ID:{make_id('51010419851111002')}.", make_id("51010419851111002")),
    ("id_cn", f"身份证{full_width(KNOWN_ID_2)}", full_width(KNOWN_ID_2)),
    ("id_cn", LUHN_ID, LUHN_ID),  # also Luhn-valid: still an ID, not a card
    ("id_cn", f"号码{LUHN_ID_X}", LUHN_ID_X),
    ("id_cn", spaced(ID_X), spaced(ID_X)),  # 110101 19900307 123X
    ("id_cn", f"身份证：{spaced(ID_DIGIT)}，", spaced(ID_DIGIT)),
    ("id_cn", f"证件 {spaced(ID_X, '-')} 已核验", spaced(ID_X, "-")),
    ("id_cn", spaced(ID_X, " ", (6, 4, 4, 4)), spaced(ID_X, " ", (6, 4, 4, 4))),
    ("id_cn", f"身份证{spaced(KNOWN_ID, chr(0x3000))}", spaced(KNOWN_ID, chr(0x3000))),
    ("id_cn", OLD_ID, OLD_ID),
    ("id_cn", "旧身份证430102850615231。", "430102850615231"),
    ("id_cn", "ID 110101 900307 123 on file", "110101 900307 123"),
    # bank_card
    ("bank_card", VISA, VISA),
    ("bank_card", f"卡号{VISA}号", VISA),
    ("bank_card", "卡号 4111 1111 1111 1111，谢谢", "4111 1111 1111 1111"),
    ("bank_card", "card 4111-1111-1111-1111.", "4111-1111-1111-1111"),
    ("bank_card", UNIONPAY_19, UNIONPAY_19),
    ("bank_card", f"银联卡 {group(UNIONPAY_19)} 尾号", group(UNIONPAY_19)),
    ("bank_card", "MC 5500 0000 0000 0004", "5500 0000 0000 0004"),
    ("bank_card", "Amex 3782 822463 10005", "3782 822463 10005"),
    ("bank_card", "visa13 4222222222222", "4222222222222"),
    ("bank_card", f"工行{make_card('955880123456789012')}", make_card("955880123456789012")),
    ("bank_card", f"卡{full_width(VISA)}", full_width(VISA)),
    ("bank_card", "4111 1111 1111 1111 2024年", "4111 1111 1111 1111"),
    ("bank_card", "卡 4111 1111 1111 1111 12 号", "4111 1111 1111 1111"),  # 18 digits fail Luhn
    # landline_cn
    ("landline_cn", "010-12345678", "010-12345678"),
    ("landline_cn", "电话(0591) 8765 4321。", "(0591) 8765 4321"),
    ("landline_cn", "总机0591-87654321-123，", "0591-87654321-123"),
    ("landline_cn", "（021）6543 2109", "（021）6543 2109"),
    ("landline_cn", "Tel: (010)62751234.", "(010)62751234"),
    ("landline_cn", "客服 0755 8888 6666 转人工", "0755 8888 6666"),
    ("landline_cn", "call +86 10 12345678", "+86 10 12345678"),
    ("landline_cn", "拨打0086-591-87654321", "0086-591-87654321"),
    ("landline_cn", "传真：０２０－３８７６５４３２", "０２０－３８７６５４３２"),
    ("landline_cn", "0371 6789012", "0371 6789012"),  # a 7-digit local number
    # email
    ("email", "zhang.san@example.com", "zhang.san@example.com"),
    ("email", "请发邮件至 li_si+tag@mail.example.com.cn。", "li_si+tag@mail.example.com.cn"),
    ("email", "联系：wang@example.org，谢谢", "wang@example.org"),
    ("email", "我的邮箱是zhao@qq.com.", "zhao@qq.com"),
    ("email", "mail john.doe@example.co.uk, or call", "john.doe@example.co.uk"),
    ("email", "用户a@例子.中国联系我", "a@例子.中国"),
    ("email", "ivan@пример.рф.", "ivan@пример.рф"),
    ("email", "user@xn--fsqu00a.xn--fiqs8s", "user@xn--fsqu00a.xn--fiqs8s"),
    ("email", "QQ邮箱13800138000@qq.com", "13800138000@qq.com"),
    ("email", "邮箱ＺＨＡＮＧ＠ＥＸＡＭＰＬＥ．ＣＯＭ", "ＺＨＡＮＧ＠ＥＸＡＭＰＬＥ．ＣＯＭ"),
    ("email", "<First.Last@Sub-Domain.Example.IO>", "First.Last@Sub-Domain.Example.IO"),
]

# Negatives: (kind, text). Scanned with that kind alone, so no other detector can hide a
# false positive by winning an overlap.
NEGATIVES: list[tuple[str, str]] = [
    # phone_cn
    ("phone_cn", "12800138000"),  # second digit 2
    ("phone_cn", "11012345678"),  # second digit 1
    ("phone_cn", "913800138000"),  # a longer digit run (before)
    ("phone_cn", "138001380001"),  # a longer digit run (after)
    ("phone_cn", "订单号2024138001380001"),  # inside a longer run
    ("phone_cn", "1380013800"),  # 10 digits
    ("phone_cn", "1380 013 8000"),  # 4-3-4, not 3-4-4
    ("phone_cn", "138  0013  8000"),  # double separators
    ("phone_cn", "138 0013 80001"),  # last group too long
    ("phone_cn", "+8612800138000"),  # prefix, but 12x
    ("phone_cn", "138.1234.56789"),  # dotted, last group too long
    ("phone_cn", "138.12345.678"),  # dotted 3-5-3
    ("phone_cn", "IP 138.123.45.67"),
    ("phone_cn", "138.00138000"),  # one dot only
    # id_cn
    ("id_cn", wrong_check(KNOWN_ID)),
    ("id_cn", wrong_check(KNOWN_ID_2)),
    ("id_cn", make_id("11010519490230002")),  # Feb 30, right checksum
    ("id_cn", make_id("11010519000229002")),  # 1900 was no leap year
    ("id_cn", make_id("11010519491331002")),  # month 13
    ("id_cn", make_id("11010518991231002")),  # born before 1900
    ("id_cn", make_id(f"110105{THIS_YEAR + 1}0101002")),  # born next year
    ("id_cn", make_id("91010519491231002")),  # region starts with 9
    ("id_cn", make_id("01010519491231002")),  # region starts with 0
    ("id_cn", "9" + KNOWN_ID_2),  # inside a longer digit run
    ("id_cn", KNOWN_ID_2 + "7"),
    ("id_cn", KNOWN_ID[:17]),  # 17 characters
    ("id_cn", KNOWN_ID + "5"),  # a digit right after the X
    ("id_cn", spaced(wrong_check(ID_X))),  # grouped, wrong check character
    ("id_cn", f"{ID_X[:6]} {ID_X[6:14]}-{ID_X[14:]}"),  # two different separators
    ("id_cn", f"{ID_X[:6]}  {ID_X[6:14]}  {ID_X[14:]}"),  # double spaces
    ("id_cn", spaced(ID_X, " ", (6, 7, 5))),  # not a grouping of the date
    ("id_cn", "110101901307123"),  # 15 digits, month 13
    ("id_cn", "110101900230123"),  # 15 digits, Feb 30
    ("id_cn", "200101900307123"),  # 15 digits, no province 20
    ("id_cn", "910101900307123"),  # 15 digits, no province 91
    ("id_cn", "1101019003071234"),  # 16 digits
    ("id_cn", "11010190030712"),  # 14 digits
    # bank_card
    ("bank_card", "4111111111111112"),  # Luhn fails
    ("bank_card", "4111 1111 1111 1112"),  # grouped, Luhn fails
    ("bank_card", bad_card("622202123456789012")),
    ("bank_card", make_card("41111111111")),  # 12 digits
    ("bank_card", make_card("4111111111111111111")),  # 20 digits
    ("bank_card", VISA + "0000"),  # inside a longer digit run
    ("bank_card", make_card("170000000000")),  # a millisecond timestamp, Luhn-valid
    ("bank_card", LUHN_ID),  # a valid identity number is no card ...
    ("bank_card", f"身份证{LUHN_ID_X}"),  # ... also with X, whose 17 digits pass Luhn
    ("bank_card", LUHN_PHONE),  # a phone number with 86 prefix is no card
    ("bank_card", "41111 1111 1111 111"),  # not grouped in 4s
    # landline_cn
    ("landline_cn", "2024-03-15"),
    ("landline_cn", "2024.03.15 10:30"),
    ("landline_cn", "010-1234"),  # local number too short
    ("landline_cn", "0591-876543"),  # 6 digits
    ("landline_cn", "0591-876543210"),  # 9 digits
    ("landline_cn", "00-12345678"),  # no such area code
    ("landline_cn", "0591--87654321"),  # double separator
    ("landline_cn", "订单号 059187654321"),  # no separator: not taken for a number
    ("landline_cn", "1010-12345678"),  # inside a longer digit run
    ("landline_cn", "v0.10.12345678"),
    # email
    ("email", "foo@bar"),
    ("email", "foo@.com"),
    ("email", "@example.com"),
    ("email", "foo@example.c"),
    ("email", "foo bar at example dot com"),
    ("email", "foo@-example.com"),
    ("email", "foo@example..com"),
    ("email", "user@@example.com"),
    ("email", "价格 3@5 元"),
]


@pytest.mark.parametrize(("kind", "text", "expected"), POSITIVES)
def test_positive(kind: str, text: str, expected: str) -> None:
    findings = PiiScanner().scan(text)
    assert [(f.kind, f.text) for f in findings] == [(kind, expected)]
    (f,) = findings
    assert text[f.start : f.end] == expected


@pytest.mark.parametrize(("kind", "text"), NEGATIVES)
def test_negative(kind: str, text: str) -> None:
    assert PiiScanner(kinds=[kind]).scan(text) == []


def test_table_covers_every_kind() -> None:
    for kind in BUILTIN_KINDS:
        assert sum(k == kind for k, _, _ in POSITIVES) >= 8, kind
        assert sum(k == kind for k, _ in NEGATIVES) >= 8, kind


def test_negatives_are_near_misses() -> None:
    """The negative IDs differ from valid ones only where the detector must look."""
    assert check_char(wrong_check(KNOWN_ID)[:17]) == "X"  # right digits, wrong check
    assert not luhn_ok(bad_card("622202123456789012"))
    assert luhn_ok(make_card("170000000000"))
    assert not luhn_ok(VISA + "12")  # so the card above is found without its tail


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("+86 138-0013-8000", "13800138000"),
        ("008613800138000", "13800138000"),
        ("１３８ ００１３ ８０００", "13800138000"),
        ("11010519491231002x", "11010519491231002X"),
        ("138.1234.5678", "13812345678"),
        (spaced(ID_X.lower()), ID_X),
        ("110101 900307 123", OLD_ID),
        ("(0591) 8765 4321", "059187654321"),
        ("+86 10 12345678", "01012345678"),
        ("0591-87654321-123", "059187654321123"),
        ("4111 1111 1111 1111", "4111111111111111"),
        ("Zhang.San@Example.COM", "zhang.san@example.com"),
    ],
)
def test_value_is_normalised(text: str, value: str) -> None:
    (f,) = PiiScanner().scan(text)
    assert f.text == text and f.value == value


# -- redaction modes --------------------------------------------------------------------------

MIXED = f"张三，电话138-0013-8000，身份证{KNOWN_ID}，卡号{VISA}，邮箱 zhang@example.com。"


def test_tag_mode() -> None:
    r = PiiScanner().redact(MIXED)
    assert r.text == "张三，电话[PHONE]，身份证[ID]，卡号[BANK_CARD]，邮箱 [EMAIL]。"
    assert r.counts == {"phone_cn": 1, "id_cn": 1, "bank_card": 1, "email": 1}
    assert all(MIXED[f.start : f.end] == f.text for f in r.findings)
    assert [f.start for f in r.findings] == sorted(f.start for f in r.findings)


def test_mask_mode() -> None:
    r = PiiScanner(mode="mask").redact(MIXED)
    assert r.text == (
        "张三，电话138****8000，身份证110***********002X，卡号4111********1111，"
        "邮箱 z***@example.com。"
    )


def test_mask_mode_keeps_a_landline_area_code() -> None:
    r = PiiScanner(mode="mask").redact("电话(0591) 8765 4321，或 010-12345678")
    assert r.text == "电话0591******21，或 010******78"


def test_hash_mode_links_landline_formats() -> None:
    s = PiiScanner(mode="hash", salt=b"k")
    assert s.redact("010-12345678").text == s.redact("+86 10 1234 5678").text
    assert s.redact("010-12345678").text.startswith("[PHONE:")
    assert s.redact(spaced(ID_X)).text == s.redact(ID_X).text


ORDINARY = [
    "价格 ¥1,299.00，优惠 ¥138.50",
    "总价 12345678.90 元",
    "日期 2024.03.15，时间 2024-03-15 10:30:00，2024/03/15",
    "2024.03.15-2024.12.31",
    "订单号 202403151234567",
    "订单号 DD20240315123456",
    "快递单号 SF1234567890123",
    "version 1.2.3, build 10.0.22621.1, Python 3.11.7",
    "IP 192.168.100.200 / 10.0.0.1",
    "1,234,567,890 次浏览",
    "第 0591 号文件，共 87654321 字",
    "坐标 39.9042, 116.4074",
    "ISBN 978-7-111-12345-6",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_numbers_are_not_pii(text: str) -> None:
    assert PiiScanner().scan(text) == []


def test_mask_uses_the_normalised_value() -> None:
    assert PiiScanner(mode="mask").redact("+86 １３８-００１３-８０００").text == "138****8000"


def test_hash_mode_is_stable_across_records_and_formats() -> None:
    s = PiiScanner(mode="hash", salt=b"secret-1")
    a = s.redact("电话13800138000")
    b = PiiScanner(mode="hash", salt="secret-1").redact("call +86 138-0013-8000 please")
    tok_a = re.search(r"\[PHONE:[0-9a-f]{12}\]", a.text)
    tok_b = re.search(r"\[PHONE:[0-9a-f]{12}\]", b.text)
    assert tok_a and tok_b and tok_a.group() == tok_b.group()
    assert a.text == f"电话{tok_a.group()}"
    # Another value, another token; no digits of the value survive.
    c = s.redact("电话13900139000").text
    assert c != a.text and "1390013" not in c and "8000" not in a.text


def test_hash_mode_depends_on_salt() -> None:
    text = f"{KNOWN_ID} zhang@example.com"
    one = PiiScanner(mode="hash", salt=b"salt-one").redact(text).text
    two = PiiScanner(mode="hash", salt=b"salt-two").redact(text).text
    assert re.fullmatch(r"\[ID:[0-9a-f]{12}\] \[EMAIL:[0-9a-f]{12}\]", one)
    assert re.fullmatch(r"\[ID:[0-9a-f]{12}\] \[EMAIL:[0-9a-f]{12}\]", two)
    assert set(one.split()).isdisjoint(two.split())


def test_hash_mode_tokens_differ_by_kind() -> None:
    """The same digits under two kinds give two tokens (kind is part of the hashed input)."""
    s = PiiScanner(mode="hash", salt=b"k", patterns=[PiiPattern("order", r"#\d{11}")])
    r = s.redact("13800138000 #13800138000")
    phone, order = r.text.split()
    assert phone.startswith("[PHONE:") and order.startswith("[ORDER:")
    assert phone[7:] != order[7:]


@pytest.mark.parametrize("salt", [None, b"", ""])
def test_hash_mode_needs_a_salt(salt: bytes | str | None) -> None:
    with pytest.raises(ValueError, match="salt"):
        PiiScanner(mode="hash", salt=salt)


def test_full_width_punctuation_is_left_alone() -> None:
    """Only characters a finding can hold are normalised; "％" is not a local-part "%"."""
    (f,) = PiiScanner().scan("比例５０％ab@example.com，完")
    assert f.text == "ab@example.com"


def test_no_findings_returns_the_same_text() -> None:
    text = "今天天气很好，温度 23 度，2024-05-01 见。" * 5
    r = PiiScanner().redact(text)
    assert r.text == text and r.findings == () and r.counts == {}


def test_many_findings_keep_offsets_right() -> None:
    parts = [f"第{i}位：1380013{i:04d}，邮箱 u{i}@example.com；" for i in range(50)]
    text = "".join(parts)
    r = PiiScanner().redact(text)
    assert r.counts == {"phone_cn": 50, "email": 50}
    assert r.text == "".join(f"第{i}位：[PHONE]，邮箱 [EMAIL]；" for i in range(50))


# -- overlaps ---------------------------------------------------------------------------------


def test_longer_finding_wins() -> None:
    (f,) = PiiScanner().scan("13800138000@163.com")
    assert f.kind == "email"
    long_rule = PiiPattern("contact", r"手机[:：]\s*1\d{10}")
    r = PiiScanner(patterns=[long_rule]).redact("手机：13800138000，谢谢")
    assert r.text == "[CONTACT]，谢谢"


def test_shorter_overlapping_custom_pattern_loses() -> None:
    short_rule = PiiPattern("tail", r"8000")
    r = PiiScanner(patterns=[short_rule]).redact("13800138000 与 8000")
    assert r.text == "[PHONE] 与 [TAIL]"


def test_equal_length_tie_goes_to_the_earlier_detector() -> None:
    same_span = PiiPattern("mobile", r"1[3-9]\d{9}")
    assert [f.kind for f in PiiScanner(patterns=[same_span]).scan("13800138000")] == ["phone_cn"]
    first, second = PiiPattern("aaa", r"QL\d{4}"), PiiPattern("bbb", r"QL\d{4}")
    assert [f.kind for f in PiiScanner(patterns=[first, second]).scan("QL1234")] == ["aaa"]
    assert [f.kind for f in PiiScanner(patterns=[second, first]).scan("QL1234")] == ["bbb"]


def test_overlap_resolution_is_deterministic_for_chains() -> None:
    # Three custom matches overlapping in a chain: the longest (middle) wins, the others
    # lose even though they do not overlap each other.
    pats = [PiiPattern("left", r"AB"), PiiPattern("mid", r"BCDE"), PiiPattern("right", r"EF")]
    findings = PiiScanner(kinds=[], patterns=pats).scan("xABCDEFx")
    assert [(f.kind, f.start, f.end) for f in findings] == [("mid", 2, 6)]


def test_id_with_luhn_valid_digits_is_only_an_id() -> None:
    findings = PiiScanner().scan(f"{LUHN_ID} / {LUHN_ID_X}")
    assert [f.kind for f in findings] == ["id_cn", "id_cn"]


# -- custom patterns ----------------------------------------------------------------------------


def test_custom_pattern_tag_and_replacement() -> None:
    staff = PiiPattern("staff_id", r"QL-\d{6}")
    named = PiiPattern("plate", r"[京沪粤][A-Z][0-9A-Z]{5}", replacement="<车牌>")
    r = PiiScanner(patterns=[staff, named]).redact("工号QL-004211，车牌粤B12345")
    assert r.text == "工号[STAFF_ID]，车牌<车牌>"
    assert PiiScanner(mode="mask", patterns=[staff]).redact("QL-004211").text == "QL*****11"


def test_custom_pattern_sees_the_text_as_written() -> None:
    p = PiiPattern("staff_id", r"工号：ＱＬ\d{6}")  # full-width, as the data has it
    (f,) = PiiScanner(kinds=[], patterns=[p]).scan("员工工号：ＱＬ００４２１１")
    assert f.text == "工号：ＱＬ００４２１１"


@pytest.mark.parametrize(
    ("regex", "message"),
    [
        (r"(QL-\d+", r"'staff_id'.*missing \)"),
        (r"[QL", r"'staff_id'.*unterminated character set"),
        (r"QL\d{6,3}", r"'staff_id'.*min repeat greater than max repeat"),
        (r"*QL", r"'staff_id'.*nothing to repeat"),
    ],
)
def test_custom_pattern_bad_regex(regex: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        PiiPattern("staff_id", regex)
    assert isinstance(info.value.__cause__, re.error)
    assert repr(regex) in str(info.value)


@pytest.mark.parametrize("regex", [r"a*", r"x?", r"(?=QL)", r"(?<=工号)\d*", r"QL|", r"(?:\d{6})?"])
def test_custom_pattern_that_can_match_empty_is_rejected(regex: str) -> None:
    with pytest.raises(ValueError, match="'blank'.*empty string"):
        PiiPattern("blank", regex)


def test_empty_check_falls_back_without_the_private_parser(monkeypatch) -> None:
    monkeypatch.setattr(pii_mod.re, "_parser", None, raising=False)
    with pytest.raises(ValueError, match="empty string"):
        PiiPattern("blank", r"a*")
    assert PiiPattern("ok", r"a+").kind == "ok"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("Staff-ID", "must match"),
        ("", "must match"),
        ("1abc", "must match"),
        ("email", "built-in kind"),
        ("phone_cn", "built-in kind"),
    ],
)
def test_custom_pattern_bad_kind(kind: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PiiPattern(kind, r"\d+")


def test_custom_pattern_empty_regex() -> None:
    with pytest.raises(ValueError, match="'x': regex must be a non-empty string"):
        PiiPattern("x", "")


# -- scanner configuration -----------------------------------------------------------------------


def test_unknown_kind_gets_a_hint() -> None:
    with pytest.raises(ValueError, match="unknown PII kind 'phone'.*did you mean 'phone_cn'"):
        PiiScanner(kinds=["phone"])


def test_unknown_mode_gets_a_hint() -> None:
    with pytest.raises(ValueError, match="unknown redaction mode 'masks'.*did you mean 'mask'"):
        PiiScanner(mode="masks")  # type: ignore[arg-type]


def test_kinds_as_a_single_string_is_refused() -> None:
    with pytest.raises(TypeError, match="collection"):
        PiiScanner(kinds="email")


def test_duplicate_pattern_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="'staff_id' is given twice"):
        PiiScanner(patterns=[PiiPattern("staff_id", "A1"), PiiPattern("staff_id", "B2")])


def test_kinds_select_detectors_in_fixed_order() -> None:
    s = PiiScanner(kinds=["email", "landline_cn", "phone_cn"], patterns=[PiiPattern("x", "QL")])
    assert s.kinds == ("phone_cn", "landline_cn", "email", "x")
    assert PiiScanner().kinds == BUILTIN_KINDS
    assert [f.kind for f in PiiScanner(kinds=["email"]).scan(MIXED)] == ["email"]


# -- repr hygiene -----------------------------------------------------------------------------


def test_repr_does_not_leak_values() -> None:
    r = PiiScanner().redact(MIXED)
    for f in r.findings:
        assert f.text not in repr(f) and f.value not in repr(f) and f.value not in str(f)
        assert repr(f).startswith(f"Finding(kind={f.kind!r}, start={f.start}, end={f.end}")
    shown = repr(r)
    for secret in ("13800138000", "0013", KNOWN_ID, VISA, "zhang@example.com"):
        assert secret not in shown
    assert "salt" not in repr(PiiScanner(mode="hash", salt=b"salt-value"))


def test_finding_and_redaction_are_immutable() -> None:
    f = Finding("email", 0, 3, "a@b", "a@b")
    with pytest.raises(AttributeError):
        f.start = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Redaction("x", ()).text = "y"  # type: ignore[misc]


# -- robustness -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "1" * 100_000,
        "a." * 50_000 + "@",
        "a" * 100_000 + "@example.com",
        "1234 " * 20_000,
        "@" + "x" * 100_000,
        "1." * 50_000,
        "(0" * 50_000,
        "0591-" * 20_000,
        "110101 " * 15_000,
        "（010）" * 20_000,
    ],
)
def test_pathological_inputs_stay_fast(text: str) -> None:
    start = time.perf_counter()
    PiiScanner().scan(text)
    assert time.perf_counter() - start < 5.0


def test_module_doctests() -> None:
    result = doctest.testmod(pii_mod)
    assert result.attempted > 10 and result.failed == 0
