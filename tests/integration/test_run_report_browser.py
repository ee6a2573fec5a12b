"""report.html rendered by a real browser (Debian's chromium, headless): the loss plot and every sample image
must be drawn, from the page alone (no network: any external asset would be missing from the screenshot)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.run_report import render_run_report
from tests.run_reports import EPOCHS, SAMPLE_COLOURS, report_inputs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs a headless chromium: `apt-get install -y chromium` (make test installs it)",
)
LOSS_RED = (214, 39, 40)  # the loss line's stroke, #d62728
WINDOW = (1200, 2400)
SAMPLE_CSS_PX = 192


def _chromium(page: Path, profile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *arguments,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _box(
    image: Image.Image, colour: tuple[int, int, int], tolerance: int = 12
) -> tuple[int, tuple[int, ...]]:
    """How many pixels (every 2nd in each direction) have `colour`, and their bounding box (l, t, r, b)."""
    pixels = image.load()
    width, height = image.size
    count, xs, ys = 0, [], []
    for y in range(0, height, 2):
        for x in range(0, width, 2):
            if all(abs(a - b) <= tolerance for a, b in zip(pixels[x, y], colour, strict=True)):
                count += 1
                xs.append(x)
                ys.append(y)
    return count, (min(xs), min(ys), max(xs), max(ys)) if xs else ()


def test_the_report_draws_its_loss_plot_and_every_sample(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_run_report(report_inputs()), encoding="utf-8")
    shot = tmp_path / "report.png"

    result = _chromium(
        page, tmp_path / "profile", f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}"
    )

    assert shot.is_file(), result.stdout + result.stderr
    image = Image.open(shot).convert("RGB")
    red, plot = _box(image, LOSS_RED)
    assert red > 200, "the loss line is drawn"
    # The curve falls from the top-left to the bottom-right of the plot (loss = 0.2 / step + 0.05).
    pixels = image.load()
    left_column = [y for y in range(plot[1], plot[3] + 1) if pixels[plot[0] + 1, y] == LOSS_RED]
    right_column = [y for y in range(plot[1], plot[3] + 1) if pixels[plot[2] - 1, y] == LOSS_RED]
    assert left_column and right_column and min(left_column) < min(right_column)
    for colour in SAMPLE_COLOURS:
        seen, box = _box(image, colour)
        # Every epoch's image of this prompt, at SAMPLE_CSS_PX square (sampled every 2nd pixel each way).
        assert seen >= EPOCHS * (SAMPLE_CSS_PX // 2) ** 2 * 0.9, colour
        assert box[1] > plot[3], "the samples come after the plot"
        assert box[3] - box[1] >= EPOCHS * SAMPLE_CSS_PX - 10, "one row per epoch"


def test_the_browser_parses_the_plot_as_svg_and_keeps_every_image(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_run_report(report_inputs()), encoding="utf-8")

    result = _chromium(page, tmp_path / "profile", "--dump-dom")

    assert result.returncode == 0, result.stderr
    dom = result.stdout
    assert '<svg id="loss-curve"' in dom and '<polyline id="loss-line"' in dom
    assert dom.count('<img class="sample" src="data:image/png;base64,') == EPOCHS * len(SAMPLE_COLOURS)
