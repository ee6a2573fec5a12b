"""The SageMaker instance table: GPUs, prices and step speed used for right-sizing and cost estimates.

The packaged table is data/instances.toml (its header names the source and date); users override it
with a TOML file of the same shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lora_pipeline.text_formats import loads_toml

PRICES_ENV_VAR = "LORA_PIPELINE_PRICES"


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpus: int
    vcpus: int
    on_demand_usd_per_hour: float
    seconds_per_step: float
    gpu: str | None = None

    @property
    def has_gpu(self) -> bool:
        return self.gpus > 0


@dataclass(frozen=True)
class InstanceTable:
    instances: dict[str, InstanceType]
    spot_discount: float
    startup_seconds: int
    source: str

    def get(self, name: str) -> InstanceType | None:
        return self.instances.get(name)


def _parse(data: dict[str, Any], source: str) -> InstanceTable:
    defaults = data.get("defaults", {})
    instances = {
        name: InstanceType(
            name=name,
            gpus=int(row["gpus"]),
            vcpus=int(row["vcpus"]),
            on_demand_usd_per_hour=float(row["on_demand_usd_per_hour"]),
            seconds_per_step=float(row["seconds_per_step"]),
            gpu=row.get("gpu"),
        )
        for name, row in data.get("instance", {}).items()
    }
    return InstanceTable(
        instances=instances,
        spot_discount=float(defaults.get("spot_discount", 0.65)),
        startup_seconds=int(defaults.get("startup_seconds", 600)),
        source=source,
    )


def load_instance_table(path: Path | str | None = None) -> InstanceTable:
    """The table at `path`, else at $LORA_PIPELINE_PRICES, else the packaged one."""
    chosen = path or os.environ.get(PRICES_ENV_VAR)
    if chosen:
        return _parse(loads_toml(Path(chosen).read_text(encoding="utf-8")), str(chosen))
    packaged = resources.files("lora_pipeline") / "data" / "instances.toml"
    return _parse(loads_toml(packaged.read_text(encoding="utf-8")), "packaged instances.toml")
