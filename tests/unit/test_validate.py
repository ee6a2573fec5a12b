"""The validate entry point: what it reads and how problems reach the user."""

from pathlib import Path

from lora_pipeline.dataset import DatasetRules, check_dataset
from lora_pipeline.dataset_source import LocalFolder
from lora_pipeline.validate import build_validation_report
from tests.corpus import make_good_dataset, make_image


def test_generic_fixes_name_the_file(tmp_path: Path) -> None:
    make_image(tmp_path / "10_dog" / "my photo.png", size=(1024, 1024), mode="RGBA")
    _, problems = check_dataset(LocalFolder(tmp_path), DatasetRules())
    alpha = next(p for p in problems if p.code == "IMAGE_ALPHA")
    assert "'10_dog/my photo.png'" in (alpha.fix or "")
    assert "<file>" not in (alpha.fix or "")


def test_settings_that_are_not_utf8_are_reported_not_read(tmp_path: Path) -> None:
    folder = make_good_dataset(tmp_path / "dog")
    (folder / "pipeline.toml").write_bytes('output_name = "caf\xe9"\n'.encode("latin-1"))
    report = build_validation_report(LocalFolder(folder), "dog")
    problem = next(p for p in report.problems if p.code == "SETTINGS_NOT_UTF8")
    assert problem.file == "pipeline.toml" and "UTF-8" in problem.message
    assert report.job.output_name == "dog"  # the file was not read: defaults apply
