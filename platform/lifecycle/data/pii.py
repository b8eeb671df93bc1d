"""PII detection and redaction over plain strings, for the data-governance pipeline.

A :class:`PiiScanner` finds personal data in one text and redacts it. Built-in detectors,
each with a stable ``kind`` name:

=================  ==========================================================  ===============
kind               what it matches                                             tag
=================  ==========================================================  ===============
``id_cn``          18-character resident identity number (GB 11643-1999):      ``[ID]``
                   region first digit 1-8, a real birth date (1900 to today),
                   ISO 7064 MOD 11-2 check character (0-9 or X); contiguous or
                   grouped 6-8-4 or 6-4-4-4 by one kind of separator
                   (``110101 19900307 123X``). Also the 15-digit number issued
                   before 1999 (region, ``YYMMDD`` birth date of the 1900s,
                   sequence; no check character), contiguous or 6-6-3, whose
                   first two digits are a province code (11-15, 21-23, 31-37,
                   41-46, 50-54, 61-65, 71, 81, 82)
``phone_cn``       mainland mobile number ``1[3-9]`` + 9 digits, optional      ``[PHONE]``
                   ``+86`` / ``0086`` / ``86`` prefix, optional 3-4-4
                   grouping by space or dash, or by two dots
                   (``138.1234.5678``)
``landline_cn``    fixed-line number: area code ``010``, ``02x`` or ``0xxx``,  ``[PHONE]``
                   then a separator (``010-``, ``0591 ``) or in brackets
                   (``(0591)``, ``（021）``), or ``+86`` / ``0086`` and the area
                   code without its 0; a 7-8 digit local number (contiguous,
                   3-4 or 4-4); an optional ``-`` extension of 1-5 digits. A
                   run of digits without a separator after the area code is
                   not taken (too many order numbers look like one)
``bank_card``      13-19 digits, contiguous or grouped in 4s (also Amex        ``[BANK_CARD]``
                   4-6-5), passing the Luhn check, first digit 2-6 or 9 (see
                   below), and not a valid 18-character ``id_cn``
``email``          practical e-mail address: ASCII local part, subdomains,     ``[EMAIL]``
                   internationalised domains and TLDs (``例子.中国``,
                   ``пример.рф``, ``xn--fiqs8s``); trailing punctuation is not
                   part of it
=================  ==========================================================  ===============

Users add their own patterns with :class:`PiiPattern` (from a manifest, later); they are
validated when built and tagged ``[<KIND>]`` unless they name a ``replacement``.

How matching works, and why:

- Numbers are delimited by digit lookarounds, never ``\\b``: Chinese text puts characters
  right against numbers (``电话13800138000``), and ``\\b`` sees no boundary between a CJK
  character and a digit. A number inside a longer digit run is not reported.
- Built-in detectors see a width-normalised copy of the text (full-width digits, letters,
  ``＠``, ``＋``, ``－``, ``．`` become ASCII; one character for one, so offsets are
  unchanged). Numbers may be grouped by a space, a dash or an ideographic space (U+3000);
  a mobile number also by dots.
  Custom patterns see the text as given (Python's ``\\d`` matches full-width digits too).
- ``bank_card`` requires a first digit of 2-6 or 9 (the ISO/IEC 7812 industry digits of
  payment cards, including UnionPay 62 and domestic 9-prefixed cards): one random number
  in ten passes Luhn, and this keeps 13-digit millisecond timestamps (``17…``) and
  86-prefixed phone numbers from being reported as cards.
- A 15-digit card number can also read as an old identity number (about one in thirty
  Amex numbers has a date where the birth date would be); both are redacted, and the
  tie goes to ``id_cn``.
- Overlapping findings are resolved the same way every time: the longer span wins; on
  equal length the detector listed first wins (``id_cn``, ``phone_cn``, ``landline_cn``,
  ``bank_card``, ``email``, then custom patterns in the order given); then the earlier
  start.

Redaction modes: ``tag`` writes the tag; ``mask`` keeps a few characters of the
normalised value (``138****8000``, ``z***@example.com``); ``hash`` writes
``[<LABEL>:<12 hex>]``, an HMAC-SHA256 of kind and normalised value under a secret salt,
so one value maps to one token across records (``+86 138-0013-8000`` and
``13800138000`` alike; ``+86 10 12345678`` and ``010-12345678``) while a different salt
gives unrelated tokens.

Throughput: every regex is compiled once at import or construction; a text is normalised
only when it holds a full-width digit, letter or sign; one cheap pass finds the stretches
of 11 or more digits and separators (space, dash, dot, brackets), and the digit
detectors run inside those windows only; ``email`` is matched once at each ``@`` rather
than tried at every position.

Example:
    >>> scanner = PiiScanner()
    >>> scanner.redact("张三，电话138-0013-8000，邮箱 zhang.san@example.com。").text
    '张三，电话[PHONE]，邮箱 [EMAIL]。'
    >>> [f.kind for f in scanner.scan("身份证11010519491231002X")]
    ['id_cn']
    >>> scanner.scan("tel +86 13800138000")[0]
    Finding(kind='phone_cn', start=4, end=19)
    >>> PiiScanner(mode="mask").redact("手机１３８００１３８０００").text
    '手机138****8000'
    >>> staff = PiiPattern("staff_id", r"QL-\\d{6}", replacement="[工号]")
    >>> PiiScanner(kinds=["email"], patterns=[staff]).redact("工号QL-004211").text
    '工号[工号]'
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from qingliang.platform.errors import closest
from qingliang.platform.lifecycle.data._detectors import (
    BUILTINS,
    FULL_WIDTH_RE,
    WIDTH_TABLE,
    Detector,
    digit_windows,
    id_cn_check_char,
    luhn_valid,
    mask_generic,
    pattern_finder,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_KINDS",
    "HASH_HEX_CHARS",
    "REDACTION_MODES",
    "Finding",
    "PiiPattern",
    "PiiScanner",
    "Redaction",
    "RedactionMode",
    "id_cn_check_char",
    "luhn_valid",
]

RedactionMode = Literal["tag", "mask", "hash"]
REDACTION_MODES: Final[tuple[str, ...]] = get_args(RedactionMode)

#: Built-in detector kinds, in their tie-break order for overlapping findings.
BUILTIN_KINDS: Final[tuple[str, ...]] = ("id_cn", "phone_cn", "landline_cn", "bank_card", "email")

#: Hex characters of a ``hash``-mode token (48 bits: for a million distinct values the
#: chance that two share a token is about 0.2 %).
HASH_HEX_CHARS: Final = 12

_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of PII: its kind and where it is (``text[start:end]``).

    ``text`` is the matched slice as written; ``value`` is its normalised form (ASCII
    digits without prefix or separators, upper-case ``X``, lower-case e-mail), the form
    that ``mask`` and ``hash`` work on. Neither appears in ``repr``, so a finding can be
    logged without leaking what it found.
    """

    kind: str
    start: int
    end: int
    text: str = field(repr=False)
    value: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Redaction:
    """A redacted text and the findings that were replaced, in the original's offsets."""

    text: str
    findings: tuple[Finding, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Number of findings per kind, e.g. ``{"phone_cn": 2}``."""
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out


@dataclass(frozen=True)
class PiiPattern:
    """A user-defined PII pattern, checked when built.

    Args:
        kind: Name of the kind, ``[a-z][a-z0-9_]*`` (at most 64), not a built-in kind.
        regex: Python regular expression, matched against the text as given. It must not
            be able to match the empty string.
        replacement: Text written in ``tag`` mode instead of ``[<KIND>]``.

    Raises:
        ValueError: The kind is malformed or built in, the regex does not compile (the
            message names the kind and the regex error), or it can match the empty string.

    Example:
        >>> PiiPattern("staff_id", r"QL-\\d{6}").tag
        '[STAFF_ID]'
        >>> PiiPattern("x", "(")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: PII pattern 'x': invalid regex '(': missing ), unterminated subpattern ...
    """

    kind: str
    regex: str
    replacement: str | None = None
    compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not _KIND_RE.fullmatch(self.kind):
            raise ValueError(
                f"PII pattern kind {self.kind!r}: must match [a-z][a-z0-9_]* (at most 64)"
            )
        if self.kind in BUILTIN_KINDS:
            raise ValueError(
                f"PII pattern {self.kind!r}: the name of a built-in kind; "
                "choose another name or use the built-in detector"
            )
        if not isinstance(self.regex, str) or not self.regex:
            raise ValueError(f"PII pattern {self.kind!r}: regex must be a non-empty string")
        if self.replacement is not None and not isinstance(self.replacement, str):
            raise ValueError(f"PII pattern {self.kind!r}: replacement must be a string")
        try:
            compiled = re.compile(self.regex)
        except re.error as exc:
            raise ValueError(
                f"PII pattern {self.kind!r}: invalid regex {self.regex!r}: {exc}"
            ) from exc
        if _can_match_empty(compiled):
            raise ValueError(
                f"PII pattern {self.kind!r}: regex {self.regex!r} can match the empty "
                "string; make every match consume at least one character"
            )
        object.__setattr__(self, "compiled", compiled)

    @property
    def label(self) -> str:
        """The kind in capitals, used in tags and hash tokens."""
        return self.kind.upper()

    @property
    def tag(self) -> str:
        """What ``tag`` mode writes for a match."""
        return self.replacement if self.replacement is not None else f"[{self.label}]"


def _can_match_empty(compiled: re.Pattern[str]) -> bool:
    # The parser's minimum width is exact (lookarounds count as zero), so `(?<=x)y*` is
    # caught too; `re._parser` is private, so fall back to trying the empty string.
    parser: Any = getattr(re, "_parser", None)
    try:
        return int(parser.parse(compiled.pattern, compiled.flags).getwidth()[0]) == 0
    except Exception:  # the private API is gone or changed
        return compiled.fullmatch("") is not None


class PiiScanner:
    """Finds and redacts PII in texts; build once, then call from any thread.

    Args:
        kinds: Built-in kinds to run (default: all of :data:`BUILTIN_KINDS`); ``[]`` runs
            only ``patterns``.
        patterns: Custom patterns, run after the built-ins.
        mode: How :meth:`redact` replaces a finding: ``"tag"``, ``"mask"`` or ``"hash"``.
        salt: Secret key of ``hash`` mode (required there). Keep it out of manifests and
            use one salt per dataset family: tokens link records only under the same salt.

    Raises:
        ValueError: An unknown kind or mode (with a "did you mean" hint), two patterns of
            one kind, or ``hash`` mode without a salt.
        TypeError: ``kinds`` is a single string instead of a collection of names.

    Example:
        >>> s = PiiScanner(mode="hash", salt=b"dataset-secret")
        >>> a = s.redact("call 13800138000").text
        >>> a == s.redact("call +86 138-0013-8000").text, a.startswith("call [PHONE:")
        (True, True)
    """

    def __init__(
        self,
        kinds: Iterable[str] | None = None,
        patterns: Iterable[PiiPattern] = (),
        mode: RedactionMode = "tag",
        salt: bytes | str | None = None,
    ) -> None:
        if isinstance(kinds, str):
            raise TypeError(f"kinds must be a collection of kind names, not the string {kinds!r}")
        chosen = BUILTIN_KINDS if kinds is None else tuple(dict.fromkeys(kinds))
        for kind in chosen:
            if kind not in BUILTINS:
                raise ValueError(f"unknown PII kind {kind!r}{_hint(kind, BUILTIN_KINDS)}")
        if mode not in REDACTION_MODES:
            raise ValueError(f"unknown redaction mode {mode!r}{_hint(mode, REDACTION_MODES)}")
        detectors = [BUILTINS[k] for k in BUILTIN_KINDS if k in chosen]
        for p in patterns:
            if not isinstance(p, PiiPattern):
                raise TypeError(f"patterns must be PiiPattern objects, got {type(p).__name__}")
            if any(d.kind == p.kind for d in detectors):
                raise ValueError(f"PII pattern {p.kind!r} is given twice")
            detectors.append(
                Detector(
                    p.kind,
                    p.label,
                    p.tag,
                    pattern_finder(p.compiled),
                    mask_generic,
                    on_original=True,
                )
            )
        self._hmac: Any = None
        if mode == "hash":
            if not salt:
                raise ValueError("redaction mode 'hash' needs a non-empty salt (a secret)")
            key = salt.encode() if isinstance(salt, str) else bytes(salt)
            self._hmac = hmac.new(key, digestmod=hashlib.sha256)
        self._mode: str = mode
        self._detectors: tuple[Detector, ...] = tuple(detectors)
        self._by_kind = {d.kind: d for d in self._detectors}

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind this scanner reports, built-ins first, in tie-break order."""
        return tuple(d.kind for d in self._detectors)

    @property
    def mode(self) -> str:
        """The redaction mode: ``"tag"``, ``"mask"`` or ``"hash"``."""
        return self._mode

    def scan(self, text: str) -> list[Finding]:
        """Every PII finding in ``text``, sorted by start, never overlapping.

        Example:
            >>> PiiScanner().scan("no personal data here, only 2024 and 42")
            []
        """
        normalised = text.translate(WIDTH_TABLE) if FULL_WIDTH_RE.search(text) else text
        whole = [(0, len(text))]
        digit_runs: list[tuple[int, int]] | None = None
        candidates: list[tuple[int, int, int, str]] = []
        for rank, det in enumerate(self._detectors):
            if det.digits_only:
                if digit_runs is None:
                    digit_runs = digit_windows(normalised)
                windows = digit_runs
            else:
                windows = whole
            source = text if det.on_original else normalised
            for pos, endpos in windows:
                for start, end, value in det.find(source, pos, endpos):
                    candidates.append((start, end, rank, value))
        kinds = [d.kind for d in self._detectors]
        return [
            Finding(kinds[rank], start, end, text[start:end], value)
            for start, end, rank, value in _resolve(candidates)
        ]

    def redact(self, text: str) -> Redaction:
        """``text`` with every finding replaced according to the scanner's mode.

        Example:
            >>> r = PiiScanner().redact("卡号 4111 1111 1111 1111，谢谢")
            >>> r.text, r.counts
            ('卡号 [BANK_CARD]，谢谢', {'bank_card': 1})
        """
        findings = self.scan(text)
        if not findings:
            return Redaction(text, ())
        # Pieces are cut from the original by each finding's offsets, so replacements of
        # any length never shift the offsets of the others.
        pieces: list[str] = []
        pos = 0
        for f in findings:
            pieces.append(text[pos : f.start])
            pieces.append(self._replacement(f))
            pos = f.end
        pieces.append(text[pos:])
        return Redaction("".join(pieces), tuple(findings))

    def _replacement(self, f: Finding) -> str:
        det = self._by_kind[f.kind]
        if self._mode == "tag":
            return det.tag
        if self._mode == "mask":
            return det.mask(f.value)
        mac = self._hmac.copy()
        mac.update(f"{f.kind}\x00{f.value}".encode())
        return f"[{det.label}:{mac.hexdigest()[:HASH_HEX_CHARS]}]"


def _resolve(candidates: list[tuple[int, int, int, str]]) -> list[tuple[int, int, int, str]]:
    """Non-overlapping candidates: longer first, then lower rank, then earlier start."""
    candidates.sort()
    if all(a[1] <= b[0] for a, b in zip(candidates, candidates[1:], strict=False)):
        return candidates
    starts: list[int] = []
    chosen: list[tuple[int, int, int, str]] = []
    for cand in sorted(candidates, key=lambda c: (c[0] - c[1], c[2], c[0])):
        start, end = cand[0], cand[1]
        i = bisect.bisect_right(starts, start)
        if i > 0 and chosen[i - 1][1] > start:
            continue
        if i < len(chosen) and chosen[i][0] < end:
            continue
        starts.insert(i, start)
        chosen.insert(i, cand)
    return chosen


def _hint(word: str, options: Sequence[str]) -> str:
    near = closest(str(word), options)
    known = ", ".join(options)
    return f" (did you mean {near!r}?; known: {known})" if near else f" (known: {known})"
