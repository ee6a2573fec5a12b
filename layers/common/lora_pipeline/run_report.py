"""`runs/<dataset>/<run>/report.html`: one self-contained page about a finished run.

It shows the trigger words, the plan, the loss curve (inline SVG), the samples of each epoch side by side
(base64 images), the per-epoch LoRAs, the validation warnings, and the timings and cost. Nothing is loaded
from elsewhere: no scripts, stylesheets, fonts or images outside the page, so it opens from S3, from an
email link or from a disk the same way.

Links to the per-epoch LoRAs are relative (`epochs/<name>`): they work next to the files
`lora-pipeline download --epochs` writes; the page also gives each file's S3 URI.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from lora_pipeline.job_facts import JobFacts
from lora_pipeline.manifest import Manifest
from lora_pipeline.notifications import duration
from lora_pipeline.plan import Plan
from lora_pipeline.problems import Problem, Severity
from lora_pipeline.training_metrics import LossPoint

PLOT_WIDTH = 720
PLOT_HEIGHT = 240
PLOT_MARGIN = 48
MAX_PLOT_POINTS = 1000
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
# train_util.sample_image_inference: `<output_name>_e<epoch:06d>_<index:02d>_<time>[_<seed>].png` at the
# end of an epoch, `<output_name>_<step:06d>_<index:02d>_...` for step samples.
_SAMPLE_NAME = re.compile(r"(?:e(?P<epoch>\d{6})|(?P<step>\d{6}))_(?P<index>\d{2})(?:_[^.]*)?\.\w+")


@dataclass(frozen=True)
class RunReportInputs:
    """Everything the page shows. `samples` maps image file names to their bytes."""

    dataset: str
    run_id: str
    manifest: Manifest
    job: JobFacts
    plan: Plan | None
    problems: Sequence[Problem]
    loss: Sequence[LossPoint]
    samples: Mapping[str, bytes]
    samples_skipped: int
    created_at: datetime


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _duration(seconds: float | None) -> str:
    return "unknown" if seconds is None else duration(round(seconds))


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.2f}" if value >= 0.01 else "less than $0.01"


def _rows(pairs: Sequence[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)


def loss_plot_svg(points: Sequence[LossPoint]) -> str:
    """The loss per step as an inline SVG line chart (at most MAX_PLOT_POINTS points, evenly picked)."""
    if not points:
        return '<p class="empty">No loss values were recorded.</p>'
    stride = max(1, -(-len(points) // MAX_PLOT_POINTS))
    shown = list(points[::stride])
    if shown[-1] is not points[-1]:
        shown.append(points[-1])
    low, high = min(p.loss for p in shown), max(p.loss for p in shown)
    first, last = shown[0].step, shown[-1].step
    span_x, span_y = max(last - first, 1), (high - low) or 1.0
    inner_w, inner_h = PLOT_WIDTH - 2 * PLOT_MARGIN, PLOT_HEIGHT - 2 * PLOT_MARGIN

    def x(step: int) -> float:
        return PLOT_MARGIN + (step - first) / span_x * inner_w

    def y(loss: float) -> float:
        return PLOT_MARGIN + (high - loss) / span_y * inner_h

    line = " ".join(f"{x(p.step):.1f},{y(p.loss):.1f}" for p in shown)
    bottom, right = PLOT_HEIGHT - PLOT_MARGIN, PLOT_WIDTH - PLOT_MARGIN
    return (
        f'<svg id="loss-curve" xmlns="http://www.w3.org/2000/svg" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" '
        f'viewBox="0 0 {PLOT_WIDTH} {PLOT_HEIGHT}" role="img" aria-label="training loss by step">'
        f'<rect width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" fill="#ffffff"/>'
        f'<line x1="{PLOT_MARGIN}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#555555"/>'
        f'<line x1="{PLOT_MARGIN}" y1="{PLOT_MARGIN}" x2="{PLOT_MARGIN}" y2="{bottom}" stroke="#555555"/>'
        f'<text x="{PLOT_MARGIN - 6}" y="{PLOT_MARGIN + 4}" text-anchor="end" font-size="11">{high:.4g}</text>'
        f'<text x="{PLOT_MARGIN - 6}" y="{bottom}" text-anchor="end" font-size="11">{low:.4g}</text>'
        f'<text x="{PLOT_MARGIN}" y="{bottom + 16}" text-anchor="middle" font-size="11">{first}</text>'
        f'<text x="{right}" y="{bottom + 16}" text-anchor="middle" font-size="11">{last}</text>'
        f'<text x="{PLOT_WIDTH / 2}" y="{PLOT_HEIGHT - 8}" text-anchor="middle" font-size="12">step</text>'
        f'<polyline id="loss-line" fill="none" stroke="#d62728" stroke-width="2.5" points="{line}"/>'
        "</svg>"
    )


def sample_grid(samples: Mapping[str, bytes], output_name: str) -> str:
    """A table: one row per epoch (or step), one column per prompt, each image embedded as a data: URI."""
    rows: dict[tuple[int, int], dict[int, str]] = {}
    unplaced = []
    for name, data in samples.items():
        suffix = PurePosixPath(name).suffix.lower()
        uri = f"data:{_IMAGE_TYPES.get(suffix, 'application/octet-stream')};base64,"
        uri += base64.b64encode(data).decode("ascii")
        image = f'<img class="sample" src="{uri}" alt="{_e(name)}" title="{_e(name)}">'
        match = _SAMPLE_NAME.fullmatch(name.removeprefix(f"{output_name}_"))
        if match is None:
            unplaced.append(image)
            continue
        key = (0, int(match["epoch"])) if match["epoch"] else (1, int(match["step"]))
        rows.setdefault(key, {})[int(match["index"])] = image
    if not rows and not unplaced:
        return '<p class="empty">No samples: add sample_prompts to pipeline.toml to get some.</p>'
    columns = sorted({index for row in rows.values() for index in row})
    head = "".join(f"<th>prompt {index + 1}</th>" for index in columns)
    body = ""
    for (kind, number), row in sorted(rows.items()):
        label = f"epoch {number}" if kind == 0 else f"step {number}"
        cells = "".join(f"<td>{row.get(index, '')}</td>" for index in columns)
        body += f"<tr><th>{label}</th>{cells}</tr>"
    grid = f'<table id="samples"><tr><th></th>{head}</tr>{body}</table>' if rows else ""
    return grid + ("".join(unplaced) if unplaced else "")


def _plan_section(plan: Plan | None) -> str:
    if plan is None:
        return "<p>No plan was recorded.</p>"
    pairs = [
        ("trainer", plan.trainer),
        ("images", f"{plan.images} in {len(plan.subsets)} subset(s), {plan.samples_per_epoch} per epoch"),
        (
            "steps",
            f"{plan.total_steps} ({plan.epochs} epochs x {plan.steps_per_epoch} steps, batch {plan.batch_size})",
        ),
        (
            "network",
            f"rank {plan.network_dim}, text encoders {'trained' if plan.trains_text_encoders else 'frozen'}",
        ),
        ("instance", f"{plan.instance_type}, {'managed spot' if plan.spot else 'on-demand'}"),
        ("estimated time", _duration(plan.estimated_seconds)),
        ("estimated cost", _usd(plan.estimated_usd)),
    ]
    subsets = "".join(
        f"<tr><td>{_e(s.folder)}</td><td>{s.images}</td><td>{s.repeats}</td></tr>" for s in plan.subsets
    )
    return (
        f"<table>{_rows(pairs)}</table>"
        f"<table><tr><th>subset</th><th>images</th><th>repeats</th></tr>{subsets}</table>"
    )


def _epochs_section(manifest: Manifest) -> str:
    if not manifest.epochs:
        return "<p>No per-epoch LoRAs were kept (keep_epoch_loras in pipeline.toml).</p>"
    model_dir = manifest.model_uri.rsplit("/", 1)[0]
    rows = "".join(
        f'<tr><td><a href="epochs/{_e(e.name)}">{_e(e.name)}</a></td><td>{e.epoch}</td>'
        f"<td>{e.size / 1_000_000:.1f} MB</td><td><code>{_e(model_dir)}/epochs/{_e(e.name)}</code></td>"
        f"<td><code>{e.sha256[:16]}</code></td></tr>"
        for e in manifest.epochs
    )
    return (
        "<table><tr><th>file</th><th>epoch</th><th>size</th><th>S3</th><th>sha256</th></tr>"
        f"{rows}</table><p>The links open the files next to this page after "
        "<code>lora-pipeline download --epochs</code>.</p>"
    )


def _problems_section(problems: Sequence[Problem]) -> str:
    listed = [p for p in problems if p.severity is not Severity.ERROR]
    if not listed:
        return "<p>Validation found nothing to warn about.</p>"
    items = "".join(
        f"<li><b>{_e(p.severity.value)} {_e(p.code)}</b>{' in ' + _e(p.file) if p.file else ''}: "
        f"{_e(p.message)}{'<br>Fix: ' + _e(p.fix) if p.fix else ''}</li>"
        for p in listed
    )
    return f'<ul id="warnings">{items}</ul>'


def _cost_section(job: JobFacts, plan: Plan | None) -> str:
    pairs = [
        ("training job", job.training_job_name),
        ("instance", f"{job.instance_type}, {'managed spot' if job.spot else 'on-demand'}"),
        ("training time", _duration(job.training_seconds)),
        ("billable time", _duration(job.billable_seconds)),
        ("cost (billable time x on-demand price)", _usd(job.estimated_cost_usd)),
    ]
    if plan is not None:
        pairs.append(("planned", f"{_duration(plan.estimated_seconds)}, {_usd(plan.estimated_usd)}"))
    return f"<table>{_rows(pairs)}</table>"


_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0; } th, td { text-align: left; padding: 3px 10px 3px 0;
vertical-align: top; } img.sample { width: 192px; height: 192px; object-fit: contain; background: #000; }
.trigger { font-size: 18px; background: #fff3c4; padding: 2px 6px; } .empty { color: #777; }
"""


def render_run_report(inputs: RunReportInputs) -> str:
    """The page as HTML text (UTF-8)."""
    manifest = inputs.manifest
    lora = manifest.lora
    trigger = manifest.trigger_phrase
    skipped = (
        f"<p>{inputs.samples_skipped} more sample image(s) are in model/samples/ only.</p>"
        if inputs.samples_skipped
        else ""
    )
    summary = [
        ("LoRA", f"{manifest.file_name} ({manifest.size_bytes / 1_000_000:.1f} MB)"),
        ("S3", manifest.model_uri),
        ("sha256", manifest.sha256),
        ("modules", f"{lora.unet_modules} U-Net, {lora.te1_modules + lora.te2_modules} text encoder"),
        ("rank / alpha", f"{lora.network_dim} / {lora.network_alpha}"),
    ]
    title = f"LoRA run {inputs.dataset} / {inputs.run_id}"
    output_name = PurePosixPath(manifest.file_name).stem
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        f'<p>Trigger words: <span class="trigger" id="trigger">{_e(trigger or "none recorded")}</span>. '
        f"Prompt with <code>&lt;lora:{_e(output_name)}:1&gt;</code> and them.</p>"
        f"<table>{_rows(summary)}</table>"
        f"<h2>Loss</h2>{loss_plot_svg(inputs.loss)}"
        f"<h2>Samples by epoch</h2>{sample_grid(inputs.samples, output_name)}{skipped}"
        f"<h2>Per-epoch LoRAs</h2>{_epochs_section(manifest)}"
        f"<h2>Plan</h2>{_plan_section(inputs.plan)}"
        f"<h2>Validation warnings</h2>{_problems_section(inputs.problems)}"
        f"<h2>Time and cost</h2>{_cost_section(inputs.job, inputs.plan)}"
        f'<p class="empty">Written {inputs.created_at:%Y-%m-%d %H:%M} UTC by the unpack step.</p>'
        "</body></html>\n"
    )
