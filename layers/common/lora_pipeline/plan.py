"""The plan of a run: steps as sd-scripts counts them, the LoRA's size, and the time and money it will take."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from lora_pipeline.buckets import batches_per_epoch, steps_per_epoch
from lora_pipeline.evaluated_args import network_kwargs
from lora_pipeline.instances import InstanceTable
from lora_pipeline.job_settings import JobSettings
from lora_pipeline.problems import Problem, Severity, define

# sd-scripts v0.10.1 trains this many steps when neither max_train_epochs nor max_train_steps is set.
SD_SCRIPTS_DEFAULT_MAX_STEPS = 1600
# The smoke trainer proves the plumbing, not the model: it always runs this many steps.
SMOKE_TRAINING_STEPS = 10

# LoRA parameters per unit of rank, from SDXL's layer shapes (a module d_in -> d_out adds rank * (d_in + d_out)):
# U-Net, 722 modules: 70 transformer blocks (10 at 640 channels, 60 at 1280) with self-attention (q, k, v, out),
# cross-attention on the 2048-wide text context and the GEGLU feed-forward, plus proj_in/proj_out of its
# 11 attention blocks. Text encoders, 264 modules: q, k, v, out, fc1, fc2 of CLIP-L's 12 layers (768 wide,
# MLP 3072) and OpenCLIP-bigG's 32 layers (1280 wide, MLP 5120).
UNET_LORA_PARAMS_PER_RANK = 2_659_840
TEXT_ENCODER_LORA_PARAMS_PER_RANK = 903_168
# With conv_dim in network_args, networks/lora.py (create_modules) also targets ResnetBlock2D, Downsample2D and
# Upsample2D (library/sdxl_original_unet.py): their 3x3 convolutions at rank conv_dim (lora_down is 3x3,
# in * 9 weights per rank; lora_up 1x1, out), and their time-embedding Linear (1280 -> out) and 1x1
# skip_connection (in != out) at rank network_dim. SDXL's 17 residual blocks (in, out channels), input,
# middle and output blocks in order, and its 2 down- and 2 up-sampling convolutions (channels):
SDXL_RESNET_BLOCKS = (
    *((320, 320), (320, 320), (320, 640), (640, 640), (640, 1280), (1280, 1280)),
    *((1280, 1280), (1280, 1280)),
    *((2560, 1280), (2560, 1280), (1920, 1280), (1920, 640), (1280, 640), (960, 640)),
    *((960, 320), (640, 320), (640, 320)),
)
SDXL_SAMPLER_CONVS = (320, 640, 1280, 640)
SDXL_TIME_EMBED_DIM = 1280
CONV_LORA_PARAMS_PER_CONV_RANK = sum(
    9 * c_in + c_out + 9 * c_out + c_out for c_in, c_out in SDXL_RESNET_BLOCKS
) + sum(9 * c + c for c in SDXL_SAMPLER_CONVS)
CONV_LORA_PARAMS_PER_RANK = sum(
    SDXL_TIME_EMBED_DIM + c_out + (c_in + c_out if c_in != c_out else 0) for c_in, c_out in SDXL_RESNET_BLOCKS
)

PLAN_RUNTIME_TOO_SHORT = define(
    "PLAN_RUNTIME_TOO_SHORT",
    Severity.ERROR,
    "the estimated training time is longer than max_runtime_hours, so the job would be stopped unfinished",
    "Train fewer epochs/steps or fewer repeats, or raise max_runtime_hours in pipeline.toml (up to the stack's MaxRuntimeHours).",
)

PLAN_MANY_STEPS = define(
    "PLAN_MANY_STEPS",
    Severity.WARNING,
    "the run is much longer than SDXL LoRAs usually need, which costs money and tends to overfit",
    "SDXL LoRAs usually converge in 1,500-4,000 steps: lower the folder repeats or max_train_epochs.",
)
# Above this many steps a LoRA of one subject is very likely overtrained (and the bill grows with it).
MANY_STEPS = 6000


@dataclass(frozen=True)
class SubsetCount:
    folder: str
    images: int
    repeats: int


class SubsetPlan(BaseModel):
    folder: str
    images: int
    repeats: int
    samples_per_epoch: int


class Plan(BaseModel):
    trainer: str
    subsets: list[SubsetPlan]
    images: int
    samples_per_epoch: int
    buckets: int
    """Aspect-ratio buckets the samples fall into; sd-scripts never mixes buckets in a batch."""
    batches_per_epoch: int
    batch_size: int
    gradient_accumulation_steps: int
    gpus: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    network_dim: int
    trains_text_encoders: bool
    expected_lora_bytes: int
    instance_type: str
    spot: bool
    seconds_per_step: float | None
    """Estimated seconds of one optimizer step: the instance's seconds per sample times the samples a step
    trains per GPU (batch size, gradient accumulation and the partial batches of each bucket)."""
    estimated_seconds: int | None
    on_demand_usd: float | None
    spot_usd: float | None
    price_source: str
    checkpoint_every_n_steps: int | None = None

    @property
    def estimated_usd(self) -> float | None:
        return self.spot_usd if self.spot else self.on_demand_usd


def _int_setting(config: Mapping[str, Any], key: str, default: int) -> int:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def expected_lora_bytes(
    network_dim: int, trains_text_encoders: bool, save_precision: str | None, conv_dim: int | None = None
) -> int:
    """Bytes of the LoRA's weights: parameters per rank x rank x 2 (4 with save_precision "float")."""
    per_rank = UNET_LORA_PARAMS_PER_RANK + (TEXT_ENCODER_LORA_PARAMS_PER_RANK if trains_text_encoders else 0)
    params = network_dim * per_rank
    if conv_dim:
        params += network_dim * CONV_LORA_PARAMS_PER_RANK + conv_dim * CONV_LORA_PARAMS_PER_CONV_RANK
    bytes_per_param = 4 if save_precision == "float" else 2
    return params * bytes_per_param


def conv_dim_of(config: Mapping[str, Any]) -> int | None:
    """networks/lora.py create_network: int(conv_dim) from network_args, None when absent or unusable."""
    try:
        return int(network_kwargs(config)["conv_dim"])
    except (KeyError, ValueError):
        return None


def make_plan(
    subsets: Sequence[SubsetCount],
    config: Mapping[str, Any],
    job: JobSettings,
    instances: InstanceTable,
    bucket_counts: Sequence[int] | None = None,
    *,
    checkpoint_interval_minutes: float | None = None,
) -> tuple[Plan, list[Problem]]:
    """Steps as sd-scripts counts them: `epochs * ceil(batches / gpus / gradient_accumulation_steps)`, where
    `batches` is `sum over buckets of ceil(samples_in_bucket / train_batch_size)` (`buckets.batches_per_epoch`).

    `bucket_counts` is the samples (images x repeats) in each aspect-ratio bucket, from
    `buckets.assign_buckets` (`DatasetSummary.buckets`); None means one bucket for all samples, right only
    when every image has the same size. `checkpoint_interval_minutes` (the stack's CheckpointIntervalMinutes)
    bounds the GPU time a spot interruption can cost: see `checkpoint_every_n_steps`.
    """
    batch = _int_setting(config, "train_batch_size", 1)
    grad_accum = _int_setting(config, "gradient_accumulation_steps", 1)
    spec = instances.get(job.instance_type)
    gpus = max(1, spec.gpus) if spec else 1
    samples = sum(s.images * s.repeats for s in subsets)
    counts = [count for count in (bucket_counts if bucket_counts is not None else [samples]) if count > 0]
    batches = batches_per_epoch(counts, batch)
    epoch_steps = steps_per_epoch(batches, gpus, grad_accum)

    epochs_setting = config.get("max_train_epochs")
    if job.trainer == "smoke":
        total_steps = SMOKE_TRAINING_STEPS if samples else 0
        epochs = 1 if samples else 0
    elif isinstance(epochs_setting, int) and epochs_setting > 0:
        epochs = epochs_setting
        total_steps = epochs * epoch_steps
    else:
        total_steps = _int_setting(config, "max_train_steps", SD_SCRIPTS_DEFAULT_MAX_STEPS) if samples else 0
        epochs = math.ceil(total_steps / epoch_steps) if epoch_steps else 0

    network_dim = _int_setting(config, "network_dim", 4)
    trains_text_encoders = not config.get("network_train_unet_only", False)
    save_precision = config.get("save_precision")

    seconds = on_demand = spot_cost = None
    step_seconds = None
    if spec is not None and total_steps > 0:  # nothing to train: nothing to estimate
        # The table's seconds_per_step is one 1024 px sample (batch 1); a step costs its samples per GPU,
        # partial batches of the buckets included: samples_per_epoch / gpus / steps_per_epoch on average.
        step_seconds = spec.seconds_per_step * samples / gpus / epoch_steps
        seconds = round(instances.startup_seconds + total_steps * step_seconds)
        on_demand = round(seconds / 3600 * spec.on_demand_usd_per_hour, 2)
        spot_cost = round(on_demand * (1 - instances.spot_discount), 2)

    plan = Plan(
        trainer=job.trainer,
        subsets=[
            SubsetPlan(
                folder=s.folder, images=s.images, repeats=s.repeats, samples_per_epoch=s.images * s.repeats
            )
            for s in subsets
        ],
        images=sum(s.images for s in subsets),
        samples_per_epoch=samples,
        buckets=len(counts),
        batches_per_epoch=batches,
        batch_size=batch,
        gradient_accumulation_steps=grad_accum,
        gpus=gpus,
        steps_per_epoch=epoch_steps,
        epochs=epochs,
        total_steps=total_steps,
        network_dim=network_dim,
        trains_text_encoders=trains_text_encoders,
        expected_lora_bytes=expected_lora_bytes(
            network_dim,
            trains_text_encoders,
            save_precision if isinstance(save_precision, str) else None,
            conv_dim_of(config),
        ),
        instance_type=job.instance_type,
        spot=job.spot,
        seconds_per_step=round(step_seconds, 3) if step_seconds is not None else None,
        estimated_seconds=seconds,
        on_demand_usd=on_demand,
        spot_usd=spot_cost,
        price_source=instances.source,
        checkpoint_every_n_steps=checkpoint_every_n_steps(
            config, job, epoch_steps, step_seconds, checkpoint_interval_minutes
        ),
    )
    return plan, _plan_problems(plan, job)


def checkpoint_every_n_steps(
    config: Mapping[str, Any],
    job: JobSettings,
    steps_per_epoch: int,
    seconds_per_step: float | None,
    interval_minutes: float | None,
) -> int | None:
    """Steps between state saves that keep a spot job within `interval_minutes` of GPU time of its last save,
    or None when the config's own saves (every epoch unless it says otherwise) already are that close.

    sd-scripts saves a state only when `save_every_n_epochs` or `save_every_n_steps` fires (train_network.py).
    """
    if not job.spot or job.trainer == "smoke" or not seconds_per_step or not interval_minutes:
        return None
    limit = max(1, math.floor(interval_minutes * 60 / seconds_per_step))
    every_steps = _int_setting(config, "save_every_n_steps", 0)
    every_epochs = _int_setting(config, "save_every_n_epochs", 0 if every_steps else 1)
    intervals = [n for n in (every_steps, every_epochs * steps_per_epoch) if n > 0]
    return None if intervals and min(intervals) <= limit else limit


def _plan_problems(plan: Plan, job: JobSettings) -> list[Problem]:
    problems = []
    if plan.total_steps > MANY_STEPS:
        problems.append(
            PLAN_MANY_STEPS.at(
                "config.toml",
                f"{plan.total_steps} steps ({plan.samples_per_epoch} images x repeats per epoch, {plan.epochs} epochs) "
                f"is more than {MANY_STEPS}.",
            )
        )
    limit = job.max_runtime_hours * 3600
    if plan.estimated_seconds is not None and plan.estimated_seconds > limit:
        hours = plan.estimated_seconds / 3600
        problems.append(
            PLAN_RUNTIME_TOO_SHORT.at(
                "pipeline.toml",
                f"{plan.total_steps} steps on {plan.instance_type} are estimated at {hours:.1f} h, "
                f"above max_runtime_hours = {job.max_runtime_hours:g}.",
            )
        )
    return problems
