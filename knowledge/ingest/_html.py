"""HTML to sections with the standard library's parser (no bs4 / lxml needed).

Scripts, styles, ``<noscript>``, ``<template>`` and
the configured strip selectors are dropped with their content; ``h1``-``h6`` start
sections whose heading path follows the heading levels.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

ALWAYS_STRIP = ("script", "style", "noscript", "template")
_VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
    "track", "wbr",
}  # fmt: skip
_BLOCK = {
    "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "pre",
    "blockquote", "hr", "dd", "dt", "dl", "main", "aside", "header", "figure", "figcaption",
    "form", "caption", "thead", "tbody", "tfoot", "title",
}  # fmt: skip
_CELL = {"td", "th"}
_HEADING = re.compile(r"^h([1-6])$")


class _Selector:
    def __init__(self, text: str) -> None:
        m = re.match(r"^([a-z][a-z0-9]*)?(?:([.#])([\w-]+))?$", text)
        if m is None:  # the manifest checks selectors; this guards direct callers
            raise ValueError(f"unsupported selector {text!r}")
        self.tag, self.sigil, self.name = m.group(1), m.group(2), m.group(3)

    def matches(self, tag: str, attrs: dict[str, str]) -> bool:
        if self.tag and self.tag != tag:
            return False
        if self.sigil == ".":
            return self.name in attrs.get("class", "").split()
        if self.sigil == "#":
            return attrs.get("id") == self.name
        return True


class SectionExtractor(HTMLParser):
    """Feed HTML, then read :attr:`sections` as ``(heading_path, text)`` and ``title``."""

    def __init__(self, strip_selectors: list[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.selectors = [_Selector(s) for s in ALWAYS_STRIP] + [
            _Selector(s) for s in strip_selectors
        ]
        self.sections: list[tuple[tuple[str, ...], str]] = []
        self.title: str | None = None
        self._skip: tuple[str, int] | None = None  # tag being skipped, nesting depth
        self._stack: list[tuple[int, str]] = []
        self._buf: list[str] = []
        self._heading: list[str] | None = None
        self._heading_level = 0
        self._in_title = False
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip is not None:
            if tag == self._skip[0] and tag not in _VOID:
                self._skip = (tag, self._skip[1] + 1)
            return
        if tag == "title":
            self._in_title = True
            return
        amap = {k: v or "" for k, v in attrs}
        if tag not in _VOID and any(s.matches(tag, amap) for s in self.selectors):
            self._skip = (tag, 1)
            return
        m = _HEADING.match(tag)
        if m:
            self._flush()
            self._heading, self._heading_level = [], int(m.group(1))
        elif tag == "pre":
            self._pre += 1
        if tag in _BLOCK:
            self._buf.append("\n")
        elif tag in _CELL:
            self._buf.append(" | ")

    def handle_endtag(self, tag: str) -> None:
        if self._skip is not None:
            if tag == self._skip[0]:
                depth = self._skip[1] - 1
                self._skip = None if depth == 0 else (tag, depth)
            return
        if tag == "title":
            self._in_title = False
            return
        if self._heading is not None and _HEADING.match(tag):
            title = " ".join("".join(self._heading).split())
            self._heading = None
            while self._stack and self._stack[-1][0] >= self._heading_level:
                self._stack.pop()
            if title:
                self._stack.append((self._heading_level, title))
                self._buf.append(title + "\n")
            return
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag in _BLOCK:
            self._buf.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = ((self.title or "") + data).strip() or None
            return
        if self._skip is not None:
            return
        if self._heading is not None:
            self._heading.append(data)
        elif self._pre:
            self._buf.append(data)
        else:
            self._buf.append(re.sub(r"\s+", " ", data))

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        text = "".join(self._buf)
        self._buf = []
        lines = [ln.strip() for ln in text.split("\n")]
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        path = tuple(t for _, t in self._stack)
        if text and (not path or text != path[-1]):
            self.sections.append((path, text))
