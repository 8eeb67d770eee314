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


def test_no_progress_bars_or_stderr_on_the_pages(built_book: Path):
    """Chapter pages show printed results and figures, not progress-bar refreshes or warnings (stderr)."""
    pages = {p.name: p.read_text(encoding="utf-8") for p in sorted((built_book / "chapters").glob("*.html"))}
    noisy = [name for name, text in pages.items()
             if 'class="output stderr' in text or re.search(r"\d(it/s|s/it)\]", text)]
    assert not noisy, f"pages with stderr output or progress bars: {noisy} (see nb_output_stderr in _config.yml)"


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


# ------------------------------------------------------------ real browser
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 # The network is off for the browser: every host name but 127.0.0.1 fails to resolve, and any
                 # other request goes to a proxy on a closed port (loopback, where the book is served, bypasses
                 # proxies). test_browser_has_no_network checks that this really blocks the network.
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9")
SCREENSHOTS = ROOT / "_build" / "screenshots"
# a math element, then (display equations) its equation number, then what MathJax left there
MATH_ELEMENT = re.compile(r'class="math notranslate nohighlight"[^>]*>\s*(?:<span class="eqno">.*?</span>\s*)?(.{0,16})',
                          re.S)
IMG_SRC = re.compile(r'<img[^>]+src="([^"]+)"')


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def served_book(built_book: Path):
    """Serve the built book over HTTP on localhost (as a reader's browser would load it)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_book))
    handler.log_message = lambda *args, **kwargs: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_chromium(chromium: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile (its own --user-data-dir) and the network off."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([chromium, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=180, cwd=cwd)


def rendered_dom(chromium: str, url: str) -> str:
    """Return the DOM of `url` after scripts ran (MathJax typesets on load), from headless Chromium."""
    proc = run_chromium(chromium, "--virtual-time-budget=30000", "--dump-dom", url)
    assert proc.returncode == 0 and "<html" in proc.stdout, f"chromium failed on {url}:\n{proc.stderr[-2000:]}"
    return proc.stdout


def _require_chromium() -> str:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium here; CI installs it (apt-get install chromium), see README")
    return chromium


def test_browser_has_no_network():
    """The flags the browser tests use really take the network away: a page on the internet fails to load
    (so the math and figure checks below pass offline, as the issue demands)."""
    chromium = _require_chromium()
    proc = run_chromium(chromium, "--virtual-time-budget=10000", "--dump-dom", "https://example.com/")
    assert "Example Domain" not in proc.stdout, "the browser reached the internet: the network-off flags do not work"
    assert "ERR_" in proc.stderr, f"expected a network error loading example.com, got:\n{proc.stderr[-1500:]}"


def test_every_page_renders_its_math_in_a_real_browser(built_book: Path, served_book: str):
    """In headless Chromium every math element of every chapter is typeset by the local MathJax, without
    errors, and every image a page shows exists in the built book."""
    chromium = _require_chromium()
    pages = [built_book / "book" / "notation.html", *sorted((built_book / "chapters").glob("*.html"))]
    problems, typeset = [], 0
    for page in pages:
        rel = page.relative_to(built_book).as_posix()
        dom = rendered_dom(chromium, f"{served_book}/{rel}")
        starts = MATH_ELEMENT.findall(dom)
        if not starts:
            problems.append(f"{rel}: no math element found (is it the right page?)")
        raw = [s for s in starts if not s.lstrip().startswith("<mjx-container")]
        if raw:
            problems.append(f"{rel}: {len(raw)} of {len(starts)} math elements not typeset, e.g. {raw[0]!r}")
        if "<mjx-merror" in dom:
            problems.append(f"{rel}: MathJax reported an error in a formula")
        typeset += len(starts) - len(raw)
        for src in IMG_SRC.findall(page.read_text(encoding="utf-8")):
            if src.startswith("data:"):
                continue
            if re.match(r"(https?:)?//", src) or not (page.parent / src.split("?")[0]).resolve().is_file():
                problems.append(f"{rel}: image {src[:80]} is missing or remote")
    print(f"headless Chromium: {typeset} math elements typeset on {len(pages)} pages")
    assert not problems, "\n".join(problems)


FIGURE = re.compile(r'<figure[^>]*id="([^"]+)"[^>]*>(.*?)</figure>', re.S)
PLOTTED_IMAGE = re.compile(r'<img[^>]*alt="([^"]*)"[^>]*src="([^"]*_images/[^"]+)"')


def test_every_chapter_shows_captioned_figures(built_book: Path):
    """Every chapter has at least one figure; every plotted image is a figure numbered within its chapter
    (Fig. 4.1, 4.2, ...) with a caption and an alt text that describes it (not its file name)."""
    problems = []
    for page in sorted((built_book / "chapters").glob("*.html")):
        html = page.read_text(encoding="utf-8")
        in_figures = set()
        for name, body in FIGURE.findall(html):
            images = PLOTTED_IMAGE.findall(body)
            caption = re.search(r'class="caption-text">(.*?)</span><a class="headerlink"', body, re.S)
            if not caption or len(re.sub(r"<[^>]+>", "", caption.group(1)).strip()) < 30:
                problems.append(f"{page.name}: figure {name} has no caption (or a very short one)")
            for alt, src in images:
                in_figures.add(src)
                if "_images/" in alt or alt.endswith(".png") or len(alt) < 10:
                    problems.append(f"{page.name}: figure {name} has alt text {alt!r}; describe the plot")
        chapter = re.match(r"0*(\d+[a-z]?)_", page.name).group(1)
        numbers = re.findall(r'class="caption-number">Fig\. ([^<]*?)\s*</span>', html)
        expected = [f"{chapter}.{i}" for i in range(1, len(numbers) + 1)]
        if numbers != expected:
            problems.append(f"{page.name}: figures numbered {numbers}, expected {expected} "
                            "(see book/_ext/chapter_figure_numbers.py)")
        plotted = PLOTTED_IMAGE.findall(html)
        if not plotted:
            problems.append(f"{page.name}: no figure at all")
        problems += [f"{page.name}: image {src} has no caption (cell metadata mystnb.figure.caption)"
                     for _alt, src in plotted if src not in in_figures]
    assert not problems, "\n".join(problems)


def test_screenshots_of_rendered_pages(built_book: Path, served_book: str):
    """Headless Chromium saves screenshots of the notation page and of the top of chapter 4 to
    _build/screenshots/ (to look at), and each shows a rendered page, not a blank or an error page.
    (A URL with a #fragment screenshots blank in headless Chromium, so pages are shot from the top.)"""
    from PIL import Image

    chromium = _require_chromium()
    targets = {"notation": "book/notation.html", "chapter4": "chapters/04_dpo_family.html"}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, rel in targets.items():
        path = SCREENSHOTS / f"{name}.png"
        path.unlink(missing_ok=True)
        proc = run_chromium(chromium, "--virtual-time-budget=30000", "--hide-scrollbars", "--window-size=1280,1600",
                            f"--screenshot={path}", f"{served_book}/{rel}")
        assert proc.returncode == 0 and path.is_file(), f"no screenshot of {rel}:\n{proc.stderr[-1500:]}"
        with Image.open(path) as image:
            pixels = image.convert("RGB")
            assert pixels.size == (1280, 1600), pixels.size
            colours = pixels.getcolors(maxcolors=1 << 20)
        commonest = max(count for count, _ in colours)
        assert len(colours) > 200 and commonest < 0.97 * 1280 * 1600, (
            f"screenshot {path} looks blank ({len(colours)} colours, {commonest} pixels of one colour)")
        print(f"screenshot saved: {path}")


# ------------------------------------------------------------ links and launch buttons
HREF = re.compile(r'href="([^"]+)"')
ELEMENT_ID = re.compile(r'\bid="([^"]+)"')


def _toc_notebooks() -> list[str]:
    """Return the chapter notebooks the table of contents lists, as repository paths."""
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    return [f"{name}.ipynb" for name in re.findall(r"file:\s*(chapters/\S+)", toc)]


def test_every_chapter_has_a_colab_button_for_its_own_notebook(built_book: Path):
    """Each chapter page offers "Open in Colab" for exactly its notebook, at a path that exists in the repo."""
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    repo = config["repository"]["url"].removeprefix("https://github.com/").rstrip("/")
    branch = config["repository"].get("branch", "main")
    notebooks = _toc_notebooks()
    assert len(notebooks) >= 10, notebooks
    problems = []
    for notebook in notebooks:
        assert (ROOT / notebook).is_file(), f"_toc.yml lists {notebook}, which does not exist"
        page = built_book / notebook.replace(".ipynb", ".html")
        html = page.read_text(encoding="utf-8")
        expected = f"https://colab.research.google.com/github/{repo}/blob/{branch}/{notebook}"
        links = set(re.findall(r'https://colab\.research\.google\.com/[^"]+', html))
        if links != {expected}:
            problems.append(f"{notebook}: Colab links {sorted(links)}, expected only {expected}")
    assert not problems, "\n".join(problems)


def test_internal_links_resolve(built_book: Path):
    """Every link from one page of the book to another reaches an existing page and, with a #fragment, an
    existing element on it (cross-references, citations, glossary terms, the table of contents)."""
    ids: dict[Path, set[str]] = {}

    def ids_of(page: Path) -> set[str]:
        if page not in ids:
            ids[page] = set(ELEMENT_ID.findall(page.read_text(encoding="utf-8")))
        return ids[page]

    broken, checked = [], 0
    for page in sorted(built_book.rglob("*.html")):
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        for href in HREF.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", href) or href.startswith("//"):
                continue  # external (https:, mailto:, javascript:) — checked elsewhere not to be assets
            path, _, fragment = href.partition("#")
            target = (page.parent / path.split("?")[0]).resolve() if path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.relative_to(built_book)} -> {href} (no such file)")
                continue
            checked += 1
            if fragment and target.suffix == ".html" and fragment not in ids_of(target):
                broken.append(f"{page.relative_to(built_book)} -> {href} (no element #{fragment})")
    print(f"{checked} internal links checked")
    assert checked > 500, f"only {checked} internal links found: is the book built?"
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken[:40])


def test_glossary_terms_are_defined_and_used(built_book: Path):
    html = (built_book / "book" / "glossary.html").read_text(encoding="utf-8")
    terms = re.findall(r'id="term-([^"]+)"', html)
    assert len(terms) >= 25, f"glossary has only {len(terms)} terms"
    unlinked = [p.name for p in sorted((built_book / "chapters").glob("*.html"))
                if not re.search(r'glossary\.html#term-', p.read_text(encoding="utf-8"))]
    assert not unlinked, f"chapters that link no glossary term (use {{term}}`...`): {unlinked}"


# ------------------------------------------------------------ library reference
def _public_modules() -> list[str]:
    import pkgutil

    import alignlib
    return sorted(m.name for m in pkgutil.walk_packages(alignlib.__path__, "alignlib.")
                  if not m.name.rsplit(".", 1)[-1].startswith("_"))


def test_library_reference_lists_every_public_module():
    """book/api.md documents every public module of alignlib (a new module must be added there)."""
    listed = set(re.findall(r"\.\. automodule:: (\S+)", (ROOT / "book" / "api.md").read_text(encoding="utf-8")))
    missing = [m for m in _public_modules() if m not in listed]
    assert not missing, f"add these modules to book/api.md (`.. automodule:: NAME` with `:members:`): {missing}"
    stale = sorted(listed - set(_public_modules()))
    assert not stale, f"book/api.md documents modules that no longer exist: {stale}"


def test_library_reference_documents_every_loss(built_book: Path):
    """The built reference page has an entry, with its docstring, for every public function of the losses."""
    import inspect

    import alignlib.losses as losses
    html = (built_book / "book" / "api.html").read_text(encoding="utf-8")
    anchors = set(ELEMENT_ID.findall(html))
    missing = []
    for module in _public_modules():
        if not module.startswith("alignlib.losses."):
            continue
        mod = __import__(module, fromlist=["_"])
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if fn.__module__ == module and not name.startswith("_") and f"{module}.{name}" not in anchors:
                missing.append(f"{module}.{name}")
    assert losses.__doc__ and not missing, f"functions missing from the library reference: {missing}"
    # Docstrings are shown verbatim (book/_ext/verbatim_docstrings.py): equation labels survive as written.
    assert "(eq-dpo-loss)" in html
