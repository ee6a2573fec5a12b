"""Pure parts of the training container: the SageMaker contract, the dataset copy, resume discovery, key names."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from lora_pipeline.job_settings import JobSettings
from lora_pipeline.training_job_spec import training_job_spec
from lora_trainer.entrypoint import count_gpus, diagnose
from lora_trainer.kohya_format import original_unet_path
from lora_trainer.sagemaker_env import ContractError, OptMl, read_hyperparameters, read_job_inputs
from lora_trainer.workspace import (
    copy_dataset,
    find_resume_state,
    incomplete_states,
    save_in_progress,
    write_sample_prompts,
)
from tests.container_jobs import make_opt_ml

IMAGE = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/lora@sha256:{'1' * 64}"


def _state(checkpoints: Path, name: str, step: int, complete: bool = True) -> Path:
    state = checkpoints / name
    state.mkdir(parents=True)
    (state / "train_state.json").write_text(json.dumps({"current_epoch": 1, "current_step": step}))
    (state / "model.safetensors").write_bytes(b"weights")
    if complete:
        (state / "random_states_0.pkl").write_bytes(b"rng")
    return state


def test_resume_picks_the_furthest_complete_state_by_step_not_by_time(tmp_path: Path) -> None:
    _state(tmp_path, "bluebot-000002-state", step=200)
    newer_in_time_only = _state(tmp_path, "bluebot-000001-state", step=100)
    os.utime(newer_in_time_only, (time.time() + 60, time.time() + 60))
    _state(tmp_path, "bluebot-000003-state", step=300, complete=False)

    found = find_resume_state(tmp_path, "bluebot")

    assert found is not None and (found.state.directory.name, found.state.step) == (
        "bluebot-000002-state",
        200,
    )
    assert [p.name for p in incomplete_states(tmp_path)] == ["bluebot-000003-state"]


def test_no_states_means_a_fresh_start(tmp_path: Path) -> None:
    assert find_resume_state(tmp_path / "missing", "bluebot") is None
    (tmp_path / "bluebot-000001-state").mkdir()
    assert find_resume_state(tmp_path, "bluebot") is None


def test_a_save_is_in_progress_only_while_an_incomplete_state_is_being_written(tmp_path: Path) -> None:
    _state(tmp_path, "bluebot-000001-state", step=100)
    assert not save_in_progress(tmp_path, "bluebot")
    writing = _state(tmp_path, "bluebot-000002-state", step=200, complete=False)
    assert save_in_progress(tmp_path, "bluebot")
    for path in [writing, *writing.iterdir()]:
        os.utime(path, (time.time() - 600, time.time() - 600))
    assert not save_in_progress(tmp_path, "bluebot"), "a state abandoned long ago is not a save in progress"


def test_dataset_copy_leaves_latent_caches_and_root_files_behind(tmp_path: Path) -> None:
    source = tmp_path / "train"
    (source / "10_bluebot").mkdir(parents=True)
    (source / "10_bluebot" / "a.png").write_bytes(b"png")
    (source / "10_bluebot" / "a.caption").write_text("bluebot")
    (source / "10_bluebot" / "a_1024x1024_sdxl.npz").write_bytes(b"stale")
    (source / "config.toml").write_text("")
    (source / "_READY").write_text("")
    destination = tmp_path / "scratch"
    (destination / "old").mkdir(parents=True)

    assert copy_dataset(source, destination) == 2
    assert sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*") if p.is_file()) == [
        "10_bluebot/a.caption",
        "10_bluebot/a.png",
    ]


def test_sample_prompts_render_at_1024_unless_a_size_is_given(tmp_path: Path) -> None:
    source = tmp_path / "prompts.txt"
    source.write_text("a bluebot --n blurry\n# a comment\na bluebot at night --w 832 --h 1216\n\n")
    lines = write_sample_prompts(source, tmp_path / "out.txt").read_text().splitlines()
    assert lines == [
        "a bluebot --n blurry --w 1024 --h 1024",
        "# a comment",
        "a bluebot at night --w 832 --h 1216",
        "",
    ]


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"output_name": "x", "dataset": "d"}, "run_id"),
        ({"output_name": "x", "dataset": "d", "run_id": "r", "trainer": "dreambooth"}, "kohya, smoke"),
        ({"output_name": "../x", "dataset": "d", "run_id": "r"}, "plain file name"),
        ({"output_name": "-x", "dataset": "d", "run_id": "r"}, "plain file name"),
        ({"output_name": "x", "dataset": "d", "run_id": "r", "max_steps": "-3"}, "positive whole number"),
        (
            {"output_name": "x", "dataset": "d", "run_id": "r", "checkpoint_every_n_steps": "0"},
            "positive whole",
        ),
    ],
)
def test_bad_hyperparameters_name_the_file_and_the_fix(
    hyperparameters: dict[str, str], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps(hyperparameters))
    with pytest.raises(ContractError, match=message) as error:
        read_hyperparameters(path)
    assert str(path) in str(error.value)


def test_hyperparameters_default_to_kohya(tmp_path: Path) -> None:
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({"output_name": "x", "dataset": "d", "run_id": "r", "max_steps": 5}))
    parsed = read_hyperparameters(path)
    assert (parsed.trainer, parsed.max_steps, parsed.base_model) == ("kohya", 5, None)


def test_model_channel_needs_exactly_one_safetensors(tmp_path: Path) -> None:
    opt_ml = OptMl(make_opt_ml(tmp_path))
    model = opt_ml.channel("model")
    model.mkdir()
    (model / "a.safetensors").write_bytes(b"")
    assert read_job_inputs(opt_ml).base_model_file == model / "a.safetensors"
    (model / "b.safetensors").write_bytes(b"")
    with pytest.raises(ContractError, match="exactly one"):
        read_job_inputs(opt_ml)


def test_more_than_one_host_is_refused(tmp_path: Path) -> None:
    opt_ml = OptMl(make_opt_ml(tmp_path))
    opt_ml.resource_config_file.write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]})
    )
    with pytest.raises(ContractError, match="InstanceCount = 1"):
        read_job_inputs(opt_ml)


def test_opt_ml_root_moves_with_the_environment(tmp_path: Path) -> None:
    assert OptMl.from_environ({}).root == Path("/opt/ml")
    assert OptMl.from_environ({"OPT_ML": str(tmp_path)}).failure_file == tmp_path / "output" / "failure"


def test_gpus_are_counted_from_device_files(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvme0"):
        (tmp_path / name).write_text("")
    assert count_gpus(tmp_path) == 2


def test_diagnosis_names_the_cause_or_quotes_the_last_error() -> None:
    assert "<repeats>_<class tokens>" in diagnose(["No data found. Please verify arguments"])
    assert "gradient_checkpointing" in diagnose(["torch.OutOfMemoryError: CUDA out of memory. Tried"])
    quoted = diagnose(["Traceback (most recent call last):", "KeyError: 'network_dim'", "done"])
    assert "KeyError: 'network_dim'" in quoted


@pytest.mark.parametrize(
    ("diffusers", "original"),
    [
        ("down_blocks.1.attentions.0.proj_in", "input_blocks.4.1.proj_in"),
        (
            "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k",
            "input_blocks.8.1.transformer_blocks.9.attn2.to_k",
        ),
        (
            "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
            "middle_block.1.transformer_blocks.0.ff.net.2",
        ),
        ("up_blocks.0.attentions.2.proj_out", "output_blocks.2.1.proj_out"),
        (
            "up_blocks.1.attentions.0.transformer_blocks.1.attn1.to_out.0",
            "output_blocks.3.1.transformer_blocks.1.attn1.to_out.0",
        ),
    ],
)
def test_unet_paths_follow_the_original_sdxl_layout(diffusers: str, original: str) -> None:
    assert original_unet_path(diffusers, layers_per_block=2) == original


def test_paths_outside_attention_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="attention"):
        original_unet_path("down_blocks.0.resnets.0.conv1", layers_per_block=2)


def test_dataset_copy_keeps_the_latent_caches_of_unchanged_images_across_a_restart(tmp_path: Path) -> None:
    """The copy lives under checkpoints/: after a spot restart it is back with sd-scripts' .npz files
    (library/strategy_sd.py / strategy_sdxl.py names), which stay only while their image is the same."""
    source = tmp_path / "train"
    (source / "10_bluebot").mkdir(parents=True)
    for name in ("a", "b", "ab"):
        (source / "10_bluebot" / f"{name}.png").write_bytes(f"png {name}".encode())
    destination = tmp_path / "checkpoints" / "dataset"
    assert copy_dataset(source, destination) == 3
    subset = destination / "10_bluebot"
    caches = {
        "a": ["a_1024x1024_sdxl.npz", "a_te_outputs.npz"],
        "b": ["b_0832x1216_sdxl.npz"],
        "ab": ["ab_1024x1024_sdxl.npz"],
    }
    for names in caches.values():
        for name in names:
            (subset / name).write_bytes(b"latents")
    (source / "10_bluebot" / "b.png").write_bytes(b"png b, edited")  # changed while the job was down
    (source / "10_bluebot" / "ab.png").unlink()  # removed

    assert copy_dataset(source, destination) == 1, "only the changed image is copied again"

    assert sorted(p.name for p in subset.iterdir()) == [
        "a.png",
        "a_1024x1024_sdxl.npz",
        "a_te_outputs.npz",
        "b.png",
    ]
    assert (subset / "b.png").read_bytes() == b"png b, edited"


def test_the_plans_checkpoint_interval_reaches_the_container(tmp_path: Path) -> None:
    job = JobSettings(
        instance_type="ml.g5.2xlarge",
        volume_size_gb=50,
        max_runtime_hours=12.0,
        spot=True,
        trainer="kohya",
        base_model="stabilityai/stable-diffusion-xl-base-1.0",
    )
    spec = training_job_spec(
        "bkt", "bluebot", "r", job, "bluebot", None, checkpoint_every_n_steps=947, training_image=IMAGE
    )
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps(spec.hyperparameters))
    assert read_hyperparameters(path).checkpoint_every_n_steps == 947
    assert (
        "checkpoint_every_n_steps"
        not in training_job_spec("bkt", "b", "r", job, "b", None, training_image=IMAGE).hyperparameters
    )


def test_a_save_into_an_older_states_folder_is_a_save_in_progress(tmp_path: Path) -> None:
    """After a resume sd-scripts can save `<name>-step<n>-state` where an older save of that name is: the
    folder keeps looking complete while train_state.json is already the new one."""
    state = _state(tmp_path, "bluebot-step00000050-state", step=50)
    for path in [state, *state.iterdir()]:
        os.utime(path, (time.time() - 600, time.time() - 600))
    assert not save_in_progress(tmp_path, "bluebot")
    (state / "train_state.json").write_text(json.dumps({"current_epoch": 4, "current_step": 50}))
    assert save_in_progress(tmp_path, "bluebot")
    (state / "random_states_0.pkl").write_bytes(b"rng")
    assert not save_in_progress(tmp_path, "bluebot")


def test_sample_prompt_sizes_are_read_as_sd_scripts_reads_them(tmp_path: Path) -> None:
    # line_to_prompt_dict matches options case-insensitively and a later option wins: appending --w 1024
    # after --W 832 would silently render at 1024.
    source = tmp_path / "prompts.txt"
    source.write_text("a bluebot --W 832 --H 1216\na bluebot --h 768\na bluebot --w big\n")
    lines = write_sample_prompts(source, tmp_path / "out.txt").read_text().splitlines()
    assert lines == [
        "a bluebot --W 832 --H 1216",
        "a bluebot --h 768 --w 1024",
        "a bluebot --w big --w 1024 --h 1024",
    ]
