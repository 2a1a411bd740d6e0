"""The article's self-check: render it in headless Chromium at phone and desktop width and check what a reader
(and the WeChat editor) would hit.

- no horizontal overflow (nothing wider than the screen);
- every figure present and decoded;
- no English sentence in the zh edition outside names, code and citations;
- every number in the text found in ``report-data.json``.

``render`` loads the page in an iframe of the given width (headless Chromium will not make a window narrower than
500 px, an iframe can be 375 px) and reads the layout back through ``--dump-dom``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from lorafam.report.wechat import CITE_STYLE

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

_PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" src="%(src)s" style="width:%(width)dpx;height:900px;border:0"></iframe>
<script>
const cite = %(cite)s;
document.getElementById('f').addEventListener('load', () => {
  const w = document.getElementById('f').contentWindow, d = w.document, de = d.documentElement;
  const kind = (n) => {
    for (let e = n.parentElement; e; e = e.parentElement) {
      const s = e.getAttribute('style') || '';
      if (s.includes(cite)) return 'cite';
      if (e.tagName === 'CODE' || s.includes('white-space:pre-wrap')) return 'code';
    }
    return 'text';
  };
  const texts = {text: [], cite: [], code: []};
  const walk = d.createTreeWalker(d.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) texts[kind(n)].push(n.nodeValue);
  const wide = [...d.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > de.clientWidth + 0.5)
    .map(e => e.tagName + ': ' + (e.textContent || '').slice(0, 60));
  const imgs = [...d.images].map(i => ({src: (i.getAttribute('src') || '').slice(0, 60),
    ok: i.complete && i.naturalWidth > 0, width: i.getBoundingClientRect().width}));
  const r = {client: de.clientWidth, scroll: de.scrollWidth, wide: wide.slice(0, 20), imgs: imgs, texts: texts};
  const p = document.createElement('pre'); p.id = 'selfcheck'; p.textContent = JSON.stringify(r);
  document.body.appendChild(p);
});
</script></body></html>"""


def chromium() -> str | None:
    """The headless browser on this machine (setup installs ``chromium``), or None."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _run(args: list[str], timeout: int = 180) -> str:
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium not found (Debian: apt-get install -y chromium fonts-noto-cjk)")
    with tempfile.TemporaryDirectory() as profile:
        base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
        base += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
        base += ["--allow-file-access-from-files", f"--user-data-dir={profile}"]
        done = subprocess.run(base + args, capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout


def render(page: Path, width: int) -> dict[str, Any]:
    """Lay ``page`` out at ``width`` CSS px; its widths, images and text (split into text / cite / code)."""
    probe = page.parent / f".selfcheck-{width}.html"
    probe.write_text(_PROBE % {"src": page.name, "width": width, "cite": json.dumps(CITE_STYLE)}, encoding="utf-8")
    try:
        dom = _run(
            ["--window-size=1400,1000", "--virtual-time-budget=15000", "--dump-dom", probe.resolve().as_uri()]
        )
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'<pre id="selfcheck">(.*?)</pre>', dom, re.S)
    if not found:
        raise RuntimeError(f"the self-check probe did not report for {page.name} at {width} px")
    import html

    return json.loads(html.unescape(found.group(1)))


def screenshot(page: Path, out: Path, width: int, height: int) -> None:
    """A PNG of the page as a ``width``-px screen shows it (top ``height`` px)."""
    _run([f"--window-size={width},{height}", f"--screenshot={out}", page.resolve().as_uri()])


# ---------------------------------------------------------------------------------------------------------------
_WORD = r"[A-Za-z][A-Za-z0-9+'’\-]*"
ENGLISH_RUN = re.compile(rf"{_WORD}(?:[ ,:;]+{_WORD}){{3,}}")  # four or more English words in a row
NUMBER = re.compile(r"(?<![A-Za-z0-9_.])[-+−]?\d[\d,]*(?:\.\d+)?(?![A-Za-z0-9_])")


def english_sentences(texts: list[str], names: set[str]) -> list[str]:
    """Runs of four or more English words, after removing the allowed ``names`` (longest first)."""
    hits = []
    for t in texts:
        for name in sorted(names, key=len, reverse=True):
            t = t.replace(name, " ")
        hits += [m.group(0) for m in ENGLISH_RUN.finditer(t)]
    return hits


def numbers(texts: list[str]) -> list[str]:
    """Every number written in ``texts`` (signs and thousands separators kept as written)."""
    return [m.group(0) for t in texts for m in NUMBER.finditer(t)]


def data_values(record: Any) -> set[float]:
    """Every number in ``report-data.json``: numeric values, and numbers written inside its strings."""
    out: set[float] = set()

    def walk(x: Any) -> None:
        if isinstance(x, bool):
            return
        if isinstance(x, (int, float)):
            out.add(float(x))
        elif isinstance(x, str):
            out.update(float(_clean(n)) for n in NUMBER.findall(x))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(record)
    return out


def _clean(num: str) -> str:
    return num.replace(",", "").replace("−", "-").lstrip("+")


def unfound_numbers(written: list[str], values: set[float]) -> list[str]:
    """The written numbers that no value of the data rounds to (as a number, or as a percentage of a fraction)."""
    missing = []
    for raw in written:
        text = _clean(raw)
        x = float(text)
        places = len(text.split(".")[1]) if "." in text else 0
        tol = 0.5 * 10**-places + 1e-9
        if not any(abs(v - x) <= tol or abs(100 * v - x) <= tol for v in values):
            missing.append(raw)
    return missing
