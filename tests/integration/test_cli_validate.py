"""`lora-pipeline validate` and `example` on the bundled example datasets, through the real entry point."""

import importlib.metadata
import json
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lora_pipeline_cli.examples import write_broken_dataset, write_example_dataset
from lora_pipeline_cli.main import main
from tests.corpus import zip_of


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


@pytest.mark.parametrize("top", [None, "bluebot"], ids=["at the root", "under one top folder"])
def test_a_zip_validates_like_its_folder(
    bluebot: Path, tmp_path: Path, top: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(bluebot), "--json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    archive = zip_of(bluebot, tmp_path / "export.zip", top)
    if top:
        with zipfile.ZipFile(archive, "a") as zipped:
            zipped.writestr(".DS_Store", b"Finder")  # beside the top folder: hidden, not a second entry
    assert main(["validate", str(archive), "--json"]) == 0
    from_zip = json.loads(capsys.readouterr().out)
    assert from_zip["dataset"] == (top or "export")
    assert from_zip["problems"] == from_folder["problems"]
    assert from_zip["summary"] == {
        **from_folder["summary"],
        "location": str(archive) + (f":{top}/" if top else ""),
    }


@pytest.mark.parametrize(
    ("member", "problem"),
    [("../evil.png", "points outside the zip"), ("/etc/evil.png", "has an absolute path")],
)
def test_a_zip_member_outside_the_folder_is_refused(
    tmp_path: Path, member: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("10_bluebot/a.png", b"png")
        zipped.writestr(member, b"png")
    assert main(["validate", str(archive)]) == 2
    err = capsys.readouterr().err
    assert f"{archive}: member {member!r} {problem}" in err and "Zip the dataset folder itself" in err
    assert not (tmp_path / "evil.png").exists()


def test_a_zip_with_a_link_an_unreadable_member_or_no_zip_at_all_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "links.zip"
    link = zipfile.ZipInfo("10_bluebot/a.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(link, "/etc/passwd")
    assert main(["upload", str(archive), "--stack", "any"]) == 2
    assert "member '10_bluebot/a.png' is a symbolic link" in capsys.readouterr().err
    encrypted = tmp_path / "encrypted.zip"
    with zipfile.ZipFile(encrypted, "w") as zipped:
        zipped.writestr("10_bluebot/a.png", b"png")
    raw = bytearray(encrypted.read_bytes())  # set the "encrypted" flag bit, which zipfile cannot write
    for header, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        raw[raw.index(header) + flags_at] |= 0x1
    encrypted.write_bytes(bytes(raw))
    assert main(["validate", str(encrypted)]) == 2
    assert "member '10_bluebot/a.png' cannot be read" in capsys.readouterr().err
    not_zip = tmp_path / "photos.zip"
    not_zip.write_bytes(b"not a zip")
    assert main(["validate", str(not_zip)]) == 2
    assert f"{not_zip} is not a readable zip file" in capsys.readouterr().err


def test_a_subset_folder_is_refused_with_its_parent_named(
    bluebot: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(bluebot / "20_bluebot")]) == 2
    err = capsys.readouterr().err
    assert "is a subset folder" in err and f"pass its parent, `lora-pipeline validate {bluebot}`" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"lora-pipeline {importlib.metadata.version('sdxl-lora-pipeline')}\n"
