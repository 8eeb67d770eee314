"""The book builds, warning-free, with math that renders offline.

Builds the whole Jupyter Book (chapter notebooks executed in smoke mode) into a
temporary folder, so the user's own ``_build/html`` is left alone. MathJax is
fetched from the npm registry into ``_build/npm`` first if it is missing, as
the README's build command does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATHJAX_DIR = ROOT / "_build" / "npm" / "node_modules" / "mathjax"
# Anything that would make the rendered book fetch code from the network.
# (The book itself may print `npm install mathjax@3`; only a URL counts.)
CDN_PATTERNS = (r"cdn\.jsdelivr", r"//[^\s\"'<>]*mathjax@", r"cdnjs\.cloudflare", r"polyfill\.io")
EXTERNAL_ASSET = re.compile(
    r"<script[^>]+src=[\"'](?:https?:)?//|<link[^>]+rel=[\"']stylesheet[\"'][^>]+href=[\"'](?:https?:)?//"
)
MATHJAX_SCRIPT = re.compile(r"<script[^>]+src=[\"']([^\"']*tex-chtml[^\"']*)[\"']")


def _jupyter_book() -> str:
    """Return the jupyter-book executable of this interpreter's environment."""
    candidate = Path(sys.executable).with_name("jupyter-book")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("jupyter-book")
    if found is None:
        pytest.fail("jupyter-book is not installed: pip install -r requirements.txt")
    return found


def _ensure_mathjax() -> None:
    """Install MathJax 3 from npm into _build/npm, exactly as the README does."""
    if (MATHJAX_DIR / "es5" / "tex-chtml-full.js").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to fetch MathJax for the book build (install Node.js)")
    subprocess.run(
        [npm, "install", "--no-save", "--prefix", "_build/npm", "mathjax@3"],
        cwd=ROOT,
        check=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    """Build the book once in smoke mode; return its HTML folder."""
    _ensure_mathjax()
    out = tmp_path_factory.mktemp("book")
    env = {**os.environ, "ALIGNLIB_SMOKE": "1"}
    proc = subprocess.run(
        # -W --keep-going: any Sphinx warning fails the build, all reported at once.
        [_jupyter_book(), "build", str(ROOT), "--path-output", str(out), "-W", "--keep-going"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, (
        f"jupyter-book build failed (exit {proc.returncode}):\n"
        f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    )
    return out / "_build" / "html"


def test_pages_exist(built_book: Path):
    assert (built_book / "index.html").exists()
    assert (built_book / "book" / "intro.html").exists()
    assert (built_book / "book" / "notation.html").exists()
    assert (built_book / "chapters" / "01_pocket_world.html").exists()


def test_references_rendered(built_book: Path):
    html = (built_book / "book" / "references.html").read_text(encoding="utf-8")
    assert 'role="doc-biblioentry"' in html, "no bibliography entry rendered"
    assert "2310.06147" in html, "sun2023rlera (cited in the intro) is missing"
    intro = (built_book / "book" / "intro.html").read_text(encoding="utf-8")
    assert "references.html#id" in intro, "intro citations do not link to the bibliography"


def test_mathjax_is_served_locally(built_book: Path):
    page = built_book / "book" / "notation.html"
    srcs = MATHJAX_SCRIPT.findall(page.read_text(encoding="utf-8"))
    assert srcs, "no MathJax script on a page full of equations"
    for src in srcs:
        assert not re.match(r"(https?:)?//", src), f"MathJax loaded from the network: {src}"
        assert "_static/" in src, src
        local = (page.parent / src.split("?")[0]).resolve()
        assert local.is_file(), f"MathJax script {src} is not in the built book"
    # MathJax finds its fonts relative to its own script.
    fonts = built_book / "_static" / "mathjax" / "es5" / "output" / "chtml" / "fonts" / "woff-v2"
    assert any(fonts.glob("MathJax_Main-Regular.woff")), "MathJax fonts were not copied"


def test_no_cdn_urls(built_book: Path):
    offenders = []
    for path in built_book.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        for pattern in CDN_PATTERNS:
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(built_book)}: {pattern}")
        if EXTERNAL_ASSET.search(text):
            offenders.append(f"{path.relative_to(built_book)}: external script or stylesheet")
    assert not offenders, "network assets in the built book:\n" + "\n".join(offenders)
