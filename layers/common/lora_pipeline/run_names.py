"""Names of a run: its id, its Step Functions execution, its SageMaker training jobs and their consoles.

`training_job_name` is what the state machine builds (`States.Format('{}-{}', base, attempt)`).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from lora_pipeline.names import name_slug

TRAINING_JOB_NAME_MAX = 63
# Where SageMaker writes a training job's output: one stream per instance, `<job name>/algo-1-<epoch>`.
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
EXECUTION_NAME_MAX = 80
# The state machine appends "-<attempt>" (one digit: capacity retries are capped below ten).
ATTEMPT_SUFFIX_LEN = 2


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: `20261126-112430-3f9a` (UTC time of the first upload event, 16 random bits)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def execution_name(dataset: str, run_id: str) -> str:
    """Step Functions execution name: the dataset (readable in the console) and the run id (unique)."""
    return f"{name_slug(dataset, EXECUTION_NAME_MAX - len(run_id) - 1)}-{run_id}"


def training_job_base_name(dataset: str, run_id: str) -> str:
    """`<dataset slug>-<run id>`; with the attempt suffix it stays within SageMaker's 63 characters."""
    room = TRAINING_JOB_NAME_MAX - ATTEMPT_SUFFIX_LEN - len(run_id) - 1
    return f"{name_slug(dataset, room)}-{run_id}"


def training_job_name(dataset: str, run_id: str, attempt: int) -> str:
    """What the state machine builds with States.Format('{}-{}', base, attempt)."""
    if not 0 <= attempt <= 9:
        raise ValueError("attempt must be a single digit")
    return f"{training_job_base_name(dataset, run_id)}-{attempt}"


def console_url(region: str, training_job_name: str) -> str:
    """The training job's page in the SageMaker console (what the state machine's LinkTrainingJob builds)."""
    return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/jobs/{training_job_name}"


def execution_console_url(execution_arn: str) -> str:
    """The execution's page in the Step Functions console (what the state machine's Init builds)."""
    region = execution_arn.split(":")[3]
    return (
        f"https://{region}.console.aws.amazon.com/states/home?region={region}"
        f"#/v2/executions/details/{execution_arn}"
    )
