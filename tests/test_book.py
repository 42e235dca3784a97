"""The book (`make book`): built from the chapters' stored outputs, every page opens offline in headless Chromium with
its figures and its math, the parts list the chapters in order, and every link inside the site resolves.

Needs Debian's chromium (or GMLIB_CHROMIUM=path): skipped without it, a failure under CI or GMLIB_REQUIRE_BROWSER.
`python tests/test_book.py results/book` takes the README's screenshots of an already built `make book`.
"""
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from helpers.chapters import CHAPTERS, PARTS

ROOT = Path(__file__).resolve().parents[1]
# without these a headless Chromium with no network waits on refused connections
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = {"file", "data", "blob", "about"}
REQUIRED = bool(os.environ.get("CI") or os.environ.get("GMLIB_REQUIRE_BROWSER"))


def _missing(what):
    if REQUIRED:
        pytest.fail(f"{what} (needed by the book test under CI / GMLIB_REQUIRE_BROWSER)")
    pytest.skip(what)


def chromium():
    path = os.environ.get("GMLIB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        _missing("no chromium: apt-get install -y --no-install-recommends chromium, or set GMLIB_CHROMIUM")
    return path


def chapter(nb_path):
    """What the page of one notebook must show, read from its stored cells."""
    cells = json.loads(nb_path.read_text())["cells"]
    prose = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    figures = sum("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
                  for c in cells for o in c.get("outputs", []))
    return {"title": re.search(r"^# (.+)$", prose, re.M).group(1).strip(), "figures": figures, "math": "$" in prose}


def build(out):
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
                           str(ROOT / "book"), str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the book does not build:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="session")
def site(tmp_path_factory, worker_id):
    """A fresh build, shared by the xdist workers of one run (the first builds, the others wait on the lock)."""
    for module in ("sphinx", "myst_nb", "sphinx_book_theme", "playwright"):
        try:
            __import__(module)
        except ImportError:
            _missing(f"{module} is not installed: pip install -e '.[book]'")
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    with open(root / "book.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out, built = root / "book" / "html", root / "book" / "built"
        if not built.exists():
            build(out)
            built.touch()
    return out


def test_book_builds_a_page_per_chapter(site):
    assert sorted(p.stem for p in (site / "notebooks").glob("*.html")) == [p.stem for p in CHAPTERS]
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()


@pytest.fixture(scope="session")
def browser(site):
    from playwright.sync_api import sync_playwright

    path = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """One page loaded in a fresh browser context, with every request, failed load and script error it made."""

    def __init__(self, browser, url, viewport=None):
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.requests, self.failed, self.errors = [], [], []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})"))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url, wait_until="load")
        # MathJax typesets after load; a page without math resolves at once
        self.page.evaluate("window.MathJax && MathJax.startup ? MathJax.startup.promise : null")

    def js(self, expression):
        return self.page.evaluate(expression)

    def close(self):
        self.context.close()

    def assert_offline_and_clean(self):
        remote = [u for u in self.requests if urlsplit(u).scheme not in LOCAL_SCHEMES]
        assert not remote, f"requests that leave the machine: {remote}"
        assert not self.failed, f"resources that did not load: {self.failed}"
        assert not self.errors, f"script errors: {self.errors}"


def links(page):
    return page.js("Array.from(document.querySelectorAll('a[href]'), a => a.href)")


def assert_links_resolve(page, site):
    """Every link into the site names an existing file, and an anchor that exists in it."""
    texts, broken = {}, []
    for href in links(page):
        url = urlsplit(href)
        if url.scheme != "file":
            continue
        target = Path(unquote(url.path))
        if not target.is_file() or site not in target.parents:
            broken.append(href)
        elif url.fragment and target.suffix == ".html":
            text = texts.setdefault(target, target.read_text())
            if f'id="{unquote(url.fragment)}"' not in text:
                broken.append(href)
    assert not broken, f"links that do not resolve: {broken}"


@pytest.fixture(scope="session")
def landing(browser, site):
    page = Page(browser, (site / "index.html").as_uri())
    yield page
    page.close()


def test_landing_page_lists_the_parts_and_their_chapters(landing, site):
    landing.assert_offline_and_clean()
    parts = landing.js("""Array.from(document.querySelectorAll('.bd-sidebar-primary p.caption'), p => [
        p.textContent.trim(),
        Array.from(p.nextElementSibling.querySelectorAll('a'), a => a.getAttribute('href'))])""")
    assert [name for name, _ in parts] == [f"Part {part}" for part in PARTS]
    for (name, hrefs), numbers in zip(parts, PARTS.values()):
        names = [Path(h).stem for h in hrefs]
        assert [n[:2] for n in names] == numbers, f"{name}: {names}"
    assert {Path(h).stem for _, hrefs in parts for h in hrefs} == {p.stem for p in CHAPTERS}
    assert_links_resolve(landing, site)


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_page_renders_offline(browser, site, nb):
    want = chapter(nb)
    page = Page(browser, (site / "notebooks" / f"{nb.stem}.html").as_uri())
    try:
        page.assert_offline_and_clean()
        title = page.js("document.querySelector('article h1').textContent").strip().rstrip("#")
        assert title.replace("\u2019", "'") == want["title"]  # Sphinx's smart quotes

        images = page.js("""Array.from(document.querySelectorAll('article img'),
                                       i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])""")
        assert all(ok for _, ok in images), f"figures that did not load: {[s for s, ok in images if not ok]}"
        assert len(images) >= want["figures"], f"{len(images)} figures shown, {want['figures']} stored"

        math = page.js("""[document.querySelectorAll('article .math').length,
                           document.querySelectorAll('article .math:not(:has(mjx-container))').length,
                           document.querySelectorAll('mjx-merror').length]""")
        if want["math"]:
            assert math[0] > 0, "the chapter writes math but the page has none"
        assert math[1] == 0, f"{math[1]} of {math[0]} formulas not typeset"
        assert math[2] == 0, f"{math[2]} TeX errors"
        # prose only: a `$` left outside code is a formula MyST did not see
        prose = page.js("""(() => { const a = document.querySelector('article').cloneNode(true);
            a.querySelectorAll('pre, code, mjx-container, script, .cell_output').forEach(e => e.remove());
            return a.textContent; })()""")
        assert "$" not in prose, f"raw TeX in the text: ...{prose[max(prose.find('$') - 60, 0):][:120]}..."

        assert_links_resolve(page, site)
        prev_next = page.js("""[document.querySelector('a.left-prev')?.getAttribute('href'),
                                document.querySelector('a.right-next')?.getAttribute('href')]""")
        i = CHAPTERS.index(nb)
        assert Path(prev_next[0]).stem == (CHAPTERS[i - 1].stem if i else "index")
        assert (Path(prev_next[1]).stem if prev_next[1] else None) == \
               (CHAPTERS[i + 1].stem if i + 1 < len(CHAPTERS) else None)
    finally:
        page.close()


def test_search_finds_a_chapter_offline(browser, site):
    page = Page(browser, (site / "search.html").as_uri() + "?q=Weiszfeld")
    try:
        page.page.wait_for_selector("#search-results ul.search li a", timeout=30_000)
        page.assert_offline_and_clean()
        hits = page.js("Array.from(document.querySelectorAll('#search-results ul.search li a'), a => a.href)")
        assert any("01_geometric_median" in h for h in hits), hits
    finally:
        page.close()


def screenshots(site, out):
    """The README's two pictures: the landing page, and chapter 01 at its first figure with formulas below it."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        for name, url, scroll in [
            ("landing", site / "index.html", ""),
            ("chapter-01", site / "notebooks" / "01_geometric_median.html", """
                const y = e => e.getBoundingClientRect().top + scrollY, below = e => y(e) + e.offsetHeight;
                const maths = Array.from(document.querySelectorAll('article .math'));
                const img = Array.from(document.querySelectorAll('article img')).find(
                    i => maths.some(m => y(m) > below(i) && y(m) < below(i) + 400));
                scrollTo(0, y(img) - 120);"""),
        ]:
            page = Page(browser, url.as_uri(), viewport={"width": 1400, "height": 1000})
            page.js(f"(() => {{ {scroll} }})()")
            page.page.screenshot(path=str(out / f"{name}.png"))
            page.close()
        browser.close()


if __name__ == "__main__":
    screenshots(ROOT / "book" / "_build" / "html", Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "results/book")
