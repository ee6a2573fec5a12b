import pytest

from lora_pipeline.instances import load_instance_table
from lora_pipeline.job_settings import (
    DEFAULT_KEEP_EPOCH_LORAS,
    SDXL_BASE_MODEL,
    SMOKE_INSTANCE_TYPE,
    StackLimits,
    read_job_settings,
)

TABLE = load_instance_table()
LIMITS = StackLimits()


def codes(problems):
    return [p.code for p in problems]


def read(text, limits=LIMITS):
    return read_job_settings(text, limits, TABLE)


def test_absent_file_gives_stack_defaults():
    job, problems = read(None)
    assert problems == []
    assert job.instance_type == LIMITS.default_instance_type
    assert job.volume_size_gb == 50
    assert job.spot is True
    assert job.trainer == "kohya"
    assert job.base_model == SDXL_BASE_MODEL
    assert not job.base_model_from_s3
    assert job.prompts_txt() is None


def test_full_valid_file_is_read():
    job, problems = read(
        'instance_type = "ml.g5.xlarge"\nvolume_size_gb = 80\nmax_runtime_hours = 6\nspot = false\n'
        'base_model = "s3://models/base-models/sdxl/base.safetensors"\noutput_name = "bluebot-v2"\n'
        'sample_prompts = ["a photo of bluebot --d 42"]\nsample_every_n_epochs = 2\n'
    )
    assert problems == []
    assert (job.instance_type, job.volume_size_gb, job.max_runtime_hours, job.spot) == (
        "ml.g5.xlarge",
        80,
        6.0,
        False,
    )
    assert job.base_model_from_s3
    assert job.output_name == "bluebot-v2"
    assert job.sample_every_n_epochs == 2


def test_syntax_error_names_line_and_column():
    _, problems = read('instance_type = "ml.g5.xlarge\n')
    assert codes(problems) == ["JOB_TOML_SYNTAX"]
    assert "line 1" in problems[0].message


def test_unknown_key_suggests_the_right_one():
    _, problems = read('instance = "ml.g5.xlarge"\n')
    assert codes(problems) == ["JOB_UNKNOWN_KEY"]
    assert "instance_type" in problems[0].message


@pytest.mark.parametrize(
    "line",
    [
        "volume_size_gb = 50.5",
        'volume_size_gb = "50"',
        "spot = 1",
        "volume_size_gb = true",
        'trainer = "dreambooth"',
        "max_runtime_hours = 0",
        'sample_prompts = "one prompt"',
        "sample_every_n_epochs = 0",
    ],
)
def test_wrong_types_and_values_are_rejected(line):
    _, problems = read(line + "\n")
    assert "JOB_BAD_VALUE" in codes(problems)
    assert problems[0].file == "pipeline.toml"


def test_instance_not_in_stack_allow_list():
    _, problems = read('instance_type = "ml.p5.48xlarge"\n')
    assert "JOB_INSTANCE_NOT_ALLOWED" in codes(problems)
    assert "ml.g5.2xlarge" in problems[0].message


def test_kohya_on_cpu_instance_is_an_error_and_smoke_on_gpu_a_warning():
    _, problems = read(f'instance_type = "{SMOKE_INSTANCE_TYPE}"\n')
    assert codes(problems) == ["JOB_INSTANCE_NO_GPU"]
    _, problems = read('trainer = "smoke"\ninstance_type = "ml.g5.xlarge"\n')
    assert codes(problems) == ["JOB_SMOKE_ON_GPU"]
    assert problems[0].severity == "warning"


def test_smoke_trainer_defaults_to_a_cpu_instance():
    job, problems = read('trainer = "smoke"\n')
    assert problems == []
    assert job.instance_type == SMOKE_INSTANCE_TYPE


def test_unpriced_instance_is_a_warning():
    limits = StackLimits(allowed_instance_types=("ml.g4dn.xlarge",), default_instance_type="ml.g4dn.xlarge")
    _, problems = read(None, limits)
    assert codes(problems) == ["JOB_INSTANCE_UNPRICED"]


def test_volume_below_minimum():
    _, problems = read("volume_size_gb = 30\n")
    assert codes(problems) == ["JOB_VOLUME_TOO_SMALL"]
    assert "50" in problems[0].message


def test_runtime_above_stack_cap():
    _, problems = read("max_runtime_hours = 48\n", StackLimits(max_runtime_hours=24))
    assert codes(problems) == ["JOB_RUNTIME_ABOVE_CAP"]


@pytest.mark.parametrize(
    "value", ["s3://bucket/model.ckpt", "s3:///x.safetensors", "/home/me/model.safetensors", "sdxl", "a/b/c"]
)
def test_bad_base_models(value):
    job, problems = read(f'base_model = "{value}"\n')
    assert codes(problems) == ["JOB_BAD_BASE_MODEL"]
    assert job.base_model == SDXL_BASE_MODEL


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (
            "s3://stack-bucket/runs/other/20260101T000000Z-ab12/model/lora.safetensors",
            "not under base-models/",
        ),
        ("s3://stack-bucket/datasets/other/model.safetensors", "not under base-models/"),
        ("s3://another-bucket/base-models/sdxl.safetensors", "outside this stack's bucket stack-bucket"),
        ("s3://stack-bucket/base-models/../runs/x/model/a.safetensors", "not one plain object key"),
        ("s3://stack-bucket/base-models//sdxl.safetensors", "not one plain object key"),
        ("s3://stack-bucket/base-models/*.safetensors", "not one plain object key"),
    ],
)
def test_s3_base_model_only_from_the_stack_base_model_or_base_models_prefix(value, why):
    limits = StackLimits(bucket="stack-bucket", base_model_s3_uri="s3://models/sdxl.safetensors")
    job, problems = read(f'base_model = "{value}"\n', limits)
    assert codes(problems) == ["JOB_BASE_MODEL_NOT_ALLOWED"]
    assert why in problems[0].message and problems[0].file == "pipeline.toml"
    assert job.base_model == "s3://models/sdxl.safetensors"


def test_a_refused_s3_base_model_is_never_read():
    class Refusing:
        def read_range(self, uri, start, length):
            raise AssertionError(f"read {uri}")

    limits = StackLimits(bucket="stack-bucket")
    _, problems = read_job_settings(
        'base_model = "s3://stack-bucket/runs/x/model/lora.safetensors"\n', limits, TABLE, models=Refusing()
    )
    assert codes(problems) == ["JOB_BASE_MODEL_NOT_ALLOWED"]


@pytest.mark.parametrize(
    "value", ["s3://models/sdxl.safetensors", "s3://stack-bucket/base-models/team/sdxl-v2.safetensors"]
)
def test_s3_base_model_allowed_places(value):
    limits = StackLimits(bucket="stack-bucket", base_model_s3_uri="s3://models/sdxl.safetensors")
    job, problems = read(f'base_model = "{value}"\n', limits)
    assert problems == []
    assert job.base_model == value and job.base_model_from_s3


def test_stack_base_model_becomes_the_default():
    job, _ = read(None, StackLimits(base_model_s3_uri="s3://b/sdxl.safetensors"))
    assert job.base_model == "s3://b/sdxl.safetensors"
    assert job.base_model_from_s3


@pytest.mark.parametrize("name", ["my lora", "lora.safetensors/x", "../up", ""])
def test_bad_output_names(name):
    _, problems = read(f'output_name = "{name}"\n')
    assert codes(problems) == ["JOB_BAD_OUTPUT_NAME"]


def test_sample_prompts_get_sdxl_size_unless_given():
    job, problems = read('sample_prompts = ["bluebot on a beach --n blurry", "bluebot --w 768 --h 1344"]\n')
    assert problems == []
    assert job.prompts_txt() == "bluebot on a beach --n blurry --w 1024 --h 1024\nbluebot --w 768 --h 1344\n"
    assert job.sample_every_n_epochs == 1


@pytest.mark.parametrize("prompt", ["bluebot --steps 20", "bluebot --w big"])
def test_sample_prompt_options_are_checked(prompt):
    _, problems = read(f'sample_prompts = ["{prompt}"]\n')
    assert codes(problems) == ["JOB_BAD_SAMPLE_PROMPT"]


def test_sample_interval_without_prompts_warns():
    job, problems = read("sample_every_n_epochs = 3\n")
    assert codes(problems) == ["JOB_SAMPLES_WITHOUT_PROMPTS"]
    assert job.sample_every_n_epochs is None


def test_keep_epoch_loras_has_a_small_default_and_must_be_a_count():
    job, problems = read(None)
    assert job.keep_epoch_loras == DEFAULT_KEEP_EPOCH_LORAS and 0 < DEFAULT_KEEP_EPOCH_LORAS <= 5
    job, problems = read("keep_epoch_loras = 0\n")
    assert problems == [] and job.keep_epoch_loras == 0
    for line in ("keep_epoch_loras = -1", 'keep_epoch_loras = "2"', "keep_epoch_loras = true"):
        job, problems = read(line + "\n")
        assert codes(problems) == ["JOB_BAD_VALUE"], line
        assert job.keep_epoch_loras == DEFAULT_KEEP_EPOCH_LORAS
