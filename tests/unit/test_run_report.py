"""report.html as a page: self-contained, with the plot, the samples by epoch, the links and the facts."""

from __future__ import annotations

import re

from lora_pipeline.run_report import MAX_PLOT_POINTS, loss_plot_svg, render_run_report, sample_grid
from lora_pipeline.training_metrics import LossPoint, parse_loss_log
from tests.run_reports import EPOCHS, SAMPLE_COLOURS, report_inputs


def test_the_page_loads_nothing_from_elsewhere() -> None:
    page = render_run_report(report_inputs())
    assert "<script" not in page and "<link" not in page and "@import" not in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources, "images and links are there"
    for source in sources:
        assert source.startswith(("data:image/png;base64,", "epochs/")), source


def test_samples_are_a_row_per_epoch_and_a_column_per_prompt() -> None:
    page = render_run_report(report_inputs())
    grid = page[page.index('<table id="samples">') :]
    grid = grid[: grid.index("</table>")]
    rows = re.findall(r"<tr><th>(epoch \d+)</th>(.*?)</tr>", grid)
    assert [label for label, _ in rows] == [f"epoch {e}" for e in range(1, EPOCHS + 1)]
    assert all(cells.count("<img") == len(SAMPLE_COLOURS) for _, cells in rows)


def test_per_epoch_loras_are_linked_where_download_puts_them() -> None:
    page = render_run_report(report_inputs())
    assert '<a href="epochs/bluebot-000001.safetensors">' in page
    assert "s3://bkt/runs/bluebot/r1/model/epochs/bluebot-000002.safetensors" in page


def test_trigger_words_warnings_and_costs_are_shown_escaped() -> None:
    page = render_run_report(report_inputs())
    assert "bluebot, &lt;b&gt;night&lt;/b&gt;" in page and "<b>night</b>" not in page
    assert "IMAGE_UPSCALED" in page and "&lt;small&gt;" in page
    assert "ROOT_FILE_IGNORED" in page, "info findings are listed too; only errors are left out"
    assert "less than $0.01" in page and "2 min 00 s" in page, "cost and billable time"
    assert "5 min 00 s, $0.01" in page, "the plan's estimate next to them"


def test_the_loss_plot_keeps_first_and_last_step_and_at_most_max_points() -> None:
    points = [LossPoint(step, 1, 1.0 / step) for step in range(1, 5001)]
    svg = loss_plot_svg(points)
    line = re.search(r'<polyline id="loss-line"[^>]* points="([^"]*)"', svg)
    assert line is not None
    coordinates = line[1].split()
    assert len(coordinates) <= MAX_PLOT_POINTS + 1
    assert coordinates[0].split(",")[0] == "48.0" and coordinates[-1].split(",")[0] == "672.0"


def test_the_loss_log_keeps_the_last_value_of_a_step_trained_again_after_a_resume() -> None:
    text = "\n".join(
        [
            '{"step": 1, "epoch": 1, "loss": 0.5}',
            '{"step": 2, "epoch": 1, "loss": 0.4}',
            "garbage",
            '{"step": 2, "epoch": 1, "loss": 0.3}',
            '{"step": 3, "epoch": null, "loss": NaN}',
        ]
    )
    assert parse_loss_log(text) == [LossPoint(1, 1, 0.5), LossPoint(2, 1, 0.3)]


def test_sample_names_are_read_after_the_output_name_even_when_it_looks_like_one() -> None:
    samples = {
        "my_000123_45_e000002_01_20261130120000_42.png": b"a",  # epoch 2, prompt 2 (with a seed suffix)
        "my_000123_45_000300_00_20261130120000.png": b"b",  # a step sample
        "my_000123_45_cover.png": b"c",  # not sd-scripts' name: shown, not placed
    }
    grid = sample_grid(samples, "my_000123_45")
    assert [label for label in re.findall(r"<tr><th>((?:epoch|step) \d+)</th>", grid)] == [
        "epoch 2",
        "step 300",
    ]
    assert "<th>prompt 1</th><th>prompt 2</th>" in grid
    assert grid.count("<img") == 3
