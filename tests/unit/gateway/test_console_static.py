"""The console's files as the gateway serves them: vendored libraries as recorded, the
security headers, no path outside the console, and every text in both languages."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from qingliang.platform.errors import NotFound
from qingliang.platform.gateway.console import STATIC, add_console, csp_for, resolve
from qingliang.platform.gateway.http.errors import install_error_handlers

VENDOR = STATIC / "vendor"


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    add_console(app)
    return TestClient(app)


def test_vendored_files_match_their_manifest_and_carry_licences() -> None:
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())
    listed = {f["file"] for f in manifest["files"]}
    shipped = {p.name for p in VENDOR.iterdir() if p.is_file() and p.name != "MANIFEST.json"}
    assert listed == shipped, "every vendored file is listed, and only those"
    for entry in manifest["files"]:
        data = (VENDOR / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
        assert entry["version"] and entry["package"]
        licence = (VENDOR / entry["license_file"]).read_text()
        assert "Permission is hereby granted" in licence or "Apache License" in licence


def test_index_names_only_local_scripts_and_styles() -> None:
    index = (STATIC / "index.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"]+)"', index):
        assert not re.match(r"^(https?:)?//", url), f"index.html loads {url} from another origin"
    imports = json.loads(re.search(r'<script type="importmap">(.*?)</script>', index, re.S)[1])
    for target in imports["imports"].values():
        assert (STATIC / target).is_file(), target


def test_every_module_import_resolves_to_a_shipped_file() -> None:
    for path in [*STATIC.glob("*.js"), *STATIC.glob("lib/*.js"), *STATIC.glob("pages/*.js")]:
        for spec in re.findall(r"^import .*? from '([^']+)';", path.read_text(), re.M):
            if spec.startswith("."):
                assert (path.parent / spec).resolve().is_file(), f"{path.name} imports {spec}"
            else:
                assert spec in ("preact", "preact/hooks", "htm", "uplot"), spec


def test_index_and_files_are_served_with_a_same_origin_policy(client: TestClient) -> None:
    r = client.get("/ui/")
    assert r.status_code == 200 and "importmap" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "connect-src 'self'" in csp and "http" not in csp
    # The import map (the only inline script) is allowed by its hash, nothing else inline.
    assert (
        csp == csp_for(r.text) and "'sha256-" in csp and "'unsafe-inline'" not in csp.split(";")[1]
    )
    js = client.get("/ui/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert js.headers["x-content-type-options"] == "nosniff"
    assert client.get("/ui/vendor/preact.mjs").status_code == 200
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "/ui/"


@pytest.mark.parametrize(
    "path", ["../__init__.py", "..%2F__init__.py", "vendor/../../__init__.py", "nope.js", "lib"]
)
def test_nothing_outside_the_console_is_served(client: TestClient, path: str) -> None:
    r = client.get(f"/ui/{path}")
    assert r.status_code == 404
    assert b"def add_console" not in r.content


def test_resolve_refuses_links_and_unknown_types(tmp_path: Path) -> None:
    root = tmp_path / "static"
    root.mkdir()
    (tmp_path / "secret.js").write_text("secret")
    (root / "link.js").symlink_to(tmp_path / "secret.js")
    (root / "notes.py").write_text("x = 1")
    (root / "ok.js").write_text("ok")
    assert resolve("ok.js", root) == (root / "ok.js").resolve()
    for bad in ("link.js", "notes.py", "../secret.js", "/etc/hostname"):
        with pytest.raises(NotFound, match="the console has no file"):
            resolve(bad, root)


def _block(text: str, start: int) -> str:
    """The text of the ``{...}`` that opens at ``start``, skipping quoted strings."""
    depth, quote, i = 0, "", start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
        i += 1
    raise AssertionError("unbalanced braces")


def _strings(path: Path) -> dict[str, set[str]]:
    """The keys a module defines per language (``strings = {zh: {...}, en: {...}}`` or the
    shell's ``addStrings({zh: {...}, en: {...}})``)."""
    text = path.read_text()
    found = re.search(r"(?:export const strings =|addStrings\()\s*\{", text)
    if not found:
        return {"zh": set(), "en": set()}
    outer = _block(text, found.end() - 1)
    out = {}
    for lang in ("zh", "en"):
        at = re.search(rf"\b{lang}:\s*\{{", outer)
        body = _block(outer, at.end() - 1) if at else ""
        out[lang] = set(re.findall(r"'([\w.-]+)':", body))
    return out


def test_every_text_the_console_shows_exists_in_chinese_and_english() -> None:
    modules = [STATIC / "app.js", *sorted(STATIC.glob("pages/*.js"))]
    shared = _strings(STATIC / "app.js")
    assert shared["zh"] and shared["zh"] == shared["en"]
    for path in modules:
        own = _strings(path)
        assert own["zh"] == own["en"], f"{path.name}: keys differ between zh and en"
        known = own["zh"] | shared["zh"]
        used = set(re.findall(r"\bt\('([\w.-]+)'", path.read_text()))
        # Keys built at run time (t(`nav.${id}`)) are checked through the shell's table.
        missing = sorted(k for k in used if k not in known)
        assert not missing, f"{path.name} shows untranslated keys {missing}"
    for lib in STATIC.glob("lib/*.js"):
        used = set(re.findall(r"\bt\('([\w.-]+)'", lib.read_text()))
        assert used <= shared["zh"], f"{lib.name}: {sorted(used - shared['zh'])}"


def test_every_page_in_the_menu_has_a_module_and_a_name() -> None:
    app = (STATIC / "app.js").read_text()
    pages = re.findall(r"\{ id: '(\w+)', needs:", app)
    assert pages == [
        "chat",
        "approvals",
        "knowledge",
        "runs",
        "deployments",
        "router",
        "metrics",
        "demos",
        "keys",
    ]
    shared = _strings(STATIC / "app.js")
    for page in pages:
        assert (STATIC / "pages" / f"{page}.js").is_file(), page
        assert f"nav.{page}" in shared["zh"] and f"nav.{page}" in shared["en"]
