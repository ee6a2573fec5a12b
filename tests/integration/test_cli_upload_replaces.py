"""`lora-pipeline upload` replaces the dataset in S3 (like `aws s3 sync --delete`), from a folder or a .zip,
and a rejected run says why, on the real template on the embedded AWS."""

from __future__ import annotations

import io
import shlex
import shutil
from pathlib import Path

import pytest

from embedded_aws import ArchiveExecutor, EmbeddedStack
from tests.corpus import heic_bytes, zip_of
from tests.integration.pipeline_support import dataset, emails, lora_archive, pipeline
from tests.integration.test_cli_stack_commands import publish_training_image, run_cli


def dataset_keys(stack: EmbeddedStack, name: str = "bluebot") -> set[str]:
    listing = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=f"datasets/{name}/")
    return {o["Key"].removeprefix(f"datasets/{name}/") for o in listing.get("Contents", [])}


def with_two_bad_images(folder: Path) -> Path:
    """The rejected upload of the issue: a mixed-case extension sd-scripts never reads, and a HEIC photo."""
    subset = folder / "10_bluebot"
    shutil.copy(next(subset.glob("*.png")), subset / "b.Jpg")
    (subset / "d.heic").write_bytes(heic_bytes())
    return folder


def advised_upload(body: str, folder: Path) -> list[str]:
    """The `lora-pipeline upload` command the rejection email advises, for this folder."""
    line = next(line for line in body.splitlines() if line.strip().startswith("lora-pipeline upload"))
    return shlex.split(line.replace("<folder>", str(folder)))[1:]


def test_a_fixed_dataset_uploaded_again_as_the_rejection_email_advises_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = with_two_bad_images(dataset(tmp_path, "bluebot", ready=False))
    with pipeline(ArchiveExecutor(lora_archive("bluebot"))) as stack:
        publish_training_image(stack)
        target = ("--stack", stack.stack_name)
        assert run_cli(capsys, "upload", str(folder), *target, "--force", "--start")[0] == 0
        stack.wait_until_idle(timeout=60)
        (body,) = [body for subject, body in emails(stack).items() if subject.startswith("Dataset rejected")]
        assert {"10_bluebot/b.Jpg", "10_bluebot/d.heic"} <= dataset_keys(stack)

        code, out, _ = run_cli(capsys, "logs", "bluebot", *target)
        assert code == 0
        assert "was rejected before training" in out and "has no log" in out
        assert "10_bluebot/b.Jpg" in out and "10_bluebot/d.heic" in out
        assert "validation.json" in out

        (folder / "10_bluebot" / "b.Jpg").unlink()
        (folder / "10_bluebot" / "d.heic").unlink()
        command = advised_upload(body, folder)
        code, _, err = run_cli(capsys, *command, *target)
        assert code == 2
        assert "2 files in" in err and "  10_bluebot/b.Jpg\n" in err and "  10_bluebot/d.heic\n" in err
        assert "Pass --yes" in err
        assert "10_bluebot/b.Jpg" in dataset_keys(stack), "a refused upload changed S3"

        code, out, _ = run_cli(capsys, *command, *target, "--yes")
        assert code == 0, out
        local = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert dataset_keys(stack) == local | {"_READY"}
        stack.wait_until_idle(timeout=60)
        code, out, _ = run_cli(capsys, "status", "bluebot", *target)
        assert [line.split()[2] for line in out.splitlines()[1:]] == ["SUCCEEDED", "REJECTED"]
        assert any(subject.startswith("LoRA ready: bluebot") for subject in emails(stack))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_upload_asks_at_a_terminal_before_removing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = dataset(tmp_path, "bluebot", ready=False)
    with pipeline(ArchiveExecutor(lora_archive("bluebot")), QuietPeriodSeconds="600") as stack:
        publish_training_image(stack)
        target = ("--stack", stack.stack_name)
        assert run_cli(capsys, "upload", str(folder), *target)[0] == 0
        assert run_cli(capsys, "upload", str(folder), *target)[0] == 0, "nothing to remove: no question"
        removed = sorted((folder / "10_bluebot").iterdir())[0]
        removed.unlink()
        monkeypatch.setattr("sys.stdin", Terminal())
        answers = iter(["n", "y"])
        monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
        code, _, err = run_cli(capsys, "upload", str(folder), *target)
        assert code == 2 and "nothing in S3 was changed" in err
        assert f"10_bluebot/{removed.name}" in dataset_keys(stack)
        assert run_cli(capsys, "upload", str(folder), *target)[0] == 0
        assert f"10_bluebot/{removed.name}" not in dataset_keys(stack)


def test_upload_takes_a_zip_and_leaves_the_macos_metadata_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = dataset(tmp_path / "folders", "bluebot", ready=False)
    archive = zip_of(folder, tmp_path / "bluebot-export.zip", top="bluebot")
    with pipeline(ArchiveExecutor(lora_archive("bluebot"))) as stack:
        publish_training_image(stack)
        code, out, _ = run_cli(capsys, "upload", str(archive), "--stack", stack.stack_name, "--start")
        assert code == 0, out
        assert f"s3://{stack.bucket}/datasets/bluebot/" in out
        local = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert dataset_keys(stack) == local | {"_READY"}
        stack.wait_until_idle(timeout=60)
        code, out, _ = run_cli(capsys, "status", "bluebot", "--stack", stack.stack_name)
        assert "SUCCEEDED" in out.splitlines()[1]
