"""The built book in a real browser: headless Chromium opens every page and checks what a reader gets.

Checks, on every HTML page of the book: no JavaScript error (uncaught exception, console.error,
or a page resource of the book that failed to load); every <img> loaded; every link to a page or
file of the book resolves, anchors included. On chapter pages: the Colab launch button opens
that chapter's notebook in the repository set in _config.yml. On pages with equations: MathJax
typeset them all, with no raw TeX left and no TeX error. Dropdowns (togglebutton, sphinx-design)
open on a click and show their content. Three screenshots are saved under _build/screenshots/.

What it needs, and how it gets it:

* Chromium: Debian's ``chromium``. When it is not on PATH and the test runs as root, the
  session fixture runs ``apt-get update && apt-get install -y chromium``; otherwise it skips.
* MathJax: the book's pages load MathJax 3 from a CDN, which a test must not rely on. The test
  build (``_build/browser/``, separate from ``_build/html``, incremental between runs) uses a local
  copy instead: ``npm install mathjax@3.2.2`` into ``_build/browser/mathjax/`` (npm's registry,
  once), served from ``_static/mathjax/`` through a ``--config`` copy of _config.yml with
  ``mathjax_path`` and ``html_static_path`` added. The real book is built as before.
* The network: Chromium resolves no host but 127.0.0.1, so nothing outside the machine is
  fetched. What a page asks of another host (the ipywidgets manager and require.js on the chapters
  with sliders) fails at once; such failures are listed in the output, not counted as errors.

Deselect with ``-m "not browser"`` (the marker is registered in tests/conftest.py).
"""
from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from _browser import BrowserError, Chromium, StaticServer, find_chromium

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build" / "browser"
SCREENSHOTS = ROOT / "_build" / "screenshots"
MATHJAX_VERSION = "3.2.2"
MATHJAX_ENTRY = "mathjax/es5/tex-mml-chtml.js"  # under _static/, as Sphinx reads mathjax_path

# Errors that come from the book's tool chain, not from the book, each with its cause. An error is
# forgiven only when its text contains the key; everything else fails the test.
KNOWN_UPSTREAM = {
    "Identifier 'THEBE_JS_URL' has already been declared": (
        "Sphinx 7.4 writes sphinx-thebe's inline config <script> twice: sphinx-thebe registers it "
        "with app.add_js_file(None, body=...) after the builder is made, and the builder adds the "
        "registry's copy again as '' (not equal to None), so the second copy redeclares its consts. "
        "Harmless: the first copy has run, and thebe is off in this book."),
}


# -- fixtures: chromium, MathJax, the build, the server, the browser -----------------------------
@pytest.fixture(scope="session")
def chromium_executable():
    """Debian's chromium: found on PATH, else installed with apt-get when running as root."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and apt-get cannot install it here (not root): "
                    "run `apt-get update && apt-get install -y chromium`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"`{' '.join(command)}` failed: {(proc.stderr or proc.stdout)[-800:]}")
    found = find_chromium()
    if not found:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    return found


@pytest.fixture(scope="module")
def mathjax_modules():
    """A local MathJax 3 (npm's `mathjax` package): the node_modules folder that holds it."""
    modules = BUILD / "mathjax" / "node_modules"
    if not (modules / "mathjax" / "es5" / "tex-mml-chtml.js").is_file():
        npm = shutil.which("npm")
        if not npm:
            pytest.skip("npm is needed once to fetch a local copy of MathJax (npm install mathjax@3)")
        proc = subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix",
                               str(BUILD / "mathjax"), f"mathjax@{MATHJAX_VERSION}"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not (modules / "mathjax" / "es5" / "tex-mml-chtml.js").is_file():
            pytest.skip(f"npm could not install mathjax@{MATHJAX_VERSION}: {proc.stderr[-800:]}")
    return modules


@pytest.fixture(scope="module")
def book(mathjax_modules):
    """The book, built into _build/browser/_build/html with the local MathJax; its config."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx_config = config.setdefault("sphinx", {}).setdefault("config", {})
    sphinx_config["mathjax_path"] = MATHJAX_ENTRY
    # html_static_path entries are copied into _static/: this one brings _static/mathjax/.
    sphinx_config["html_static_path"] = list(sphinx_config.get("html_static_path", [])) + [str(mathjax_modules)]
    BUILD.mkdir(parents=True, exist_ok=True)
    test_config = BUILD / "_config.yml"
    test_config.write_text(yaml.safe_dump(config, sort_keys=False))
    jb = Path(sys.executable).parent / "jupyter-book"
    command = [str(jb) if jb.exists() else "jupyter-book", "build", str(ROOT), "--path-output", str(BUILD),
               "--config", str(test_config), "--keep-going"]
    tic = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    html = BUILD / "_build" / "html"
    assert (html / "_static" / MATHJAX_ENTRY).is_file(), "the local MathJax was not copied into _static"
    return {"html": html, "config": config, "seconds": time.perf_counter() - tic}


@pytest.fixture(scope="module")
def server(book):
    srv = StaticServer(book["html"])
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def browser(chromium_executable, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    chrome = Chromium(chromium_executable, profile, log=profile.parent / "chromium.log")
    yield chrome
    chrome.close()


# -- what the browser reads from a page ---------------------------------------------------------
VISIBLE_JS = """(el) => { if (!el) return false; const r = el.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && el.checkVisibility({opacityProperty: true, visibilityProperty: true}); }"""

PAGE_FACTS_JS = """(() => {
  const skip = new Set(["PRE", "CODE", "SCRIPT", "STYLE", "TEXTAREA", "MJX-CONTAINER", "NOSCRIPT"]);
  const rawTex = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {acceptNode(node) {
    for (let p = node.parentElement; p; p = p.parentElement) if (skip.has(p.tagName)) return NodeFilter.FILTER_REJECT;
    return NodeFilter.FILTER_ACCEPT; }});
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const t = n.textContent;
    if (/\\$\\$|\\\\\\(|\\\\\\)|\\\\\\[|\\\\\\]/.test(t)) rawTex.push(t.trim().slice(0, 80));
  }
  return {
    title: document.title,
    links: Array.from(document.querySelectorAll("a[href]"), a => a.href),
    images: Array.from(document.images, i => ({src: i.currentSrc || i.src, complete: i.complete,
                                               width: i.naturalWidth})),
    colab: Array.from(document.querySelectorAll('a[href*="colab.research.google.com"]'), a => a.href),
    mathElements: document.querySelectorAll(".math").length,
    mathUnrendered: Array.from(document.querySelectorAll(".math"))
        .filter(m => !m.querySelector("mjx-container")).map(m => m.textContent.trim().slice(0, 80)),
    mjxContainers: document.querySelectorAll("mjx-container").length,
    // TeX MathJax could not parse (merror), and unknown macros, which its "noundefined"
    // extension shows as red text: the assistive MathML holds them as <mtext mathcolor="red">.
    mathErrors: Array.from(document.querySelectorAll("mjx-merror"),
                           e => e.getAttribute("data-mjx-error") || e.textContent.slice(0, 80)).concat(
        Array.from(document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]'), e => e.textContent)
             .filter(t => t.startsWith("\\\\")).map(t => "undefined macro " + t)),
    rawTex: rawTex.slice(0, 10),
    ids: Array.from(document.querySelectorAll("[id]"), e => e.id),
  };
})()"""

TOGGLES_JS = """(() => {
  // togglebutton: admonitions with class "dropdown"/"toggle" (sphinx-exercise solutions too) get
  // a clickable title. Other ".toggle" blocks, sphinx-design dropdowns and myst-nb's hidden cells
  // are <details> elements. Those shown open from the start are no test of opening: left out.
  const found = [];
  document.querySelectorAll(".admonition.toggle:not(.toggle-shown)").forEach((el, i) => {
    if (!el.id) el.id = "browser-test-toggle-" + i;
    found.push({kind: "togglebutton", id: el.id, click: "#" + CSS.escape(el.id) + " > .admonition-title",
                content: "#" + CSS.escape(el.id) + " > :not(.admonition-title)"});
  });
  document.querySelectorAll("article details:not([open])").forEach((el, i) => {
    if (!el.id) el.id = "browser-test-details-" + i;
    const kind = el.classList.contains("sd-dropdown") ? "sphinx-design"
        : el.classList.contains("toggle-details") ? "togglebutton-details" : "details";
    found.push({kind,
                id: el.id, click: "#" + CSS.escape(el.id) + " > summary",
                content: "#" + CSS.escape(el.id) + " > :not(summary)"});
  });
  return found;
})()"""


def _all_visible(selector: str) -> str:
    """JavaScript: true when ``selector`` matches something and every match is visible."""
    return (f"(() => {{ const visible = {VISIBLE_JS};"
            f" const els = Array.from(document.querySelectorAll({json.dumps(selector)}));"
            " return els.length > 0 && els.every(visible); })()")


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.refresh: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        if tag == "meta" and (attrs.get("http-equiv") or "").lower() == "refresh":
            content = attrs.get("content") or ""
            at = content.lower().find("url=")
            self.refresh = content[at + 4:].strip() if at >= 0 else None


def _static_ids(path: Path, cache: dict) -> set[str]:
    if path not in cache:
        parser = _Ids()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = parser.ids
    return cache[path]


def _pages(html_root: Path) -> list[str]:
    """Every page of the build, as paths relative to its root (asset folders left out)."""
    pages = []
    for path in sorted(html_root.rglob("*.html")):
        relative = path.relative_to(html_root)
        if relative.parts[0] in ("_static", "_sources", "_images") or relative.as_posix() == "index.html":
            continue
        pages.append(relative.as_posix())
    return pages


def _chapters() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [entry["file"] for entry in toc["chapters"] if entry["file"].startswith("notebooks/")]


def _expected_colab(config: dict, chapter: str) -> str:
    repository = config["repository"]
    owner_repo = urlsplit(repository["url"]).path.strip("/").removesuffix(".git")
    prefix = (repository.get("path_to_book") or "").strip("/")
    path = f"{prefix}/{chapter}.ipynb" if prefix else f"{chapter}.ipynb"
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{repository.get('branch', 'main')}/{path}"


def _is_problem(problem: dict, base: str) -> bool:
    """A problem that counts: not a request to another host (offline here), not favicon.ico,
    not a known upstream error."""
    if problem["kind"].startswith("log:network") and problem["url"] and not problem["url"].startswith(base):
        return False
    if problem["url"].endswith("/favicon.ico"):  # asked for by the browser itself, not by the page
        return False
    return not any(key in problem["text"] for key in KNOWN_UPSTREAM)


# -- one visit of every page; the tests below read its report ----------------------------------------
@pytest.fixture(scope="module")
def visit(book, server, browser, request):
    html_root = book["html"]
    pages = _pages(html_root)
    page = browser.new_page()
    report = {}
    screenshots = {}
    tic = time.perf_counter()
    for name in pages:
        static_math = 'class="math' in (html_root / name).read_text(encoding="utf-8", errors="replace")
        page.goto(server.url(name))
        page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
        page.wait_for("Array.from(document.images).every(i => i.complete)", timeout=30)
        if static_math:
            page.wait_for("window.MathJax && MathJax.startup && MathJax.startup.promise"
                          " && MathJax.startup.promise.then(() => true)", timeout=60)
        page.evaluate("document.fonts.ready.then(() => true)")
        facts = page.evaluate(PAGE_FACTS_JS)
        facts["static_math"] = static_math
        if name == "notebooks/02_maml.html" or (name.startswith("notebooks/") and "chapter" not in screenshots):
            page.evaluate("window.scrollTo(0, 0)")
            screenshots["chapter"] = page.screenshot(SCREENSHOTS / "chapter_top.png")
        if name == "book/notation.html" or (static_math and "math" not in screenshots):
            page.evaluate("(() => { const m = document.querySelector('div.math mjx-container')"
                          " || document.querySelector('mjx-container');"
                          " if (m) m.scrollIntoView({block: 'center'}); })()")
            screenshots["math"] = page.screenshot(SCREENSHOTS / "maths.png")
        toggles = []
        for toggle in page.evaluate(TOGGLES_JS):
            before = page.evaluate(_all_visible(toggle["content"]))
            try:
                page.click(toggle["click"])
                page.wait_for(_all_visible(toggle["content"]), timeout=5)
                why = ""
            except BrowserError as err:
                why = str(err)
            after = page.evaluate(_all_visible(toggle["content"]))
            toggles.append({**toggle, "hidden_before": not before, "visible_after": after, "why": why})
            if after and "toggle" not in screenshots:
                time.sleep(0.3)  # let the opening transition finish before the picture
                page.evaluate(f"document.getElementById({json.dumps(toggle['id'])})"
                              ".scrollIntoView({block: 'center'})")
                screenshots["toggle"] = page.screenshot(SCREENSHOTS / "toggle_open.png")
        facts["toggles"] = toggles
        page.drain(0.5)  # late errors: MathJax components, fonts, async scripts
        facts["problems"] = list(page.problems)
        report[name] = facts
    seconds = time.perf_counter() - tic
    external = sorted({p["url"] for facts in report.values() for p in facts["problems"]
                       if not _is_problem(p, server.base) and p["url"] and not p["url"].startswith(server.base)})
    known = sorted({key for facts in report.values() for p in facts["problems"] for key in KNOWN_UPSTREAM
                    if key in p["text"]})
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nbook built for the browser in {book.get('seconds', 0):.1f} s: {html_root}")
        print(f"browser: {len(pages)} pages in {seconds:.1f} s")
        for kind in ("chapter", "math", "toggle"):
            if kind in screenshots:
                print(f"screenshot ({kind}): {screenshots[kind]}")
        for url in external:
            print(f"not loaded, outside this machine (not checked offline): {url}")
        for key in known:
            print(f"known upstream error, not counted: {key}")
    return {"pages": report, "screenshots": screenshots, "server": server, "html": html_root,
            "config": book["config"]}


# -- the checks -------------------------------------------------------------------------------------
def test_every_page_was_opened(visit):
    pages = visit["pages"]
    chapters = _chapters()
    assert chapters, "_toc.yml lists no chapter"
    for doc in ["book/intro", *chapters]:
        assert f"{doc}.html" in pages, f"{doc}.html was not built"
    refresh = _Ids()
    refresh.feed((visit["html"] / "index.html").read_text())
    assert refresh.refresh and (visit["html"] / refresh.refresh).is_file(), "index.html redirects nowhere"


def test_no_javascript_errors(visit):
    base = visit["server"].base
    errors = [f"{name}: [{p['kind']}] {p['text']} ({p['url']})"
              for name, facts in visit["pages"].items() for p in facts["problems"] if _is_problem(p, base)]
    failed = [f"HTTP {code} {path}" for code, path in visit["server"].failed if path != "/favicon.ico"]
    assert not errors and not failed, "\n".join(errors + failed)


def test_every_image_loads(visit):
    broken = [f"{name}: {img['src']}" for name, facts in visit["pages"].items() for img in facts["images"]
              if not (img["complete"] and img["width"] > 0)]
    assert not broken, "images that did not load:\n" + "\n".join(broken)
    assert sum(len(facts["images"]) for facts in visit["pages"].values()) > 0


def test_no_broken_internal_link(visit):
    server, pages, cache = visit["server"], visit["pages"], {}
    broken = []
    checked = 0
    for name, facts in pages.items():
        for href in facts["links"]:
            target = server.path_of(href)
            if target is None:
                continue  # another origin: not checked offline
            checked += 1
            fragment = urlsplit(href).fragment
            if not target.is_file():
                broken.append(f"{name}: {href} (no such file)")
            elif fragment and target.suffix == ".html":
                same_page = target == server.root / name
                ids = _static_ids(target, cache) | (set(facts["ids"]) if same_page else set())
                if fragment not in ids:
                    broken.append(f"{name}: {href} (no anchor #{fragment})")
    assert checked > 0
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_colab_button_opens_the_chapter(visit):
    for chapter in _chapters():
        expected = _expected_colab(visit["config"], chapter)
        found = visit["pages"][f"{chapter}.html"]["colab"]
        assert expected in found, f"{chapter}: the Colab button should open {expected}; found {found}"
        assert expected.startswith("https://colab.research.google.com/github/")


def test_dropdowns_open_on_click(visit):
    toggles = [(name, t) for name, facts in visit["pages"].items() for t in facts["toggles"]]
    assert toggles, "no page has a dropdown (book/teacher.md has one: was it built?)"
    assert any(name == "book/teacher.html" for name, _ in toggles)
    for name, toggle in toggles:
        assert toggle["hidden_before"], f"{name}: {toggle['kind']} #{toggle['id']} was open before the click"
        assert toggle["visible_after"], (f"{name}: {toggle['kind']} #{toggle['id']} did not open on a click"
                                         f" {toggle['why']}")


def test_math_is_rendered(visit):
    with_math = {name: facts for name, facts in visit["pages"].items() if facts["static_math"]}
    assert "book/notation.html" in with_math
    for name, facts in with_math.items():
        assert facts["mjxContainers"] > 0, f"{name}: MathJax rendered nothing"
        assert not facts["mathUnrendered"], f"{name}: TeX left as text: {facts['mathUnrendered'][:5]}"
        assert not facts["rawTex"], f"{name}: TeX delimiters left in the text: {facts['rawTex'][:5]}"
        assert not facts["mathErrors"], f"{name}: MathJax could not typeset: {facts['mathErrors'][:5]}"


def test_screenshots_saved(visit):
    shots = visit["screenshots"]
    assert set(shots) == {"chapter", "math", "toggle"}, shots
    for path in shots.values():
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path


def test_markdown_tables_in_outputs_render_as_tables(book):
    """Tables that cells display as Markdown (mlcourse.notebook.table) must be HTML tables in the
    book, not rows of pipes (myst-nb's default CommonMark renderer has no tables, and a bare '|'
    inside a cell ends it)."""
    import re

    separator = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+\s*$", re.M)
    raw = re.compile(r"\|\s*(?:-{3,}|\u2014|\u2013)+:?\s*\|")  # Sphinx turns --- into a dash
    html_root = book["html"]
    for chapter in _chapters():
        nb = json.loads((ROOT / f"{chapter}.ipynb").read_text())
        in_outputs = sum(len(separator.findall("".join(o.get("data", {}).get("text/markdown", ""))))
                         for c in nb["cells"] for o in c.get("outputs", []))
        in_text = sum(len(separator.findall("".join(c["source"])))
                      for c in nb["cells"] if c["cell_type"] == "markdown")
        page = (html_root / f"{chapter}.html").read_text(encoding="utf-8")
        assert not raw.search(page), f"{chapter}: a Markdown table is shown as raw text"
        assert page.count("<table") >= in_outputs + in_text, (chapter, page.count("<table"), in_outputs, in_text)
