"""The HTML page opens offline in a real browser: render it in headless Chromium and look at the screenshot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lorafam.report.build import build_report
from tests.unit.test_report_build import results  # noqa: F401 - the synthetic results fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(page: Path, out: Path, tmp: Path, height: int = 7000) -> None:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp / 'profile'}",
        "--hide-scrollbars",
        f"--window-size=900,{height}",
        f"--screenshot={out}",
        page.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def _count(pixels: list[tuple[int, int, int]], rgb: tuple[int, int, int], tol: int = 12) -> int:
    return sum(1 for p in pixels if all(abs(a - b) <= tol for a, b in zip(p, rgb)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (Debian: apt-get install -y chromium)")
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_html_renders_tables_and_plots(results: Path, tmp_path: Path, lang: str) -> None:  # noqa: F811
    from PIL import Image

    paths = build_report(results, tmp_path / "out", bench_dir=None, editions=("lab",))
    shot = tmp_path / f"{lang}.png"
    screenshot(paths[f"{lang}.html"], shot, tmp_path)
    img = Image.open(shot).convert("RGB")
    small = img.resize((img.width // 2, img.height // 2), Image.NEAREST)
    pixels = [tuple(p) for p in np.asarray(small).reshape(-1, 3).tolist()]
    ink = sum(1 for p in pixels if sum(p) < 600) / len(pixels)
    assert ink > 0.02, f"page looks blank ({ink:.3%} non-white)"
    assert _count(pixels, (0xF0, 0xF4, 0xFA), 3) > 400, "no table header cells visible"
    assert _count(pixels, (0x1F, 0x6F, 0xEB)) > 200, "no plot ink (palette blue) visible"
    assert _count(pixels, (0x0B, 0x3D, 0x91)) > 50, "no headings visible"
