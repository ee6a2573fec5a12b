"""`lora-pipeline validate` and `example` on the bundled example datasets, through the real entry point."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lora_pipeline_cli.examples import write_broken_dataset, write_example_dataset
from lora_pipeline_cli.main import main


@pytest.fixture(scope="module")
def bluebot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("ds") / "bluebot", images=6, size=256)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_broken_dataset(tmp_path_factory.mktemp("ds") / "broken")


def test_good_dataset_is_trainable_and_shows_the_plan(
    bluebot: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(bluebot)]) == 0
    out = capsys.readouterr().out
    assert "TRAINABLE: 0 error(s)" in out
    assert "20_bluebot: 6 images x 20 repeats = 120 samples/epoch" in out
    assert "bluebot.safetensors" in out


def test_broken_dataset_is_rejected_with_every_mistake(
    broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(broken), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["trainable"] is False
    found = {(p["code"], p["file"]) for p in report["problems"] if p["severity"] == "error"}
    files = {file for _, file in found}
    assert "20_bluebot/bluebot_00.Png" in files  # mixed-case extension: sd-scripts skips it
    assert "20_bluebot/bluebot_01.png" in files  # truncated
    assert "20_bluebot/bluebot_03.caption" in files  # empty caption
    assert "config.toml" in files  # resolution not a string, unknown key, import path
    assert ("JOB_VOLUME_TOO_SMALL", "pipeline.toml") in found
    assert all(p["fix"] for p in report["problems"] if p["severity"] == "error")


def test_text_report_groups_problems_by_file_with_fixes(
    broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["validate", str(broken)])
    out = capsys.readouterr().out
    assert out.startswith(f"Dataset 'broken' ({broken})\nREJECTED:")
    assert "\npipeline.toml\n  error   JOB_VOLUME_TOO_SMALL" in out
    assert "fix: " in out


def test_missing_folder_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_console_script_exit_codes(bluebot: Path, broken: Path) -> None:
    cli = Path(sys.executable).with_name("lora-pipeline")
    assert subprocess.run([cli, "validate", bluebot], capture_output=True).returncode == 0
    assert subprocess.run([cli, "validate", broken], capture_output=True).returncode == 1
    assert subprocess.run([cli, "validate"], capture_output=True).returncode == 2


def test_example_refuses_a_non_empty_folder(bluebot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["example", "bluebot", str(bluebot)]) == 2
    assert "not empty" in capsys.readouterr().err
