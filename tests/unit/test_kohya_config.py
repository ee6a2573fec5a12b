from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import toml  # the reader sd-scripts v0.10.1 uses for --config_file

from lora_pipeline.kohya_config import (
    ADAFACTOR_ARGS,
    KohyaConfigResult,
    PipelineInputs,
    build_effective_config,
)
from lora_pipeline.kohya_contract import CONTAINER_OWNED_KEYS
from lora_pipeline.names import safe_output_name
from lora_pipeline.problems import Problem, Severity, catalogue

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DATASET_KEYS = (
    "caption_extension",
    "resolution",
    "enable_bucket",
    "min_bucket_reso",
    "max_bucket_reso",
    "bucket_no_upscale",
)


def build(
    text: str | None,
    *,
    dataset: str = "pets",
    output_name: str | None = None,
    base_model: str | None = SDXL_BASE,
    sample_every: int | None = None,
) -> KohyaConfigResult:
    return build_effective_config(text, PipelineInputs(dataset, output_name, base_model, sample_every))


def effective(text: str | None, **inputs: Any) -> dict[str, Any]:
    result = build(text, **inputs)
    assert result.effective is not None
    return result.effective


def problems(text: str | None, code: str, **inputs: Any) -> list[Problem]:
    return [p for p in build(text, **inputs).problems if p.code == code]


def only(text: str, code: str, **inputs: Any) -> Problem:
    """The one problem `text` gives, which must have `code`."""
    found = build(text, **inputs).problems
    assert [p.code for p in found] == [code], found
    return found[0]


# --- parsing and flattening -----------------------------------------------------------------------------------


def test_no_config_gives_the_defaults_and_no_problems() -> None:
    result = build(None)
    assert result.problems == []
    assert result.effective is not None
    assert result.effective["network_module"] == "networks.lora"


def test_invalid_toml_names_line_and_column_and_has_no_effective_config() -> None:
    result = build("network_dim = 8\nresolution = 1024,1024\n")
    assert result.effective is None
    [problem] = result.problems
    assert problem.code == "CONFIG_PARSE_ERROR"
    assert problem.file == "config.toml"
    assert "line 2, column" in problem.message
    with pytest.raises(ValueError, match="could not be parsed"):
        result.to_toml()


def test_problems_carry_the_file_name_given() -> None:
    result = build_effective_config(
        "nope = 1", PipelineInputs("pets", None, SDXL_BASE, None), file="x/config.toml"
    )
    assert {p.file for p in result.problems} == {"x/config.toml"}


def test_top_level_tables_are_flattened_one_level_like_sd_scripts() -> None:
    config = effective("max_train_epochs = 3\n[network]\nnetwork_dim = 8\n[training]\ntrain_batch_size = 2\n")
    assert (config["max_train_epochs"], config["network_dim"], config["train_batch_size"]) == (3, 8, 2)


def test_dataset_config_format_is_refused_with_the_folder_convention_as_fix() -> None:
    text = '[[datasets]]\nresolution = 1024\n[[datasets.subsets]]\nimage_dir = "x"\nnum_repeats = 2\n'
    problem = only(text, "CONFIG_DATASET_CONFIG_FORMAT")
    assert "<repeats>_<class tokens>" in (problem.fix or "")


def test_tables_nested_two_levels_are_refused() -> None:
    only("[training.extra]\nnetwork_dim = 8\n", "CONFIG_NESTED_TABLE")


def test_a_key_set_in_two_tables_is_an_error() -> None:
    problem = only("network_dim = 8\n[network]\nnetwork_dim = 16\n", "CONFIG_DUPLICATE_KEY")
    assert "[network]" in problem.message


def test_unknown_keys_are_errors_with_a_did_you_mean() -> None:
    problem = only("learnig_rate = 0.0001\n", "CONFIG_UNKNOWN_KEY")
    assert "did you mean learning_rate" in problem.message


def test_known_non_arguments_get_a_specific_hint() -> None:
    assert "max_train_epochs" in only("epoch = 10\n", "CONFIG_UNKNOWN_KEY").message


# --- types and choices ------------------------------------------------------------------------------------------


def test_an_int_where_a_float_is_expected_is_fine_and_becomes_a_float() -> None:
    config = effective("learning_rate = 1\nnetwork_alpha = 8\n")
    assert config["learning_rate"] == 1.0 and isinstance(config["learning_rate"], float)
    assert isinstance(config["network_alpha"], float)


@pytest.mark.parametrize(
    "line",
    [
        "network_dim = 8.0",
        "train_batch_size = 1.5",
        'max_train_epochs = "10"',
        "gradient_checkpointing = 0",
        'cache_latents = "true"',
        "learning_rate = true",
        'optimizer_args = "scale_parameter=False"',
        "network_args = [1, 2]",
        'text_encoder_lr = "1e-5"',
        'lr_warmup_steps = "10%"',
        "caption_extension = 1",
    ],
)
def test_values_of_the_wrong_toml_type_are_errors(line: str) -> None:
    result = build(line + "\n")
    assert [p.code for p in result.problems] == ["CONFIG_WRONG_TYPE"]
    key = line.split(" = ")[0]
    assert result.effective is not None
    assert result.effective.get(key) != toml.loads(line)[key]


def test_resolution_must_be_a_string() -> None:
    problem = only("resolution = 1024\n", "CONFIG_WRONG_TYPE")
    assert '"1024,1024"' in (problem.fix or "")


@pytest.mark.parametrize("value", ["1024x1024", "1024,1024,1024", "0,512", "big"])
def test_resolution_strings_must_be_w_h_or_s(value: str) -> None:
    only(f'resolution = "{value}"\n', "CONFIG_BAD_VALUE")


@pytest.mark.parametrize("value", ["1024", "896,1152"])
def test_good_resolution_strings_are_kept(value: str) -> None:
    assert effective(f'resolution = "{value}"\n')["resolution"] == value


def test_text_encoder_lr_may_be_a_single_number_or_an_array() -> None:
    assert effective("text_encoder_lr = 5e-5\n")["text_encoder_lr"] == 5e-5
    assert effective("text_encoder_lr = [5e-5, 1e-5]\n")["text_encoder_lr"] == [5e-5, 1e-5]


def test_choices_are_enforced() -> None:
    problem = only('mixed_precision = "fp32"\n', "CONFIG_BAD_CHOICE")
    assert '"bf16"' in problem.message
    assert effective("max_token_length = 150\n")["max_token_length"] == 150
    only("max_token_length = 100\n", "CONFIG_BAD_CHOICE")


# --- Kohya GUI keys ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        'model_list = "custom"',
        "sdxl = true",
        "unit = 1",
        "train_on_input = true",
        'noise_offset_type = "Original"',
        "no_token_padding = false",
    ],
)
def test_gui_only_keys_are_dropped_with_a_warning(line: str) -> None:
    key = line.split(" = ")[0]
    problem = only(line + "\n", "CONFIG_GUI_KEY_NORMALISED")
    assert problem.severity is Severity.WARNING and key in problem.message
    assert key not in effective(line + "\n")


@pytest.mark.parametrize("value", ['"xformers"', '"sdpa"', '"none"', '"Xformers"', "true"])
def test_xformers_becomes_sdpa_because_the_image_has_no_xformers(value: str) -> None:
    text = f"xformers = {value}\n"
    only(text, "CONFIG_GUI_KEY_NORMALISED")
    config = effective(text)
    assert "xformers" not in config and config["sdpa"] is True


def test_xformers_false_is_a_silent_no_op() -> None:
    assert build("xformers = false\n").problems == []


def test_unknown_xformers_strings_are_refused() -> None:
    only('xformers = "flash"\n', "CONFIG_BAD_CHOICE")


@pytest.mark.parametrize("line", ["mem_eff_attn = true", "sdpa = false"])
def test_other_attention_choices_give_way_to_sdpa(line: str) -> None:
    only(line + "\n", "CONFIG_NO_EFFECT")
    config = effective(line + "\n")
    assert config["sdpa"] is True and "mem_eff_attn" not in config


def test_conv_dim_and_conv_alpha_move_into_network_args() -> None:
    text = 'conv_dim = 8\nconv_alpha = 4\nnetwork_args = ["rank_dropout=0.1"]\n'
    only(text, "CONFIG_GUI_KEY_NORMALISED")
    config = effective(text)
    assert config["network_args"] == ["rank_dropout=0.1", "conv_dim=8", "conv_alpha=4"]
    assert "conv_dim" not in config and "conv_alpha" not in config


def test_conv_args_already_in_network_args_are_not_duplicated() -> None:
    config = effective('conv_dim = 8\nnetwork_args = ["conv_dim=16"]\n')
    assert config["network_args"] == ["conv_dim=16"]


def test_conv_dim_zero_is_dropped() -> None:
    only("conv_dim = 0\nconv_alpha = 1\n", "CONFIG_GUI_KEY_NORMALISED")
    assert "network_args" not in effective("conv_dim = 0\nconv_alpha = 1\n")


def test_vae_batch_size_zero_is_dropped_but_other_values_are_kept() -> None:
    only("vae_batch_size = 0\n", "CONFIG_GUI_KEY_NORMALISED")
    assert "vae_batch_size" not in effective("vae_batch_size = 0\n")
    assert effective("vae_batch_size = 4\n")["vae_batch_size"] == 4
    only("vae_batch_size = -1\n", "CONFIG_BAD_VALUE")


@pytest.mark.parametrize("line", ["max_token_length = 75", 'dynamo_backend = "no"'])
def test_gui_unset_values_are_dropped(line: str) -> None:
    only(line + "\n", "CONFIG_GUI_KEY_NORMALISED")
    assert line.split(" = ")[0] not in effective(line + "\n")


def test_clip_skip_is_dropped_because_sdxl_does_not_use_it() -> None:
    only("clip_skip = 2\n", "CONFIG_NO_EFFECT")
    assert "clip_skip" not in effective("clip_skip = 2\n")


def test_the_misspelt_caption_extention_is_used_as_caption_extension() -> None:
    text = 'caption_extension = ".caption"\ncaption_extention = ".txt"\n'
    only(text, "CONFIG_GUI_KEY_NORMALISED")
    assert effective(text)["caption_extension"] == ".txt"


@pytest.mark.parametrize(
    ("flag", "optimizer"), [("use_8bit_adam", "AdamW8bit"), ("use_lion_optimizer", "Lion")]
)
def test_legacy_optimizer_flags_become_optimizer_type(flag: str, optimizer: str) -> None:
    only(f"{flag} = true\n", "CONFIG_GUI_KEY_NORMALISED")
    config = effective(f"{flag} = true\n")
    assert config["optimizer_type"] == optimizer and flag not in config
    assert "optimizer_args" not in config


def test_legacy_optimizer_flag_with_optimizer_type_is_a_conflict() -> None:
    only('use_8bit_adam = true\noptimizer_type = "AdamW"\n', "CONFIG_CONFLICT")


# --- security ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["networks.lora", "networks.dylora", "networks.lora_fa"])
def test_allowed_network_modules(module: str) -> None:
    assert build(f'network_module = "{module}"\n').problems == []


def test_oft_is_refused_because_the_output_check_refuses_its_output() -> None:
    problem = only('network_module = "networks.oft"\n', "CONFIG_NOT_ALLOWED")
    assert "networks.oft" in problem.message and "oft_blocks" in problem.message


@pytest.mark.parametrize("module", ["os", "my_package.evil", "networks.lora_flux", "lycoris.kohya"])
def test_other_network_modules_are_refused(module: str) -> None:
    problem = only(f'network_module = "{module}"\n', "CONFIG_NOT_ALLOWED")
    assert "networks.lora" in (problem.fix or "")
    assert effective(f'network_module = "{module}"\n')["network_module"] == "networks.lora"


def test_lycoris_refusal_says_it_is_not_installed() -> None:
    assert (
        "LyCORIS is not installed" in only('network_module = "lycoris.kohya"\n', "CONFIG_NOT_ALLOWED").message
    )


@pytest.mark.parametrize(
    "name", ["AdamW", "adamw8bit", "ADAFACTOR", "Prodigy", "PagedAdamW8bit", "Adam", "RMSprop"]
)
def test_allowed_optimizers_match_as_sd_scripts_matches_them(name: str) -> None:
    assert build(f'optimizer_type = "{name}"\n').problems == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bitsandbytes.optim.AdEMAMix8bit", "dotted"),
        ("adam", "case-sensitive"),
        ("DAdaptAdam", "dadaptation"),
        ("builtins.exec", "dotted"),
    ],
)
def test_other_optimizers_are_refused(name: str, reason: str) -> None:
    problem = only(f'optimizer_type = "{name}"\n', "CONFIG_NOT_ALLOWED")
    assert reason in problem.message


def test_optimizer_refusal_suggests_the_right_spelling() -> None:
    assert "Did you mean Adam?" in only('optimizer_type = "adam"\n', "CONFIG_NOT_ALLOWED").message


def test_lr_scheduler_type_is_allow_listed() -> None:
    assert build('lr_scheduler_type = "CosineAnnealingLR"\n').problems == []
    only('lr_scheduler_type = "torch.optim.lr_scheduler.StepLR"\n', "CONFIG_NOT_ALLOWED")


def test_unknown_lr_scheduler_names_are_refused() -> None:
    only('lr_scheduler = "cosine_annealing"\n', "CONFIG_BAD_CHOICE")


@pytest.mark.parametrize("key", ["wandb_api_key", "huggingface_token"])
def test_secrets_are_errors_and_are_not_repeated(key: str) -> None:
    problem = only(f'{key} = "s3cr3t-value"\n', "CONFIG_SECRET")
    assert "s3cr3t-value" not in problem.message
    assert key not in effective(f'{key} = "s3cr3t-value"\n')


def test_empty_secrets_from_gui_exports_are_dropped_quietly() -> None:
    problem = only('huggingface_token = ""\n', "CONFIG_EMPTY_KEY_DROPPED")
    assert problem.severity is Severity.INFO


@pytest.mark.parametrize("line", ['huggingface_repo_id = "me/my-lora"', "save_state_to_huggingface = true"])
def test_hugging_face_uploads_are_refused(line: str) -> None:
    only(line + "\n", "CONFIG_OUTSIDE_SERVICE")


@pytest.mark.parametrize("value", ["wandb", "all"])
def test_outside_loggers_are_refused(value: str) -> None:
    only(f'log_with = "{value}"\n', "CONFIG_OUTSIDE_SERVICE")


def test_tensorboard_logging_is_allowed() -> None:
    assert effective('log_with = "tensorboard"\n')["log_with"] == "tensorboard"


@pytest.mark.parametrize("key", sorted(CONTAINER_OWNED_KEYS))
def test_pipeline_owned_keys_are_removed_with_a_warning(key: str) -> None:
    value = "true" if key == "skip_until_initial_step" else "3" if key.startswith("initial_") else '"/data/x"'
    problem = only(f"{key} = {value}\n", "CONFIG_PIPELINE_OWNED")
    assert problem.severity is Severity.WARNING
    assert key not in effective(f"{key} = {value}\n")


def test_empty_owned_paths_from_gui_exports_are_dropped_quietly() -> None:
    assert only('output_dir = ""\n', "CONFIG_EMPTY_KEY_DROPPED").severity is Severity.INFO


@pytest.mark.parametrize(
    "line",
    [
        'reg_data_dir = "/reg"',
        'in_json = "meta.json"',
        'dataset_config = "d.toml"',
        'dataset_class = "mymodule.MyDataset"',
        'vae = "madebyollin/sdxl-vae-fp16-fix"',
        'network_weights = "old.safetensors"',
        "output_config = true",
        "debug_dataset = true",
        "v2 = true",
        "deepspeed = true",
    ],
)
def test_unsupported_arguments_are_errors(line: str) -> None:
    only(line + "\n", "CONFIG_UNSUPPORTED")
    assert line.split(" = ")[0] not in effective(line + "\n")


def test_unsupported_flags_set_to_false_are_harmless() -> None:
    assert only("v2 = false\n", "CONFIG_EMPTY_KEY_DROPPED").severity is Severity.INFO


def test_the_base_model_comes_from_pipeline_inputs() -> None:
    assert effective(None)["pretrained_model_name_or_path"] == SDXL_BASE
    text = 'pretrained_model_name_or_path = "someone/other-model"\n'
    problem = only(text, "CONFIG_PIPELINE_OWNED")
    assert "base_model" in (problem.fix or "")
    assert effective(text)["pretrained_model_name_or_path"] == SDXL_BASE


def test_the_base_model_is_left_to_the_container_when_s3_supplies_it() -> None:
    text = 'pretrained_model_name_or_path = "/models/x.safetensors"\n'
    only(text, "CONFIG_PIPELINE_OWNED", base_model=None)
    assert "pretrained_model_name_or_path" not in effective(text, base_model=None)


def test_the_same_base_model_in_the_config_is_not_reported() -> None:
    assert build(f'pretrained_model_name_or_path = "{SDXL_BASE}"\n').problems == []


# --- defaults ---------------------------------------------------------------------------------------------------


def test_sdxl_defaults_fill_what_the_user_left_out() -> None:
    config = effective(None)
    expected = {
        "sdpa": True,
        "mixed_precision": "bf16",
        "save_precision": "bf16",
        "gradient_checkpointing": True,
        "cache_latents": True,
        "no_half_vae": True,
        "network_dim": 32,
        "network_alpha": 16.0,
        "optimizer_type": "Adafactor",
        "optimizer_args": list(ADAFACTOR_ARGS),
        "resolution": "1024,1024",
        "enable_bucket": True,
        "max_train_epochs": 10,
        "train_batch_size": 1,
        "caption_extension": ".caption",
        "save_model_as": "safetensors",
        "output_name": "pets",
    }
    assert {key: config[key] for key in expected} == expected
    for key in ("save_state", "save_every_n_epochs", "save_every_n_steps", "resume", "sample_every_n_epochs"):
        assert key not in config


def test_dataset_keys_are_always_present() -> None:
    config = effective("enable_bucket = false\n")
    assert all(key in config for key in DATASET_KEYS)
    assert config["enable_bucket"] is False


def test_user_values_win_over_defaults() -> None:
    config = effective('network_dim = 8\nmixed_precision = "fp16"\nsave_every_n_epochs = 2\n')
    assert (config["network_dim"], config["mixed_precision"], config["save_precision"]) == (8, "fp16", "fp16")
    assert config["save_every_n_epochs"] == 2


def test_max_train_epochs_default_only_without_a_length() -> None:
    config = effective("max_train_steps = 500\n")
    assert config["max_train_steps"] == 500 and "max_train_epochs" not in config


def test_a_chosen_optimizer_does_not_get_adafactors_arguments() -> None:
    config = effective('optimizer_type = "AdamW8bit"\n')
    assert config["optimizer_type"] == "AdamW8bit" and "optimizer_args" not in config


def test_optimizer_args_without_optimizer_type_mean_sd_scripts_adamw() -> None:
    text = 'optimizer_args = ["weight_decay=0.1"]\n'
    only(text, "CONFIG_NO_EFFECT")
    assert effective(text)["optimizer_type"] == "AdamW"


@pytest.mark.parametrize("key", ["color_aug", "random_crop"])
def test_latents_are_not_cached_by_default_when_augmenting(key: str) -> None:
    assert "cache_latents" not in effective(f"{key} = true\n")


def test_by_default_only_the_unet_trains_from_cached_text_encoder_outputs_and_cached_latents() -> None:
    result = build(None)
    config = result.effective
    assert config is not None
    assert config["network_train_unet_only"] is True
    assert config["cache_text_encoder_outputs"] is True
    assert config["cache_latents"] is True and config["cache_latents_to_disk"] is True
    assert "text_encoder_lr" not in config
    # The same rules that mirror sdxl_train_network.py assert_extra_args accept the combination.
    assert [p for p in result.problems if p.severity is Severity.ERROR] == []


def test_one_key_trains_the_text_encoders_again_at_a_tenth_of_the_unet_rate() -> None:
    result = build("network_train_unet_only = false\nlearning_rate = 2e-4\n")
    config = result.effective
    assert config is not None and result.problems == []
    assert config["network_train_unet_only"] is False
    assert "cache_text_encoder_outputs" not in config, "sd-scripts cannot train encoders from cached outputs"
    assert config["text_encoder_lr"] == pytest.approx(2e-5)
    assert effective("network_train_unet_only = false\nunet_lr = 5e-4\n")["text_encoder_lr"] == pytest.approx(
        5e-5
    )
    assert effective("network_train_unet_only = false\ntext_encoder_lr = 3e-5\n")["text_encoder_lr"] == 3e-5
    stopped = effective("network_train_unet_only = false\nunet_lr = 0.0\n")
    assert "text_encoder_lr" not in stopped, "a U-Net switched off leaves the encoders at learning_rate"
    prodigy = effective('network_train_unet_only = false\noptimizer_type = "Prodigy"\n')
    assert "text_encoder_lr" not in prodigy, "Prodigy adapts every rate itself"


@pytest.mark.parametrize("key", ["shuffle_caption = true", "caption_dropout_rate = 0.1"])
def test_changing_captions_keep_unet_only_training_without_the_text_encoder_cache(key: str) -> None:
    result = build(key + "\n")
    config = result.effective
    assert config is not None
    assert config["network_train_unet_only"] is True and "cache_text_encoder_outputs" not in config
    assert [p.code for p in result.problems if p.severity is Severity.ERROR] == []


# --- output name ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("pets", "pets"),
        ("My Dogs (2024)", "My_Dogs_2024"),
        ("a.b/c", "a_b_c"),
        ("__x--", "x"),
        ("!!!", "lora"),
    ],
)
def test_safe_output_name(name: str, safe: str) -> None:
    assert safe_output_name(name) == safe


def test_output_name_defaults_to_the_sanitised_dataset_name() -> None:
    assert effective(None, dataset="my dogs")["output_name"] == "my_dogs"


def test_pipeline_output_name_wins_with_a_warning_when_they_differ() -> None:
    assert only('output_name = "a"\n', "CONFIG_OUTPUT_NAME", output_name="b")
    assert effective('output_name = "a"\n', output_name="b")["output_name"] == "b"
    assert build('output_name = "b"\n', output_name="b").problems == []


def test_config_output_name_is_used_without_a_pipeline_one() -> None:
    assert effective('output_name = "dog_v1"\n')["output_name"] == "dog_v1"


def test_the_blog_sample_output_name_is_replaced() -> None:
    only('output_name = "custom_lora_model"\n', "CONFIG_OUTPUT_NAME")
    assert effective('output_name = "custom_lora_model"\n', dataset="cats")["output_name"] == "cats"


def test_an_extension_in_output_name_is_removed() -> None:
    only('output_name = "dog.safetensors"\n', "CONFIG_OUTPUT_NAME")
    assert effective('output_name = "dog.safetensors"\n')["output_name"] == "dog"


def test_output_names_that_are_not_safe_file_names_are_errors() -> None:
    problem = only('output_name = "../escape me"\n', "CONFIG_BAD_VALUE")
    assert '"escape_me"' in (problem.fix or "")


# --- sample prompts ---------------------------------------------------------------------------------------------


def test_sampling_settings_come_with_pipeline_prompts() -> None:
    config = effective(None, sample_every=2)
    assert (config["sample_every_n_epochs"], config["sample_sampler"]) == (2, "euler_a")
    assert effective('sample_sampler = "k_euler"\n', sample_every=1)["sample_sampler"] == "k_euler"


def test_sampling_intervals_without_pipeline_prompts_are_removed() -> None:
    text = 'sample_every_n_epochs = 1\nsample_at_first = true\nsample_sampler = "ddim"\n'
    assert len(problems(text, "CONFIG_PIPELINE_OWNED")) == 2
    config = effective(text)
    assert "sample_every_n_epochs" not in config and "sample_at_first" not in config
    assert config["sample_sampler"] == "ddim"


def test_pipeline_sample_interval_wins() -> None:
    only("sample_every_n_epochs = 3\n", "CONFIG_PIPELINE_OWNED", sample_every=1)
    assert effective("sample_every_n_epochs = 3\n", sample_every=1)["sample_every_n_epochs"] == 1


# --- single-value rules -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "train_batch_size = 0",
        "max_train_epochs = 0",
        "network_dim = 0",
        "gradient_accumulation_steps = 0",
        "save_every_n_epochs = 0",
        "learning_rate = 0",
        "unet_lr = -0.0001",
        "text_encoder_lr = [1e-5, -1e-5]",
        "caption_dropout_rate = 1.5",
        "lr_warmup_steps = 1.5",
        "lr_warmup_steps = -1",
        "min_timestep = 1200",
        "validation_split = 1.0",
        'face_crop_aug_range = "4.0,2.0"',
        'caption_extension = "a/b"',
        'save_model_as = "ckpt"',
        'optimizer_args = ["lr"]',
        'optimizer_args = ["d_coef=two"]',
        'optimizer_args = ["a=1=2"]',
        'lr_scheduler_args = ["T_max"]',
        'network_args = ["conv_dim"]',
    ],
)
def test_values_sd_scripts_cannot_use_are_errors(line: str) -> None:
    only(line + "\n", "CONFIG_BAD_VALUE")
    key = line.split(" = ")[0]
    assert effective(line + "\n").get(key) != toml.loads(line)[key]


@pytest.mark.parametrize(
    "line",
    [
        "lr_warmup_steps = 0.1",
        "lr_warmup_steps = 100",
        'optimizer_type = "AdamW"\noptimizer_args = ["betas=(0.9,0.99)", "weight_decay=0.01"]',
        'network_args = ["conv_dim= 4", "conv_alpha=1"]',
    ],
)
def test_edge_values_sd_scripts_accepts_are_kept(line: str) -> None:
    assert build(line + "\n").problems == []


# --- combinations -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "network_train_unet_only = true\nnetwork_train_text_encoder_only = true",
        "cache_text_encoder_outputs = true",
        "cache_text_encoder_outputs_to_disk = true",
        "cache_text_encoder_outputs = true\nnetwork_train_unet_only = true\nshuffle_caption = true",
        "cache_text_encoder_outputs = true\nnetwork_train_unet_only = true\ncaption_dropout_rate = 0.1",
        "cache_latents = true\ncolor_aug = true",
        "cache_latents_to_disk = true\nrandom_crop = true",
        "full_fp16 = true",
        'full_bf16 = true\nmixed_precision = "fp16"',
        'fp8_base = true\nmixed_precision = "no"',
        'lr_scheduler = "constant"\nlr_warmup_steps = 10',
        'optimizer_type = "Adafactor"\noptimizer_args = []\nlr_warmup_steps = 10',
        'lr_scheduler_type = "StepLR"\nlr_scheduler_args = ["step_size=10"]\nlr_warmup_steps = 10',
        'optimizer_type = "AdamW"\nlr_scheduler = "adafactor"',
        'min_bucket_reso = 1280\nresolution = "1024,1024"',
        'max_bucket_reso = 768\nresolution = "1024,1024"',
        "bucket_reso_steps = 48",
        "adaptive_noise_scale = 0.01",
        "scale_v_pred_loss_like_noise_pred = true",
        "v_pred_like_loss = 0.1\nv_parameterization = true",
        "persistent_data_loader_workers = true\nmax_data_loader_n_workers = 0",
        "min_timestep = 500\nmax_timestep = 100",
    ],
)
def test_combinations_sd_scripts_refuses_are_errors(text: str) -> None:
    found = build(text + "\n").problems
    assert [p.code for p in found if p.severity is Severity.ERROR] == ["CONFIG_CONFLICT"], found


@pytest.mark.parametrize(
    "text",
    [
        "cache_text_encoder_outputs = true\nnetwork_train_unet_only = true",
        'full_bf16 = true\nmixed_precision = "bf16"',
        'lr_scheduler = "constant_with_warmup"\nlr_warmup_steps = 10',
        "adaptive_noise_scale = 0.01\nnoise_offset = 0.05",
        "color_aug = true",
        "persistent_data_loader_workers = true",
        'min_bucket_reso = 1024\nmax_bucket_reso = 1024\nresolution = "1024"',
    ],
)
def test_the_same_settings_in_working_combinations_pass(text: str) -> None:
    assert build(text + "\n").problems == []


@pytest.mark.parametrize(
    "text",
    [
        "zero_terminal_snr = true",
        "fused_backward_pass = true",
        "no_metadata = true",
        "min_bucket_reso = 300",
        'optimizer_type = "Adafactor"\nlearning_rate = 0.001',
        "max_train_epochs = 5\nmax_train_steps = 1600",
    ],
)
def test_settings_sd_scripts_ignores_or_adjusts_are_warnings(text: str) -> None:
    found = build(text + "\n").problems
    assert [p.code for p in found] == ["CONFIG_NO_EFFECT"], found


def test_fused_backward_pass_is_dropped() -> None:
    assert "fused_backward_pass" not in effective("fused_backward_pass = true\n")


# --- the example configs and the written kohya.toml -------------------------------------------------------------


def test_the_aws_blog_style_config_is_accepted_with_warnings() -> None:
    result = build((EXAMPLES / "aws-blog-style.toml").read_text(), dataset="my-pets", sample_every=1)
    assert [p for p in result.problems if p.severity is Severity.ERROR] == []
    warned = " ".join(p.message for p in result.problems)
    for key in ("model_list", "sdxl", "unit", "train_on_input", "noise_offset_type", "no_token_padding"):
        assert f"`{key} =" in warned
    for key in ("xformers", "vae_batch_size", "conv_dim", "custom_lora_model"):
        assert key in warned
    config = result.effective
    assert config is not None
    assert config["sdpa"] is True and "xformers" not in config and "vae_batch_size" not in config
    assert config["optimizer_type"] == "Adafactor"
    assert config["optimizer_args"] == ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
    assert config["resolution"] == "1024,1024"
    assert config["output_name"] == "my-pets"
    assert "conv_dim=4" in config["network_args"]


def test_the_minimal_example_is_clean() -> None:
    result = build((EXAMPLES / "minimal.toml").read_text())
    assert result.problems == []
    assert result.effective is not None
    assert (result.effective["network_dim"], result.effective["caption_extension"]) == (16, ".txt")


@pytest.mark.parametrize("name", ["aws-blog-style.toml", "minimal.toml"])
def test_sd_scripts_reads_the_written_kohya_toml_back_unchanged(name: str) -> None:
    result = build((EXAMPLES / name).read_text(), sample_every=1)
    written = result.to_toml()
    assert written.startswith("# Effective Kohya config")
    assert toml.loads(written) == result.effective


def test_small_floats_survive_the_round_trip() -> None:
    result = build("learning_rate = 1e-6\nnoise_offset = 0.0357\n")
    assert toml.loads(result.to_toml())["learning_rate"] == 1e-6


def test_every_code_used_is_in_the_catalogue() -> None:
    codes = {code for code in catalogue() if code.startswith("CONFIG_")}
    assert "CONFIG_CONFLICT" in codes and "CONFIG_SECRET" in codes
    assert {p.code for p in build((EXAMPLES / "aws-blog-style.toml").read_text()).problems} <= codes


def test_conv_settings_must_be_numbers() -> None:
    only('conv_dim = "4"\n', "CONFIG_WRONG_TYPE")


def test_an_empty_lr_scheduler_type_means_none() -> None:
    result = build('lr_scheduler_type = ""\n')
    assert result.problems == []
    assert result.effective is not None and "lr_scheduler_type" not in result.effective


def test_an_empty_base_model_from_a_gui_export_is_dropped_quietly() -> None:
    assert only('pretrained_model_name_or_path = ""\n', "CONFIG_EMPTY_KEY_DROPPED").severity is Severity.INFO


def test_prodigy_gets_its_own_learning_rate_default() -> None:
    assert effective('optimizer_type = "prodigy"\n')["learning_rate"] == 1.0
    assert effective('optimizer_type = "Prodigy"\nlearning_rate = 0.5\n')["learning_rate"] == 0.5
    assert effective('optimizer_type = "AdamW"\n')["learning_rate"] == 1e-4


def test_a_thumbnail_path_is_refused_because_sd_scripts_would_embed_that_file() -> None:
    only('metadata_thumbnail = "/proc/self/environ"\n', "CONFIG_UNSUPPORTED")
    assert "metadata_thumbnail" not in effective('metadata_thumbnail = "/etc/passwd"\n')
    data_url = "data:image/png;base64,iVBORw0KGgo="
    assert effective(f'metadata_thumbnail = "{data_url}"\n')["metadata_thumbnail"] == data_url


def test_arrays_of_tables_are_unknown_keys_shown_on_one_line() -> None:
    problem = only("[[extra]]\nname = 1\n", "CONFIG_UNKNOWN_KEY")
    assert "`extra = [{name = 1}]`" in problem.message


def test_an_empty_optimizer_type_means_not_chosen() -> None:
    result = build('optimizer_type = ""\n')
    assert result.problems == []
    assert result.effective is not None and result.effective["optimizer_type"] == "Adafactor"
