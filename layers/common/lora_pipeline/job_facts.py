"""What a finished SageMaker training job cost and how long it took (from DescribeTrainingJob)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_pipeline.instances import InstanceTable


@dataclass(frozen=True)
class JobFacts:
    """What a finished SageMaker training job cost and how long it took."""

    training_job_name: str
    instance_type: str
    spot: bool
    training_seconds: int
    billable_seconds: int
    estimated_cost_usd: float | None


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def job_facts(description: dict[str, Any], prices: InstanceTable) -> JobFacts:
    """Facts from a DescribeTrainingJob response (the output of `createTrainingJob.sync`).

    Managed spot is billed for `BillableTimeInSeconds` at the on-demand rate, so one formula covers both.
    """
    instance_type = str(description.get("ResourceConfig", {}).get("InstanceType", ""))
    billable = _int(description.get("BillableTimeInSeconds"))
    instance = prices.get(instance_type)
    cost = round(billable * instance.on_demand_usd_per_hour / 3600, 4) if instance else None
    return JobFacts(
        training_job_name=str(description["TrainingJobName"]),
        instance_type=instance_type,
        spot=bool(description.get("EnableManagedSpotTraining", False)),
        training_seconds=_int(description.get("TrainingTimeInSeconds")),
        billable_seconds=billable,
        estimated_cost_usd=cost,
    )
