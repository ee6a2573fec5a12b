"""`make demo` and `make demo-reject` as the test suite runs them: the real template, ASL, handlers and
training container (smoke trainer) on the embedded AWS, from the example upload to the email."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lora_pipeline.safetensors_lora import Architecture, inspect_lora_file
from lora_pipeline_cli.demo import run_demo

pytestmark = pytest.mark.slow


def test_bluebot_demo_trains_and_emails_the_lora(tmp_path: Path) -> None:
    result = run_demo("bluebot", tmp_path / "work", tmp_path / "out", quiet_period_seconds=2, timeout=600)

    subjects = [m.subject for m in result.emails]
    assert subjects == ["Training started: bluebot", "LoRA ready: bluebot"]
    ready = result.emails[-1].message
    assert result.manifest is not None and result.model is not None
    assert result.manifest.model_uri in ready
    assert result.manifest.sha256 in ready
    assert "<lora:bluebot:1>" in ready

    assert result.model == tmp_path / "out" / "bluebot" / "bluebot.safetensors"
    assert hashlib.sha256(result.model.read_bytes()).hexdigest() == result.manifest.sha256
    header, summary = inspect_lora_file(result.model, Architecture.SMOKE)
    assert summary.unet_modules > 0 and summary.te1_modules > 0 and summary.te2_modules > 0
    assert header.metadata["ss_output_name"] == "bluebot"
    assert header.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert (tmp_path / "out" / "bluebot" / "manifest.json").is_file()


def test_broken_demo_is_rejected_with_every_fix_and_no_training(tmp_path: Path) -> None:
    result = run_demo("broken", tmp_path / "work", tmp_path / "out", quiet_period_seconds=2, timeout=300)

    assert result.model is None
    assert len(result.emails) == 1
    email = result.emails[0]
    assert email.subject is not None and email.subject.startswith("Dataset rejected: broken (")
    for code in (
        "IMAGE_EXTENSION_CASE",
        "IMAGE_TRUNCATED",
        "CAPTION_EMPTY",
        "CAPTION_WRONG_EXTENSION",
        "CONFIG_UNKNOWN_KEY",
        "CONFIG_WRONG_TYPE",
        "CONFIG_NOT_ALLOWED",
        "JOB_VOLUME_TOO_SMALL",
    ):
        assert code in email.message, code
    assert "Fix:" in email.message or "fix:" in email.message
