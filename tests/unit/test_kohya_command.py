"""The sd-scripts command line, checked against the argument table of sdxl_train_network.py v0.10.1."""

import csv
import sys
from importlib import resources
from pathlib import Path

import pytest
import toml  # the reader sd-scripts uses for --config_file

from lora_pipeline.kohya_contract import PIPELINE_DECIDED_KEYS, SDXL_BASE_MODEL, flatten_config
from lora_trainer.kohya_command import (
    KohyaRun,
    base_model_for,
    build_kohya_command,
    read_kohya_config,
    training_config,
    write_training_config,
)
from lora_trainer.workspace import ResumePoint, SavedState


def _argument_table() -> dict[str, str]:
    text = resources.files("lora_pipeline").joinpath("data/sdxl_train_network_args.tsv").read_text("utf-8")
    return {row["name"]: row["type"] for row in csv.DictReader(text.splitlines(), delimiter="\t")}


ARGUMENTS = _argument_table()

KOHYA_TOML = """
[model_arguments]
pretrained_model_name_or_path = "someone/sdxl-finetune"
[training_arguments]
output_name = "from-config"
output_dir = "/somewhere/else"
train_data_dir = "/not/the/scratch"
xformers = true
caption_extension = ".txt"
resolution = "1024,1024"
max_train_epochs = 10
mixed_precision = "bf16"
optimizer_args = ["weight_decay=0.01", "betas=0.9,0.99"]
[network_arguments]
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
"""


def _run(tmp_path: Path, **overrides: object) -> KohyaRun:
    values: dict[str, object] = {
        "sd_scripts_dir": Path("/opt/sd-scripts"),
        "train_data_dir": tmp_path / "scratch/dataset",
        "output_dir": tmp_path / "checkpoints",
        "output_name": "bluebot",
        "logging_dir": tmp_path / "output/data/logs",
        "tokenizer_cache_dir": Path("/opt/tokenizers"),
        "base_model": SDXL_BASE_MODEL,
        "sample_prompts": None,
        "resume": None,
        "num_processes": 1,
        "cpu_threads_per_process": 8,
    }
    values.update(overrides)
    return KohyaRun(**values)  # type: ignore[arg-type]


def _mid_epoch(state: Path) -> ResumePoint:
    return ResumePoint(
        SavedState(state, epoch=2, step=150), initial_step=150, skip_batches=True, total_steps=1000
    )


@pytest.fixture
def config(tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "kohya.toml"
    path.write_text(KOHYA_TOML)
    return read_kohya_config(path)


def _script_arguments(command: list[str]) -> list[str]:
    script = next(i for i, token in enumerate(command) if token.endswith("sdxl_train_network.py"))
    return command[script + 1 :]


def _options(arguments: list[str]) -> dict[str, list[str]]:
    """`--name value...` groups; bare values are attached to the option before them."""
    options: dict[str, list[str]] = {}
    current = None
    for token in arguments:
        if token.startswith("--"):
            current = token[2:]
            assert current not in options, f"{token} given twice"
            options[current] = []
        else:
            assert current is not None, f"value {token} before any option"
            options[current].append(token)
    return options


def test_every_option_exists_in_sd_scripts_and_gets_the_right_number_of_values(
    tmp_path: Path, config: dict[str, object]
) -> None:
    run = _run(
        tmp_path,
        sample_prompts=tmp_path / "prompts.txt",
        resume=_mid_epoch(tmp_path / "checkpoints/x-state"),
        trigger_phrase="bluebot, bluebot night",
    )
    options = _options(_script_arguments(build_kohya_command(tmp_path / "effective.toml", config, run)))
    for name, values in options.items():
        assert name in ARGUMENTS, f"--{name} is not an argument of sdxl_train_network.py v0.10.1"
        if ARGUMENTS[name].startswith("bool"):
            assert values == [], f"--{name} is a flag and takes no value"
        else:
            assert len(values) == 1, f"--{name} needs one value"


def test_paths_point_at_the_sagemaker_tree_not_at_the_config(
    tmp_path: Path, config: dict[str, object]
) -> None:
    effective = tmp_path / "effective.toml"
    options = _options(_script_arguments(build_kohya_command(effective, config, _run(tmp_path))))
    assert options["config_file"] == [str(effective)]
    assert options["train_data_dir"] == [str(tmp_path / "scratch/dataset")]
    assert options["output_dir"] == [str(tmp_path / "checkpoints")]
    assert options["output_name"] == ["bluebot"]
    assert options["tokenizer_cache_dir"] == ["/opt/tokenizers"]
    assert "sdpa" in options and "xformers" not in options
    assert "save_state" in options
    assert "resume" not in options and "sample_prompts" not in options


def test_resume_keeps_the_step_count(tmp_path: Path, config: dict[str, object]) -> None:
    state = tmp_path / "checkpoints/bluebot-000002-state"
    options = _options(
        _script_arguments(
            build_kohya_command(tmp_path / "e.toml", config, _run(tmp_path, resume=_mid_epoch(state)))
        )
    )
    assert options["resume"] == [str(state)]
    assert options["skip_until_initial_step"] == []


def test_resume_passes_the_start_step_the_pipeline_computed(
    tmp_path: Path, config: dict[str, object]
) -> None:
    """sd-scripts' own step in train_state.json counts from the resumed epoch after a first resume, so the
    entrypoint gives `--initial_step` (train_network.py prefers it over the state's step). At an epoch boundary
    nothing is skipped: without `--skip_until_initial_step` train_network.py only moves the first epoch."""
    mid_epoch = _options(
        _script_arguments(
            build_kohya_command(tmp_path / "e.toml", config, _run(tmp_path, resume=_mid_epoch(tmp_path)))
        )
    )
    assert mid_epoch["initial_step"] == ["150"] and "skip_until_initial_step" in mid_epoch
    state = SavedState(tmp_path / "bluebot-000005-state", epoch=5, step=200)
    boundary = ResumePoint(state, initial_step=500, skip_batches=False, total_steps=1000)
    options = _options(
        _script_arguments(build_kohya_command(tmp_path / "e.toml", config, _run(tmp_path, resume=boundary)))
    )
    assert options["resume"] == [str(state.directory)] and options["initial_step"] == ["500"]
    assert "skip_until_initial_step" not in options


def test_sample_prompts_render_every_epoch_unless_the_config_says_otherwise(
    tmp_path: Path, config: dict[str, object]
) -> None:
    run = _run(tmp_path, sample_prompts=tmp_path / "prompts.txt")
    options = _options(_script_arguments(build_kohya_command(tmp_path / "e.toml", config, run)))
    assert options["sample_prompts"] == [str(tmp_path / "prompts.txt")]
    assert options["sample_every_n_epochs"] == ["1"]
    config["sample_every_n_steps"] = 50
    options = _options(_script_arguments(build_kohya_command(tmp_path / "e.toml", config, run)))
    assert "sample_every_n_epochs" not in options


def test_one_process_per_gpu(tmp_path: Path, config: dict[str, object]) -> None:
    single = build_kohya_command(tmp_path / "e.toml", config, _run(tmp_path))
    multi = build_kohya_command(
        tmp_path / "e.toml", config, _run(tmp_path, num_processes=8, cpu_threads_per_process=4)
    )
    assert single[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" not in single
    launcher = multi[: multi.index("/opt/sd-scripts/sdxl_train_network.py")]
    assert launcher[launcher.index("--num_processes") + 1] == "8"
    assert launcher[launcher.index("--num_cpu_threads_per_process") + 1] == "4"
    assert launcher[launcher.index("--mixed_precision") + 1] == "bf16"
    assert "--multi_gpu" in launcher


def test_written_config_drops_owned_keys_and_reads_back_with_sd_scripts_reader(
    tmp_path: Path, config: dict[str, object]
) -> None:
    path = write_training_config(config, tmp_path / "effective.toml")
    written = toml.load(path)
    assert not PIPELINE_DECIDED_KEYS & written.keys()
    assert written["optimizer_args"] == ["weight_decay=0.01", "betas=0.9,0.99"]
    assert written["resolution"] == "1024,1024"
    assert written["network_dim"] == 32
    assert set(written) <= set(ARGUMENTS), "every key of the written config is an sd-scripts argument"


def test_owned_keys_are_sd_scripts_arguments() -> None:
    assert set(PIPELINE_DECIDED_KEYS) <= set(ARGUMENTS)


def test_periodic_state_saves_are_added_when_the_config_has_none() -> None:
    assert training_config({"max_train_epochs": 4}) == {
        "max_train_epochs": 4,
        "save_every_n_epochs": 1,
        "save_last_n_epochs_state": 2,
    }
    by_steps = training_config({"save_every_n_steps": 100})
    assert "save_every_n_epochs" not in by_steps
    assert by_steps["save_last_n_steps_state"] == 200
    assert (
        training_config({"save_every_n_epochs": 2, "save_last_n_epochs_state": 5})["save_last_n_epochs_state"]
        == 5
    )


def test_the_plans_checkpoint_interval_adds_step_saves_and_keeps_the_epoch_loras() -> None:
    derived = training_config({"max_train_epochs": 10}, checkpoint_every_n_steps=250)
    assert derived["save_every_n_steps"] == 250 and derived["save_every_n_epochs"] == 1
    assert derived["save_last_n_steps_state"] == derived["save_last_n_steps"] == 500
    assert derived["save_last_n_epochs_state"] == 2
    assert (
        training_config({"save_every_n_steps": 100}, checkpoint_every_n_steps=250)["save_every_n_steps"]
        == 100
    )
    assert (
        training_config({"save_every_n_steps": 900}, checkpoint_every_n_steps=250)["save_every_n_steps"]
        == 250
    )


def test_flatten_is_one_level_like_sd_scripts() -> None:
    assert flatten_config({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"b": 1, "c": {"d": 2}, "e": 3}


def test_base_model_precedence(tmp_path: Path) -> None:
    model = tmp_path / "model/base.safetensors"
    config = {"pretrained_model_name_or_path": "from/config"}
    assert base_model_for(config, model, "from/job") == str(model)
    assert base_model_for(config, None, "from/job") == "from/job"
    assert base_model_for(config, None, None) == "from/config"
    assert base_model_for({}, None, None) == SDXL_BASE_MODEL


def test_the_trigger_phrase_goes_into_the_lora_unless_the_config_sets_its_own(
    tmp_path: Path, config: dict[str, object]
) -> None:
    run = _run(tmp_path, trigger_phrase="bluebot, bluebot night")
    options = _options(_script_arguments(build_kohya_command(tmp_path / "e.toml", config, run)))
    # library/sai_model_spec.py add_model_spec_arguments -> modelspec.trigger_phrase in every saved LoRA.
    assert options["metadata_trigger_phrase"] == ["bluebot, bluebot night"]
    own = {**config, "metadata_trigger_phrase": "my words"}
    options = _options(_script_arguments(build_kohya_command(tmp_path / "e.toml", own, run)))
    assert "metadata_trigger_phrase" not in options, "the config's own phrase (in the config file) wins"
