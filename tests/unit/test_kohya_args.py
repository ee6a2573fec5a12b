from __future__ import annotations

from importlib import resources

import pytest

from lora_pipeline.kohya_args import ArgKind, argument_specs


def test_every_row_of_the_packaged_table_becomes_a_spec() -> None:
    table = (
        resources.files("lora_pipeline").joinpath("data", "sdxl_train_network_args.tsv").read_text("utf-8")
    )
    rows = [line.split("\t")[0] for line in table.splitlines()[1:] if line]
    assert list(argument_specs()) == rows
    assert len(rows) == 196


@pytest.mark.parametrize(
    ("name", "kind", "default"),
    [
        ("learning_rate", ArgKind.FLOAT, 2e-06),
        ("lr_warmup_steps", ArgKind.INT_OR_FLOAT, 0),
        ("train_batch_size", ArgKind.INT, 1),
        ("shuffle_caption", ArgKind.FLAG, False),
        ("caption_extension", ArgKind.STR, ".caption"),
        ("keep_tokens_separator", ArgKind.STR, ""),
        ("optimizer_type", ArgKind.STR, ""),
        ("network_dim", ArgKind.INT, None),
        ("optimizer_args", ArgKind.STR_LIST, None),
        ("text_encoder_lr", ArgKind.FLOAT_LIST, None),
        ("dataset_config", ArgKind.PATH, None),
        ("network_alpha", ArgKind.FLOAT, 1.0),
    ],
)
def test_kinds_and_defaults_are_typed(name: str, kind: ArgKind, default: object) -> None:
    spec = argument_specs()[name]
    assert spec.kind is kind
    assert spec.default == default
    assert type(spec.default) is type(default)


def test_choices_are_typed_and_leave_out_none() -> None:
    specs = argument_specs()
    assert specs["max_token_length"].choices == (150, 225)
    assert specs["save_precision"].choices == ("float", "fp16", "bf16")
    assert specs["mixed_precision"].choices == ("no", "fp16", "bf16")
    assert specs["learning_rate"].choices == ()


def test_where_each_argument_is_defined_is_kept() -> None:
    assert argument_specs()["cache_text_encoder_outputs"].defined_in == (
        "library/sdxl_train_util.py:add_sdxl_training_arguments"
    )


@pytest.mark.parametrize(
    ("name", "inside", "outside", "words"),
    [
        ("train_batch_size", [1, 64], [0, -1], "at least 1"),
        ("learning_rate", [1e-9, 1.0], [0.0, -1e-4], "greater than 0"),
        ("caption_dropout_rate", [0.0, 1.0], [1.5, -0.1], "between 0 and 1"),
        ("validation_split", [0.0, 0.99], [1.0], "not including"),
        ("unet_lr", [0.0, 1e-4], [-1e-4], "not be negative"),
    ],
)
def test_value_ranges_come_from_the_table(
    name: str, inside: list[float], outside: list[float], words: str
) -> None:
    value_range = argument_specs()[name].range
    assert value_range is not None
    assert all(value in value_range for value in inside)
    assert not any(value in value_range for value in outside)
    assert words in value_range.describe()
