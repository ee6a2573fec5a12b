"""Generated parts of the README: the troubleshooting table (every problem code the validator can emit),
the worked cost example and the table of config rules. `python -m lora_pipeline_cli.docs` rewrites them; a test checks they are current."""

from __future__ import annotations

import re
from pathlib import Path

import lora_pipeline.validate  # noqa: F401 - importing it registers every problem code
from lora_pipeline.instances import load_instance_table
from lora_pipeline.job_settings import JOB_RULES, StackLimits, read_job_settings
from lora_pipeline.kohya_config import PipelineInputs, build_effective_config
from lora_pipeline.kohya_rules import COMBINATIONS, KEYS, NORMALISE, PIPELINE_INPUTS, VALUES
from lora_pipeline.plan import SubsetCount, make_plan
from lora_pipeline.problems import catalogue
from lora_pipeline_cli.render import duration

README = Path(__file__).resolve().parents[2] / "README.md"
_SECTIONS = ("troubleshooting", "cost-example", "config-rules")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def troubleshooting_table() -> str:
    rows = ["| code | severity | what it means | how to fix it |", "| --- | --- | --- | --- |"]
    for _, entry in sorted(catalogue().items()):
        rows.append(
            f"| `{entry.code}` | {entry.severity.value} | {_cell(entry.summary)} | {_cell(entry.fix)} |"
        )
    return "\n".join(rows)


def cost_example(images: int = 30, repeats: int = 60) -> str:
    """30 images x 60 repeats on the stack's default instance, with the default config and with 2 epochs."""
    table = load_instance_table()
    limits = StackLimits()
    rows = [
        "| config.toml | steps | time | on-demand | spot |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, config_text in (
        ("(none: 10 epochs)", None),
        ("`max_train_epochs = 2`", "max_train_epochs = 2\n"),
    ):
        job, _ = read_job_settings(None, limits, table)
        inputs = PipelineInputs("mydog", None, job.base_model, None)
        effective = build_effective_config(config_text, inputs).effective or {}
        plan, _ = make_plan([SubsetCount(f"{repeats}_mydog", images, repeats)], effective, job, table)
        assert plan.estimated_seconds is not None and plan.on_demand_usd is not None
        rows.append(
            f"| {label} | {plan.total_steps:,} | {duration(plan.estimated_seconds)} | "
            f"${plan.on_demand_usd:.2f} | ${plan.spot_usd:.2f} |"
        )
    return f"{images} images x {repeats} repeats on `{limits.default_instance_type}`:\n\n" + "\n".join(rows)


def rules_table() -> str:
    """Every registered rule of config.toml and pipeline.toml: id, name, what it checks, what it mirrors."""
    rows = ["| rule | name | checks | mirrors |", "| --- | --- | --- | --- |"]
    for rule_set in (NORMALISE, KEYS, VALUES, PIPELINE_INPUTS, COMBINATIONS, JOB_RULES):
        for rule in rule_set:
            rows.append(f"| {rule.id} | `{rule.name}` | {_cell(rule.summary)} | {_cell(rule.mirrors)} |")
    return "\n".join(rows)


def generated(name: str) -> str:
    return {
        "troubleshooting": troubleshooting_table,
        "cost-example": cost_example,
        "config-rules": rules_table,
    }[name]()


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(\n<!-- {name}:end -->)", re.DOTALL)


def section(text: str, name: str) -> str | None:
    match = _pattern(name).search(text)
    return match.group(2) if match else None


def update_readme(path: Path = README) -> None:
    text = path.read_text(encoding="utf-8")
    for name in _SECTIONS:
        text = _pattern(name).sub(lambda m, n=name: m.group(1) + generated(n) + m.group(3), text)
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    update_readme()
