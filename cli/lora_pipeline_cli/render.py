"""Plain-text rendering of a validation report for the terminal."""

from __future__ import annotations

from collections import defaultdict

from lora_pipeline.plan import Plan
from lora_pipeline.problems import Problem, Severity
from lora_pipeline.report import ValidationReport
from lora_pipeline_cli.runs import RUNNING, RunStatus

DATASET_WIDE = "(whole dataset)"
_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def render_report(report: ValidationReport, max_per_code: int = 10) -> str:
    """Problems grouped by file (errors first), then the plan. At most `max_per_code` lines per code are shown;
    the rest are counted (the JSON report has them all)."""
    verdict = "TRAINABLE" if report.trainable else "REJECTED"
    lines = [
        f"Dataset {report.dataset!r} ({report.source})",
        f"{verdict}: {report.error_count} error(s), {report.warning_count} warning(s)",
    ]
    lines += _render_problems(report.problems, max_per_code)
    if report.plan is not None:
        lines += ["", *render_plan(report.plan, report.job.output_name)]
    return "\n".join(lines) + "\n"


def _render_problems(problems: list[Problem], max_per_code: int) -> list[str]:
    shown_per_code: dict[str, int] = defaultdict(int)
    hidden_per_code: dict[str, int] = defaultdict(int)
    by_file: dict[str, list[Problem]] = defaultdict(list)
    for problem in sorted(problems, key=lambda p: (_ORDER[p.severity], p.file or "")):
        if shown_per_code[problem.code] >= max_per_code:
            hidden_per_code[problem.code] += 1
            continue
        shown_per_code[problem.code] += 1
        by_file[problem.file or DATASET_WIDE].append(problem)
    lines: list[str] = []
    for file, file_problems in by_file.items():
        lines += ["", file]
        for p in file_problems:
            lines.append(f"  {p.severity.value:<7} {p.code}: {p.message}")
            if p.fix:
                lines.append(f"          fix: {p.fix}")
    if hidden_per_code:
        lines.append("")
        lines += [
            f"... and {n} more {code} (see --json or --all)" for code, n in sorted(hidden_per_code.items())
        ]
    return lines


def render_plan(plan: Plan, output_name: str | None) -> list[str]:
    lines = ["Plan"]
    for s in plan.subsets:
        lines.append(
            f"  {s.folder}: {s.images} images x {s.repeats} repeats = {s.samples_per_epoch} samples/epoch"
        )
    if plan.trainer == "smoke":
        lines.append(
            f"  smoke trainer: {plan.total_steps} steps of a tiny random model, to prove the pipeline "
            f"(its {output_name}.safetensors is not meant for image generation)"
        )
    else:
        lines.append(
            f"  {plan.samples_per_epoch} samples in {plan.buckets} aspect bucket(s), batch {plan.batch_size} "
            f"per bucket: {plan.batches_per_epoch} batches/epoch"
        )
        lines.append(
            f"  {plan.epochs} epoch(s) x {plan.steps_per_epoch} steps (gradient accumulation "
            f"{plan.gradient_accumulation_steps}, {plan.gpus} GPU process(es)) = {plan.total_steps} steps"
        )
        parts = "U-Net + both text encoders" if plan.trains_text_encoders else "U-Net only"
        lines.append(
            f"  LoRA {output_name}.safetensors: network_dim {plan.network_dim}, {parts}, "
            f"about {megabytes(plan.expected_lora_bytes)}"
        )
    mode = "spot" if plan.spot else "on-demand"
    if plan.total_steps == 0:
        lines.append(f"  {plan.instance_type} ({mode}): nothing to train, so nothing to estimate")
    elif plan.estimated_seconds is None or plan.on_demand_usd is None or plan.spot_usd is None:
        lines.append(f"  {plan.instance_type} ({mode}): no price known, no estimate")
    else:
        lines.append(
            f"  {plan.instance_type} ({mode}): about {duration(plan.estimated_seconds)}, "
            f"${plan.spot_usd:.2f} spot / ${plan.on_demand_usd:.2f} on-demand (prices: {plan.price_source})"
        )
    return lines


def render_status(statuses: list[RunStatus]) -> str:
    if not statuses:
        return "No runs yet. Upload a dataset with `lora-pipeline upload FOLDER`.\n"
    header = ("DATASET", "RUN", "STATUS", "STAGE", "PROGRESS", "ETA", "COST")
    rows = [header]
    for status in statuses:
        progress = status.progress
        done = (
            f"step {progress.step}/{progress.total_steps} ({progress.fraction_done:.0%})"
            + (f" loss {progress.loss:.4g}" if progress.loss is not None else "")
            if progress
            else (status.job_status or "")
        )
        eta = duration(progress.eta_seconds) if progress and progress.eta_seconds is not None else ""
        cost = f"${status.cost_so_far_usd:.2f}" if status.cost_so_far_usd is not None else ""
        stage = status.stage if status.run.status == RUNNING else ""
        rows.append((status.run.dataset, status.run.run_id, status.run.status, stage or "", done, eta, cost))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows
    )
