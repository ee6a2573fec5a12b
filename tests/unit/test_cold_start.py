"""What a handler's cold start loads: only its own part of the domain, no X-Ray SDK, no Powertools parser
models, no boto3 (the runtime's, loaded with the first client). Timings: benchmarks/cold_start.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "common"
# The rules and file formats only the validate and unpack steps use, loaded when the step runs.
STEP_ONLY = {
    "dataset",
    "kohya_config",
    "kohya_contract",
    "kohya_args",
    "job_settings",
    "plan",
    "report",
    "validate",
    "images",
}
STEP_ONLY |= {"model_archive", "safetensors_lora", "manifest", "notifications"}
NEVER = ("aws_xray_sdk", "aws_lambda_powertools.utilities.parser", "boto3", "s3transfer")


def _modules_after_import(function: str) -> list[str]:
    code = "import sys, json, app; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "functions" / function,
        env={"PYTHONPATH": str(LAYER), "AWS_REGION": "us-east-1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


@pytest.mark.parametrize("function", ["ingest", "validate", "unpack", "notify", "cancel", "salvage"])
def test_a_handler_imports_only_what_it_uses(function: str) -> None:
    modules = _modules_after_import(function)
    loaded = {m.split(".", 1)[1] for m in modules if m.startswith("lora_pipeline.")}
    assert loaded & STEP_ONLY == set(), f"{function} loads {sorted(loaded & STEP_ONLY)} at import"
    for never in NEVER:
        assert not any(m == never or m.startswith(never + ".") for m in modules), (
            f"{function} imports {never}"
        )


def test_the_layer_ships_no_aws_sdk_and_is_byte_compiled() -> None:
    pins = [line.split("==")[0].lower() for line in (LAYER / "requirements.txt").read_text().splitlines()]
    pins = [re.sub(r"[-_.]+", "-", p) for p in pins if p and not p.startswith("#")]
    assert not {"boto3", "botocore", "aws-xray-sdk", "s3transfer"} & set(pins)
    assert all(
        "==" in line for line in (LAYER / "requirements.txt").read_text().splitlines() if line[:1].isalpha()
    )
    makefile = (LAYER / "Makefile").read_text()
    assert "compileall" in makefile and "--invalidation-mode unchecked-hash" in makefile
    assert "--only-binary=:all:" in makefile and "manylinux2014_aarch64" in makefile


@pytest.mark.parametrize("use_case", ["ingest", "cancel"])
def test_the_use_cases_behind_ports_load_no_aws_sdk(use_case: str) -> None:
    code = f"import sys, json, lora_pipeline.use_cases.{use_case}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(LAYER)},
        capture_output=True,
        text=True,
        check=True,
    )
    modules = json.loads(done.stdout.splitlines()[-1])
    assert not [m for m in modules if m.split(".")[0] in ("boto3", "botocore", "s3transfer")]
    assert not [
        m for m in modules if m.startswith("lora_pipeline.aws.") and m != "lora_pipeline.aws.run_objects"
    ]
