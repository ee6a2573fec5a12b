"""The training entrypoint (`container/train`) run for real on an /opt/ml-shaped tree, with the smoke trainer."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from lora_pipeline.safetensors_lora import Architecture, inspect_lora_file
from lora_pipeline.training_metrics import parse_metric_line
from tests.container_jobs import SMOKE_KOHYA_TOML, make_opt_ml, run_entrypoint, start_entrypoint
from tests.corpus import make_image, write_caption
from tests.lora_files import sdxl_lora_bytes


def _metric_steps(stdout: str) -> list[int]:
    return [progress.step for line in stdout.splitlines() if (progress := parse_metric_line(line))]


@pytest.mark.slow
def test_smoke_job_publishes_a_kohya_lora_with_metrics_and_samples(tmp_path: Path) -> None:
    opt_ml = make_opt_ml(tmp_path, prompts="a bluebot in the rain --n blurry\n", max_steps=3)
    stale_cache = opt_ml / "input/data/train/10_bluebot/img00_0064x0064_sdxl.npz"
    stale_cache.write_bytes(b"stale latents from an earlier run")

    result = run_entrypoint(opt_ml)

    assert result.returncode == 0, result.stdout + result.stderr
    assert not (opt_ml / "output/failure").exists()
    header, summary = inspect_lora_file(opt_ml / "model/bluebot.safetensors", Architecture.SMOKE)
    assert summary.unet_modules > 0 and summary.te1_modules > 0 and summary.te2_modules > 0
    assert summary.network_dim == 4 and summary.network_alpha == 2.0
    assert header.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert header.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert header.metadata["ss_output_name"] == "bluebot"
    assert json.loads(header.metadata["ss_dataset_dirs"])["10_bluebot"] == {"n_repeats": 10, "img_count": 3}
    assert any(
        key.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") for key in header.tensors
    )
    assert _metric_steps(result.stdout) == [1, 2, 3]
    assert [p.suffix for p in (opt_ml / "output/data/samples").iterdir()] == [".png"]
    assert not list((opt_ml / "scratch").rglob("*.npz")), "stale latent caches must not be trained on"


def test_dataset_without_subset_folders_fails_with_an_actionable_reason(tmp_path: Path) -> None:
    opt_ml = make_opt_ml(tmp_path)
    train = opt_ml / "input/data/train"
    for subset in [p for p in train.iterdir() if p.is_dir()]:
        shutil.move(subset, train / subset.name.split("_", 1)[1])  # "10_bluebot" -> "bluebot"

    result = run_entrypoint(opt_ml)

    assert result.returncode == 1
    assert "No data found" in result.stdout, "the smoke trainer exits 0 on no data, like sd-scripts"
    reason = (opt_ml / "output/failure").read_text()
    assert "bluebot.safetensors" in reason and "<repeats>_<class tokens>" in reason
    assert not list((opt_ml / "model").iterdir())


def test_trainer_error_exit_is_reported_with_its_last_error(tmp_path: Path) -> None:
    opt_ml = make_opt_ml(tmp_path)
    write_caption(opt_ml / "input/data/train/10_bluebot/img01.caption", "")

    result = run_entrypoint(opt_ml)

    assert result.returncode == 1
    reason = (opt_ml / "output/failure").read_text()
    assert "exited with code 1" in reason and "img01.caption is empty" in reason


def test_missing_config_channel_is_a_contract_error(tmp_path: Path) -> None:
    opt_ml = make_opt_ml(tmp_path)
    shutil.rmtree(opt_ml / "input/data/config")

    result = run_entrypoint(opt_ml)

    assert result.returncode == 2
    reason = (opt_ml / "output/failure").read_text()
    assert "kohya.toml" in reason and "'config'" in reason


def test_file_that_is_not_a_lora_is_not_published(tmp_path: Path) -> None:
    """A trainer that exits 0 with a wrong file must not make the job succeed."""
    opt_ml = make_opt_ml(tmp_path, subsets={"bluebot": 1})  # no usable subset: the trainer writes nothing
    checkpoints = opt_ml / "checkpoints"
    checkpoints.mkdir()
    make_image(checkpoints / "bluebot.safetensors", (8, 8), fmt="PNG")

    result = run_entrypoint(opt_ml)

    assert result.returncode == 1
    assert "not an SDXL LoRA" in (opt_ml / "output/failure").read_text()
    assert not (opt_ml / "model/bluebot.safetensors").exists()


@pytest.mark.slow
def test_interrupted_job_resumes_from_its_last_saved_state(tmp_path: Path) -> None:
    opt_ml = make_opt_ml(
        tmp_path,
        kohya_toml=SMOKE_KOHYA_TOML.replace("train_batch_size = 2", "save_every_n_steps = 2"),
        max_steps=8,
    )
    first = start_entrypoint(opt_ml)
    assert first.stdout is not None
    first_output = []
    for line in first.stdout:
        first_output.append(line)
        if (progress := parse_metric_line(line)) is not None and progress.step >= 3:
            first.send_signal(signal.SIGTERM)  # as SageMaker does on a spot interruption
            break
    first_output += first.stdout.readlines()
    assert first.wait(timeout=60) == 143, "".join(first_output)
    assert not (opt_ml / "model/bluebot.safetensors").exists()
    states = sorted(p.name for p in (opt_ml / "checkpoints").glob("*-state"))
    assert states and all(name.startswith("bluebot-step") for name in states)
    saved_step = max(
        json.loads((opt_ml / "checkpoints" / s / "train_state.json").read_text())["current_step"]
        for s in states
    )
    assert 2 <= saved_step < 8

    second = run_entrypoint(opt_ml)

    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming from bluebot-step{saved_step:08d}-state" in second.stdout
    assert _metric_steps(second.stdout) == list(range(saved_step + 1, 9))
    assert (opt_ml / "model/bluebot.safetensors").is_file()


def test_restart_after_the_final_save_publishes_without_training_again(tmp_path: Path) -> None:
    opt_ml = make_opt_ml(tmp_path)
    (opt_ml / "checkpoints").mkdir()
    (opt_ml / "checkpoints/bluebot.safetensors").write_bytes(sdxl_lora_bytes(rank=4))

    result = run_entrypoint(opt_ml)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "without training again" in result.stdout and not _metric_steps(result.stdout)
    assert (opt_ml / "model/bluebot.safetensors").read_bytes() == (
        opt_ml / "checkpoints/bluebot.safetensors"
    ).read_bytes()


def _interrupt_when(opt_ml: Path, step: int) -> tuple[int, str]:
    """Run the entrypoint and send SIGTERM (as spot and MaxRuntime do) once it reports `step`."""
    job = start_entrypoint(opt_ml)
    assert job.stdout is not None
    output = []
    for line in job.stdout:
        output.append(line)
        if (progress := parse_metric_line(line)) is not None and progress.step >= step:
            job.send_signal(signal.SIGTERM)
            break
    output += job.stdout.readlines()
    return job.wait(timeout=60), "".join(output)


@pytest.mark.slow
def test_two_interruptions_in_a_row_resume_from_the_newest_epoch_and_add_up_to_the_plan(
    tmp_path: Path,
) -> None:
    """The smoke trainer saves and resumes as sd-scripts does (lora_trainer.sd_scripts_schedule): 5 epochs of
    2 steps, a state after each epoch, `current_step` counted from the resumed epoch after a resume.

    A SIGTERM lands a step or two after it is sent (the entrypoint lets a state save finish first), so each stop
    is asked for early: at step 2, then at the second launch's first step; the third launch finishes."""
    opt_ml = make_opt_ml(tmp_path, max_steps=10, subsets={"1_bluebot": 4})
    launches = [_interrupt_when(opt_ml, 2), _interrupt_when(opt_ml, 1)]
    final = run_entrypoint(opt_ml)
    launches.append((final.returncode, final.stdout + final.stderr))

    assert [code for code, _ in launches] == [143, 143, 0], launches[-1][1]
    runs = [_metric_steps(text) for _, text in launches]
    assert all(runs), "every launch trained: the third one resumed from the second one's state"
    for index in (1, 2):
        previous, resumed, text = runs[index - 1], runs[index], launches[index][1]
        # A stop after a step but before its epoch's save loses that step; never more than the epoch.
        assert resumed[0] in (previous[-1] + 1, previous[-1]), text
        assert resumed[0] % 2 == 1, "resumed at an epoch start: the states are epoch states"
        assert "of 10 steps done" in text
    assert runs[-1][-1] == 10
    assert sorted(set(step for run in runs for step in run)) == list(range(1, 11))
    assert "stays in checkpoints/" in launches[0][1]
    assert (opt_ml / "model/bluebot.safetensors").is_file()


@pytest.mark.slow
def test_a_stop_between_the_final_state_and_the_lora_does_not_crash_the_restart(tmp_path: Path) -> None:
    opt_ml = make_opt_ml(tmp_path, max_steps=4, subsets={"1_bluebot": 4})
    assert run_entrypoint(opt_ml).returncode == 0
    checkpoints = opt_ml / "checkpoints"
    (checkpoints / "bluebot.safetensors").unlink()  # the stop landed after `<name>-state`, before the LoRA
    shutil.rmtree(opt_ml / "model")

    restart = run_entrypoint(opt_ml)

    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert "resuming from bluebot-000001-state (epoch 1, 2 of 4 steps done)" in restart.stdout
    assert _metric_steps(restart.stdout) == [3, 4]
    assert (opt_ml / "model/bluebot.safetensors").is_file()
