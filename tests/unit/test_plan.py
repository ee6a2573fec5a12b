import pytest

from lora_pipeline.instances import load_instance_table
from lora_pipeline.job_settings import JobSettings
from lora_pipeline.plan import (
    SD_SCRIPTS_DEFAULT_MAX_STEPS,
    SMOKE_TRAINING_STEPS,
    SubsetCount,
    expected_lora_bytes,
    make_plan,
)

TABLE = load_instance_table()


def job(**overrides):
    values = dict(
        instance_type="ml.g5.2xlarge",
        volume_size_gb=50,
        max_runtime_hours=12.0,
        spot=True,
        trainer="kohya",
        base_model="stabilityai/stable-diffusion-xl-base-1.0",
    )
    return JobSettings(**(values | overrides))


def test_steps_follow_sd_scripts_formula():
    subsets = [SubsetCount("40_bluebot", 30, 40), SubsetCount("10_robot", 7, 10)]
    config = {"max_train_epochs": 3, "train_batch_size": 4, "gradient_accumulation_steps": 2}
    plan, problems = make_plan(subsets, config, job(), TABLE)
    # samples 30*40 + 7*10 = 1270; ceil(1270/4) = 318 batches; ceil(318/1/2) = 159 steps per epoch
    assert plan.samples_per_epoch == 1270
    assert plan.steps_per_epoch == 159
    assert plan.total_steps == 477
    assert problems == []


def test_multi_gpu_instance_divides_steps_per_process():
    plan, _ = make_plan(
        [SubsetCount("1_x", 100, 1)], {"max_train_epochs": 1}, job(instance_type="ml.g5.12xlarge"), TABLE
    )
    assert plan.gpus == 4
    assert plan.steps_per_epoch == 25


def test_without_epochs_sd_scripts_default_steps_apply():
    plan, _ = make_plan([SubsetCount("10_x", 20, 10)], {}, job(), TABLE)
    assert plan.total_steps == SD_SCRIPTS_DEFAULT_MAX_STEPS
    assert plan.epochs == 8  # 1600 steps / 200 per epoch


def test_max_train_steps_used_when_no_epochs():
    plan, _ = make_plan([SubsetCount("10_x", 20, 10)], {"max_train_steps": 500}, job(), TABLE)
    assert (plan.total_steps, plan.epochs) == (500, 3)


def test_cost_uses_price_table_and_spot_discount():
    plan, _ = make_plan([SubsetCount("10_x", 20, 10)], {"max_train_epochs": 1}, job(), TABLE)
    spec = TABLE.get("ml.g5.2xlarge")
    assert spec is not None
    seconds = TABLE.startup_seconds + 200 * spec.seconds_per_step
    assert plan.estimated_seconds == round(seconds)
    assert plan.on_demand_usd == pytest.approx(seconds / 3600 * spec.on_demand_usd_per_hour, abs=0.01)
    assert plan.spot_usd == pytest.approx(plan.on_demand_usd * (1 - TABLE.spot_discount), abs=0.01)
    assert plan.estimated_usd == plan.spot_usd
    assert (
        make_plan([SubsetCount("10_x", 20, 10)], {"max_train_epochs": 1}, job(spot=False), TABLE)[
            0
        ].estimated_usd
        == plan.on_demand_usd
    )


def test_price_table_can_be_overridden(tmp_path, monkeypatch):
    table = tmp_path / "prices.toml"
    table.write_text(
        "[defaults]\nspot_discount = 0.5\nstartup_seconds = 0\n"
        '[instance."ml.g5.2xlarge"]\ngpus = 1\nvcpus = 8\non_demand_usd_per_hour = 3.6\nseconds_per_step = 1.0\n'
    )
    monkeypatch.setenv("LORA_PIPELINE_PRICES", str(table))
    custom = load_instance_table()
    plan, _ = make_plan([SubsetCount("1_x", 1000, 1)], {"max_train_epochs": 1}, job(), custom)
    assert (plan.on_demand_usd, plan.spot_usd) == (1.0, 0.5)
    assert plan.price_source == str(table)


def test_unknown_instance_has_no_estimate():
    plan, _ = make_plan(
        [SubsetCount("1_x", 10, 1)], {"max_train_epochs": 1}, job(instance_type="ml.g4dn.xlarge"), TABLE
    )
    assert plan.estimated_seconds is None and plan.on_demand_usd is None


def test_runtime_shorter_than_estimate_is_an_error():
    _, problems = make_plan(
        [SubsetCount("10_x", 100, 10)], {"max_train_epochs": 3}, job(max_runtime_hours=1), TABLE
    )
    assert [p.code for p in problems] == ["PLAN_RUNTIME_TOO_SHORT"]
    assert "max_runtime_hours" in problems[0].message


def test_lora_size_matches_sdxl_module_shapes():
    # sd-scripts' SDXL LoRA at dim 32 with both text encoders is about 228 MB in fp16.
    assert expected_lora_bytes(32, True, "fp16") == 32 * 3_563_008 * 2
    assert 220e6 < expected_lora_bytes(32, True, "bf16") < 235e6
    assert expected_lora_bytes(32, False, "fp16") < expected_lora_bytes(32, True, "fp16")
    assert expected_lora_bytes(32, True, "float") == 2 * expected_lora_bytes(32, True, "fp16")


def test_very_long_runs_get_a_warning():
    _, problems = make_plan([SubsetCount("60_dog", 30, 60)], {"max_train_epochs": 10}, job(), TABLE)
    assert [p.code for p in problems] == ["PLAN_MANY_STEPS"]
    assert "18000 steps" in problems[0].message
    _, problems = make_plan([SubsetCount("60_dog", 30, 60)], {"max_train_epochs": 2}, job(), TABLE)
    assert problems == []


def test_smoke_trainer_runs_its_fixed_number_of_steps():
    plan, problems = make_plan(
        [SubsetCount("20_x", 12, 20)],
        {"max_train_epochs": 2},
        job(trainer="smoke", instance_type="ml.m5.xlarge"),
        TABLE,
    )
    assert (plan.total_steps, plan.epochs) == (SMOKE_TRAINING_STEPS, 1)
    assert problems == []


def test_a_dataset_without_images_gets_no_estimate():
    plan, _ = make_plan([SubsetCount("10_x", 0, 10)], {"max_train_epochs": 1}, job(), TABLE)
    assert plan.total_steps == 0
    assert plan.estimated_seconds is None and plan.on_demand_usd is None


def test_long_epochs_on_spot_save_a_state_within_the_checkpoint_interval():
    seconds = TABLE.get("ml.g5.2xlarge").seconds_per_step
    subsets = [SubsetCount("100_x", 30, 100)]  # 3,000 steps per epoch
    plan, _ = make_plan(subsets, {"max_train_epochs": 2}, job(), TABLE, checkpoint_interval_minutes=30)
    assert plan.checkpoint_every_n_steps is not None
    assert plan.checkpoint_every_n_steps * seconds <= 30 * 60 < (plan.checkpoint_every_n_steps + 1) * seconds


@pytest.mark.parametrize(
    ("subsets", "config", "settings"),
    [
        ([SubsetCount("10_x", 20, 10)], {"max_train_epochs": 10}, {}),  # 200 steps per epoch: epoch saves do
        ([SubsetCount("100_x", 30, 100)], {"max_train_epochs": 2}, {"spot": False}),  # on demand: no restart
        ([SubsetCount("100_x", 30, 100)], {"save_every_n_steps": 100}, {}),  # the config's saves are closer
    ],
)
def test_no_extra_saves_where_the_existing_ones_are_close_enough(subsets, config, settings):
    plan, _ = make_plan(subsets, config, job(**settings), TABLE, checkpoint_interval_minutes=30)
    assert plan.checkpoint_every_n_steps is None


def test_rare_epoch_saves_from_the_config_count_as_far_apart():
    plan, _ = make_plan(
        [SubsetCount("10_x", 40, 10)],
        {"max_train_epochs": 10, "save_every_n_epochs": 5},
        job(),
        TABLE,
        checkpoint_interval_minutes=30,
    )
    assert plan.steps_per_epoch * 5 * TABLE.get("ml.g5.2xlarge").seconds_per_step > 30 * 60
    assert plan.checkpoint_every_n_steps is not None


def test_batches_are_counted_per_aspect_bucket():
    # train_util.py BaseDataset.make_buckets: ceil(3/4) + ceil(3/4) + ceil(2/4) = 3 batches, not ceil(8/4) = 2
    plan, _ = make_plan(
        [SubsetCount("1_x", 8, 1)], {"max_train_epochs": 1, "train_batch_size": 4}, job(), TABLE, [3, 3, 2]
    )
    assert (plan.buckets, plan.batches_per_epoch, plan.total_steps) == (3, 3, 3)
    one_bucket, _ = make_plan(
        [SubsetCount("1_x", 8, 1)], {"max_train_epochs": 1, "train_batch_size": 4}, job(), TABLE
    )
    assert one_bucket.total_steps == 2


@pytest.mark.parametrize(
    ("config", "steps"),
    [
        ({"train_batch_size": 1}, 8),
        ({"train_batch_size": 4}, 3),
        ({"train_batch_size": 4, "gradient_accumulation_steps": 2}, 2),
        ({"train_batch_size": 8}, 3),
    ],
)
def test_time_and_cost_follow_the_samples_trained_whatever_the_batch_size(config, steps):
    plan, _ = make_plan([SubsetCount("1_x", 8, 1)], {"max_train_epochs": 2} | config, job(), TABLE, [3, 3, 2])
    spec = TABLE.get("ml.g5.2xlarge")
    assert plan.total_steps == 2 * steps
    # 16 samples (2 epochs of 8) at the table's seconds per 1024 px sample, however they are batched
    assert plan.estimated_seconds == round(TABLE.startup_seconds + 16 * spec.seconds_per_step)
    assert plan.on_demand_usd == round(plan.estimated_seconds / 3600 * spec.on_demand_usd_per_hour, 2)


def test_conv_dim_adds_the_locon_modules_to_the_size() -> None:
    from lora_pipeline.plan import (
        CONV_LORA_PARAMS_PER_CONV_RANK,
        CONV_LORA_PARAMS_PER_RANK,
        SDXL_RESNET_BLOCKS,
        conv_dim_of,
        expected_lora_bytes,
    )

    assert conv_dim_of({"network_args": ["conv_dim=8", "conv_alpha=1"]}) == 8
    assert conv_dim_of({"network_args": ["conv_dim = 8"]}) is None  # the key "conv_dim " is never read
    plain = expected_lora_bytes(16, True, "bf16")
    with_conv = expected_lora_bytes(16, True, "bf16", conv_dim=8)
    assert with_conv - plain == 2 * (16 * CONV_LORA_PARAMS_PER_RANK + 8 * CONV_LORA_PARAMS_PER_CONV_RANK)
    # A 3x3 convolution's lora_down holds in x 9 weights per rank: the first block (320 -> 320) alone adds
    # 2 convolutions x (320 x 9 + 320) per conv rank.
    assert len(SDXL_RESNET_BLOCKS) * 2 * (320 * 9 + 320) < CONV_LORA_PARAMS_PER_CONV_RANK
