"""One run of real sd-scripts (in `.venv-kohya`) over every differential case, shared by the whole session.

The reference environment is found relative to the repository root, or where these variables say:
- `KOHYA_VENV`: the virtual environment with sd-scripts' pins (default `.venv-kohya`);
- `SD_SCRIPTS_DIR`: the sd-scripts checkout it runs (default `build/sd-scripts`).
Both come from `make kohya-venv`. When they are missing the tests fail (they never skip): `make test`
builds them first, so a missing one is a broken checkout, not an optional extra.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lora_pipeline.dataset_source import LocalFolder
from lora_pipeline.instances import load_instance_table
from lora_pipeline.report import ValidationReport
from lora_pipeline.validate import build_validation_report
from lora_trainer.kohya_command import TRAIN_SCRIPT, KohyaRun, build_kohya_command, write_training_config
from tests.differential.cases import CASES, Case

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("sd_scripts_probe.py")
PROBE_TIMEOUT_SECONDS = 900


def _configured(variable: str, default: str) -> Path:
    return (REPO / os.environ.get(variable, default)).resolve()


def kohya_python() -> Path:
    venv = _configured("KOHYA_VENV", ".venv-kohya")
    python = venv / "bin" / "python"
    if not python.is_file():
        pytest.fail(
            f"The reference environment {venv} is missing ({python} does not exist): run `make kohya-venv` "
            "(it builds .venv-kohya and build/sd-scripts), or point KOHYA_VENV at one.",
            pytrace=False,
        )
    return python


def sd_scripts_dir() -> Path:
    checkout = _configured("SD_SCRIPTS_DIR", "build/sd-scripts")
    if not (checkout / TRAIN_SCRIPT).is_file():
        pytest.fail(
            f"The sd-scripts checkout {checkout} is missing ({TRAIN_SCRIPT} not found): run `make kohya-venv` "
            "(it builds .venv-kohya and build/sd-scripts), or point SD_SCRIPTS_DIR at one.",
            pytrace=False,
        )
    return checkout


@dataclass(frozen=True)
class CaseRun:
    case: Case
    report: ValidationReport
    sd_scripts: dict[str, Any]
    """The probe's result for the case (see sd_scripts_probe.py)."""


@dataclass(frozen=True)
class ProbeRun:
    cases: dict[str, CaseRun]
    args_table: list[dict[str, str]]
    seconds: float


def _argv(case_dir: Path, dataset: Path, report: ValidationReport, num_processes: int) -> list[str]:
    """What the training container passes to sdxl_train_network.py for this report's kohya.toml."""
    assert report.kohya_toml is not None
    validated = case_dir / "kohya.toml"
    validated.write_text(report.kohya_toml, encoding="utf-8")
    config = tomllib.loads(report.kohya_toml)
    config_file = write_training_config(config, case_dir / "scratch" / "kohya.toml")
    run = KohyaRun(
        sd_scripts_dir=Path("sd-scripts"),
        train_data_dir=dataset,
        output_dir=case_dir / "output",
        output_name=report.job.output_name,
        logging_dir=case_dir / "logs",
        tokenizer_cache_dir=case_dir / "tokenizers",
        base_model=str(config.get("pretrained_model_name_or_path", "base.safetensors")),
        sample_prompts=case_dir / "prompts.txt" if report.prompts_txt else None,
        resume=None,
        num_processes=num_processes,
        cpu_threads_per_process=1,
    )
    command = build_kohya_command(config_file, config, run)
    return command[command.index(str(run.sd_scripts_dir / TRAIN_SCRIPT)) + 1 :]


@pytest.fixture(scope="session")
def work_root() -> Iterator[Path]:
    """A root whose path has no `_`: sd-scripts splits the absolute image path at `_` to find face-crop
    captions, and the training container's data directory (/opt/ml/scratch/dataset) has none either."""
    root = Path(tempfile.gettempdir()) / f"lora-differential-{os.getpid()}"
    assert "_" not in str(root), f"{root} must not contain '_'; set TMPDIR to a path without one"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def probe_run(work_root: Path) -> ProbeRun:
    python, sd_scripts = kohya_python(), sd_scripts_dir()
    instances = load_instance_table()
    reports: dict[str, ValidationReport] = {}
    request_cases = []
    for case in CASES:
        case_dir = work_root / case.id
        dataset = case_dir / "dataset"
        dataset.mkdir(parents=True)
        case.build(dataset)
        (dataset / "config.toml").write_text(case.config, encoding="utf-8")
        if case.pipeline:
            (dataset / "pipeline.toml").write_text(case.pipeline, encoding="utf-8")
        report = build_validation_report(
            LocalFolder(dataset), case.id, limits=case.limits, instances=instances
        )
        reports[case.id] = report
        spec = instances.get(report.job.instance_type)
        num_processes = max(1, spec.gpus) if spec else 1
        # The dataset the container trains on has no settings files in it (sd-scripts ignores them anyway).
        request_cases.append(
            {
                "id": case.id,
                "argv": _argv(case_dir, dataset, report, num_processes),
                "num_processes": num_processes,
            }
        )
    request = work_root / "request.json"
    result = work_root / "result.json"
    request.write_text(json.dumps({"sd_scripts": str(sd_scripts), "cases": request_cases}), encoding="utf-8")
    started = time.monotonic()
    completed = subprocess.run(
        [str(python), str(PROBE), str(request), str(result)],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_SECONDS,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
        check=False,
    )
    seconds = time.monotonic() - started
    if completed.returncode != 0:
        pytest.fail(
            f"The sd-scripts probe failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}",
            pytrace=False,
        )
    print(f"sd-scripts probe: {len(CASES)} cases in {seconds:.1f} s", file=sys.stderr)
    answer = json.loads(result.read_text(encoding="utf-8"))
    by_id = {entry["id"]: entry for entry in answer["cases"]}
    return ProbeRun(
        cases={case.id: CaseRun(case, reports[case.id], by_id[case.id]) for case in CASES},
        args_table=answer["args_table"],
        seconds=seconds,
    )
