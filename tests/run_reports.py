"""A finished run's report inputs, made up but shaped like a real smoke run: epochs, samples, loss, warnings."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from PIL import Image

from lora_pipeline.job_facts import JobFacts
from lora_pipeline.manifest import Manifest, RunFacts
from lora_pipeline.model_archive import EpochLora
from lora_pipeline.plan import Plan, SubsetPlan
from lora_pipeline.problems import Problem, Severity
from lora_pipeline.run_report import RunReportInputs
from lora_pipeline.safetensors_lora import LoraSummary
from lora_pipeline.training_metrics import LossPoint

# One colour per prompt, far from the page's own colours, so a screenshot shows whether each image rendered.
SAMPLE_COLOURS = [(0, 200, 0), (0, 60, 230)]
EPOCHS = 3


def png(colour: tuple[int, int, int], size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def report_inputs(*, epochs: int = EPOCHS, steps: int = 30) -> RunReportInputs:
    samples = {
        f"bluebot_e{epoch:06d}_{index:02d}_20261130120000.png": png(colour)
        for epoch in range(1, epochs + 1)
        for index, colour in enumerate(SAMPLE_COLOURS)
    }
    manifest = Manifest(
        model_uri="s3://bkt/runs/bluebot/r1/model/bluebot.safetensors",
        file_name="bluebot.safetensors",
        size_bytes=29_000_000,
        sha256="ab" * 32,
        archive_uri="s3://bkt/runs/bluebot/r1/output/job/output/model.tar.gz",
        archive_member="bluebot.safetensors",
        lora=LoraSummary(
            unet_modules=722,
            te1_modules=0,
            te2_modules=0,
            module_types={"lora": 722},
            network_dim=32,
            ranks=[32],
            network_alpha=16.0,
            network_module="networks.lora",
            base_model_version="sdxl_base_v1-0",
            architecture="stable-diffusion-xl-v1-base/lora",
            output_name="bluebot",
            dtypes=["BF16"],
            tensor_count=2166,
            warnings=[],
        ),
        metadata={"modelspec.trigger_phrase": "bluebot, <b>night</b>"},
        metadata_omitted=[],
        epochs=[
            EpochLora(name=f"bluebot-{epoch:06d}.safetensors", epoch=epoch, size=29_000_000, sha256="cd" * 32)
            for epoch in range(1, epochs)
        ],
        samples=list(samples),
        run=RunFacts(dataset="bluebot", run_id="r1"),
    )
    plan = Plan(
        trainer="smoke",
        subsets=[SubsetPlan(folder="20_bluebot", images=12, repeats=20, samples_per_epoch=240)],
        images=12,
        samples_per_epoch=240,
        buckets=1,
        batches_per_epoch=240,
        batch_size=1,
        gradient_accumulation_steps=1,
        gpus=0,
        steps_per_epoch=240,
        epochs=epochs,
        total_steps=steps,
        network_dim=32,
        trains_text_encoders=False,
        expected_lora_bytes=29_000_000,
        instance_type="ml.m5.xlarge",
        spot=True,
        seconds_per_step=1.0,
        estimated_seconds=300,
        on_demand_usd=0.02,
        spot_usd=0.01,
        price_source="test",
    )
    return RunReportInputs(
        dataset="bluebot",
        run_id="r1",
        manifest=manifest,
        job=JobFacts("bluebot-r1-1", "ml.m5.xlarge", True, 250, 120, 0.0077),
        plan=plan,
        problems=[
            Problem(
                severity=Severity.WARNING,
                code="IMAGE_UPSCALED",
                file="20_bluebot/a.png",
                message="a.png is 512x512 <small>",
                fix="Use a bigger image.",
            ),
            Problem(severity=Severity.INFO, code="ROOT_FILE_IGNORED", file="notes.txt", message="unused"),
        ],
        loss=[
            LossPoint(step, (step - 1) * epochs // steps + 1, 0.2 / step + 0.05)
            for step in range(1, steps + 1)
        ],
        samples=samples,
        samples_skipped=0,
        created_at=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
    )
