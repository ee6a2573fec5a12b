from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from lora_pipeline import dataset_lock, job_facts, run_names, s3_layout, training_job_spec
from lora_pipeline.instances import load_instance_table
from lora_pipeline.job_settings import JobSettings
from lora_pipeline.use_cases import validate as validate_step

IMAGE = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/lora@sha256:{'1' * 64}"
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")


def test_run_ids_sort_by_time_and_are_unique() -> None:
    early = run_names.new_run_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = run_names.new_run_id(datetime(2026, 11, 2, 3, 4, 5, tzinfo=UTC))
    assert early.startswith("20260102-030405-")
    assert early < late
    assert len({run_names.new_run_id() for _ in range(200)}) > 190


@pytest.mark.parametrize(
    "dataset",
    ["bluebot", "my dataset_v2 (final)", "x" * 300, "---", "ünïcødé-名前", "a.b.c"],
)
@pytest.mark.parametrize("attempt", [0, 9])
def test_training_job_names_are_valid_and_derived_from_the_dataset(dataset: str, attempt: int) -> None:
    run_id = run_names.new_run_id()
    name = run_names.training_job_name(dataset, run_id, attempt)
    assert len(name) <= 63
    assert JOB_NAME.match(name), name
    assert name.endswith(f"{run_id}-{attempt}")
    assert name.startswith(run_names.name_slug(dataset, 5))


def test_job_names_of_two_runs_of_one_dataset_differ() -> None:
    assert run_names.training_job_name("d", run_names.new_run_id(), 0) != run_names.training_job_name(
        "d", run_names.new_run_id(), 0
    )


def test_attempt_must_be_one_digit() -> None:
    with pytest.raises(ValueError):
        run_names.training_job_name("d", "r", 10)


def test_execution_name_fits_step_functions() -> None:
    name = run_names.execution_name("y" * 200, "20261126-112430-3f9a")
    assert len(name) <= 80 and name.endswith("-20261126-112430-3f9a")


T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)
MS = timedelta(milliseconds=400)


@pytest.mark.parametrize(
    ("state", "ready", "object_time", "expected"),
    [
        (dataset_lock.DatasetState(None, None), False, T0, dataset_lock.IngestAction.START),
        (dataset_lock.DatasetState(None, T0), False, T0 + SEC, dataset_lock.IngestAction.START),
        (dataset_lock.DatasetState(None, T0), False, T0 - SEC, dataset_lock.IngestAction.STALE),
        # S3 event times are whole seconds: the same second as the run's end may be after it.
        (dataset_lock.DatasetState(None, T0 + MS), False, T0, dataset_lock.IngestAction.START),
        (dataset_lock.DatasetState(None, T0), True, T0 - SEC, dataset_lock.IngestAction.STALE),
        # Other ties: the exact instant, and `_READY` put again in the run's last second (a retrain).
        (dataset_lock.DatasetState(None, T0), False, T0, dataset_lock.IngestAction.START),
        (dataset_lock.DatasetState(None, T0 + MS), True, T0, dataset_lock.IngestAction.START),
        (
            dataset_lock.DatasetState(dataset_lock.ActiveRun("r", False, None, T0), None),
            False,
            T0,
            dataset_lock.IngestAction.CHANGED_DURING_RUN,
        ),
        (
            dataset_lock.DatasetState(dataset_lock.ActiveRun("r", True, None), None),
            False,
            T0,
            dataset_lock.IngestAction.HEARTBEAT,
        ),
        (
            dataset_lock.DatasetState(dataset_lock.ActiveRun("r", True, "tok"), None),
            True,
            T0,
            dataset_lock.IngestAction.READY,
        ),
        (
            dataset_lock.DatasetState(dataset_lock.ActiveRun("r", False, None, T0), None),
            False,
            T0 + SEC,
            dataset_lock.IngestAction.CHANGED_DURING_RUN,
        ),
        (
            dataset_lock.DatasetState(dataset_lock.ActiveRun("r", False, None, T0), None),
            True,
            T0 - SEC,
            dataset_lock.IngestAction.STALE,
        ),
        (
            dataset_lock.DatasetState(dataset_lock.ActiveRun("r", False, None, T0 + MS), None),
            False,
            T0,
            dataset_lock.IngestAction.CHANGED_DURING_RUN,
        ),
        (
            dataset_lock.DatasetState(dataset_lock.ActiveRun("r", False, None, T0 + MS), None),
            True,
            T0 + SEC,
            dataset_lock.IngestAction.STALE,
        ),
    ],
)
def test_ingest_action(
    state: dataset_lock.DatasetState, ready: bool, object_time: datetime, expected: dataset_lock.IngestAction
) -> None:
    assert dataset_lock.ingest_action(state, ready, object_time) is expected


@pytest.mark.parametrize(
    "text",
    ["2026-11-26T12:00:00Z", "2026-11-26T12:00:00.000Z", "2026-11-26T12:00:00+00:00", "2026-11-26T12:00:00"],
)
def test_parse_time_accepts_s3_and_step_functions_formats(text: str) -> None:
    assert dataset_lock.parse_time(text) == T0


def test_job_facts_bill_spot_at_billable_seconds() -> None:
    table = load_instance_table()
    price = table.instances["ml.g5.2xlarge"].on_demand_usd_per_hour
    facts = job_facts.job_facts(
        {
            "TrainingJobName": "j",
            "ResourceConfig": {"InstanceType": "ml.g5.2xlarge"},
            "EnableManagedSpotTraining": True,
            "TrainingTimeInSeconds": 3600,
            "BillableTimeInSeconds": 1200,
        },
        table,
    )
    assert facts.spot and facts.billable_seconds == 1200 and facts.training_seconds == 3600
    assert facts.estimated_cost_usd == pytest.approx(price / 3)


def test_job_facts_of_an_unpriced_instance_have_no_cost() -> None:
    facts = job_facts.job_facts(
        {"TrainingJobName": "j", "ResourceConfig": {"InstanceType": "ml.zz"}}, load_instance_table()
    )
    assert facts.estimated_cost_usd is None and facts.billable_seconds == 0


def test_s3_layout_of_a_run() -> None:
    run = s3_layout.RunLayout("bluebot", "20261126-112430-3f9a")
    assert run.validation_key == "runs/bluebot/20261126-112430-3f9a/validation.json"
    assert run.kohya_toml_key == "runs/bluebot/20261126-112430-3f9a/config/kohya.toml"
    assert (
        run.model_archive_key("job-0") == "runs/bluebot/20261126-112430-3f9a/output/job-0/output/model.tar.gz"
    )
    assert run.model_key("blue") == "runs/bluebot/20261126-112430-3f9a/model/blue.safetensors"
    assert run.manifest_key == "runs/bluebot/20261126-112430-3f9a/model/manifest.json"
    assert all(
        k.startswith(s3_layout.RUNS_PREFIX) for k in (run.prefix, run.checkpoints_prefix, run.output_prefix)
    )


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("datasets/bluebot/10_blue/a.png", ("bluebot", "10_blue/a.png", False)),
        ("datasets/bluebot/_READY", ("bluebot", "_READY", True)),
        ("datasets/bluebot/", ("bluebot", "", False)),
        ("datasets/bluebot", None),
        ("runs/bluebot/x/validation.json", None),
        ("datasets//a.png", None),
    ],
)
def test_parse_dataset_key(key: str, expected: tuple[str, str, bool] | None) -> None:
    parsed = s3_layout.parse_dataset_key(key)
    assert (parsed and (parsed.dataset, parsed.path, parsed.is_ready_marker)) == expected


def test_parse_s3_uri() -> None:
    assert s3_layout.parse_s3_uri("s3://b/k/x.safetensors") == ("b", "k/x.safetensors")
    with pytest.raises(ValueError):
        s3_layout.parse_s3_uri("https://b/k")


def _job(**overrides: object) -> JobSettings:
    fields: dict[str, object] = {
        "instance_type": "ml.g5.2xlarge",
        "volume_size_gb": 50,
        "max_runtime_hours": 2.5,
        "spot": True,
        "trainer": "kohya",
        "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
    }
    fields.update(overrides)
    return JobSettings.model_validate(fields)


def test_training_job_spec_channels_and_spot_stopping_condition() -> None:
    spec = training_job_spec.training_job_spec(
        "bkt", "blue bot", "20261126-112430-3f9a", _job(), "blue", 1.23, training_image=IMAGE
    )
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in spec.input_data_config}
    assert channels == {
        "train": "s3://bkt/datasets/blue bot/",
        "config": "s3://bkt/runs/blue bot/20261126-112430-3f9a/config/",
    }
    assert spec.stopping_condition == {"MaxRuntimeInSeconds": 9000, "MaxWaitTimeInSeconds": 18000}
    assert spec.checkpoint_uri == "s3://bkt/runs/blue bot/20261126-112430-3f9a/checkpoints/"
    assert spec.output_path == "s3://bkt/runs/blue bot/20261126-112430-3f9a/output/"
    assert spec.name == "blue-bot-20261126-112430-3f9a"
    assert spec.hyperparameters == {
        "trainer": "kohya",
        "output_name": "blue",
        "dataset": "blue bot",
        "run_id": "20261126-112430-3f9a",
        "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
    }


def test_an_s3_base_model_is_the_model_channel_and_on_demand_has_no_max_wait() -> None:
    uri = "s3://models/sdxl/base.safetensors"
    spec = training_job_spec.training_job_spec(
        "bkt", "d", "r", _job(base_model=uri, spot=False), "d", None, training_image=IMAGE
    )
    assert spec.input_data_config[-1]["ChannelName"] == "model"
    assert spec.input_data_config[-1]["DataSource"]["S3DataSource"]["S3Uri"] == uri
    assert spec.stopping_condition == {"MaxRuntimeInSeconds": 9000}


def test_validate_step_output_keeps_errors_first_within_the_payload_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lora_pipeline.dataset_source import LocalFolder
    from lora_pipeline.validate import build_validation_report
    from tests.corpus import make_good_dataset

    folder = make_good_dataset(tmp_path / "many", subsets={"5_dog": 80})
    for caption in folder.glob("5_dog/*.caption"):
        caption.unlink()  # 80 CAPTION_MISSING warnings
    (folder / "5_dog" / "broken.png").write_bytes(
        b""
    )  # one IMAGE_EMPTY error, listed after the warnings by file
    report = build_validation_report(LocalFolder(folder), "many")
    outcome = validate_step.validate_step_output(report, "bucket", "run-1", training_image=IMAGE)

    assert len(report.problems) > validate_step.MAX_PROBLEMS_IN_EVENT
    assert len(outcome.problems) == validate_step.MAX_PROBLEMS_IN_EVENT
    assert outcome.problems_omitted == len(report.problems) - validate_step.MAX_PROBLEMS_IN_EVENT
    assert outcome.problems[0]["code"] == "IMAGE_EMPTY"
    assert len(outcome.model_dump_json()) < 64 * 1024


def test_the_job_gets_the_trigger_words_of_the_subsets_that_train_and_the_epochs_to_keep(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lora_pipeline.dataset_source import LocalFolder
    from lora_pipeline.validate import build_validation_report
    from tests.corpus import make_good_dataset

    # sd-scripts' folder rules (dataset.parse_subset_folder): repeats < 1 and empty folders train nothing.
    folder = make_good_dataset(
        tmp_path / "pets", subsets={"10_sks dog": 2, "5_sks dog": 1, "3_ohwx cat": 1, "0_skipped": 1}
    )
    (folder / "2_empty").mkdir()
    (folder / "pipeline.toml").write_text("keep_epoch_loras = 1\n")
    report = build_validation_report(LocalFolder(folder), "pets")
    # Folder order (10_sks dog, 3_ohwx cat, 5_sks dog), each once.
    assert report.summary.trigger_words() == ["sks dog", "ohwx cat"]

    hyperparameters = validate_step.validate_step_output(
        report, "bucket", "run-1", training_image=IMAGE
    ).job.hyperparameters
    assert hyperparameters["trigger_phrase"] == "sks dog, ohwx cat"
    assert hyperparameters["keep_epoch_loras"] == "1"
