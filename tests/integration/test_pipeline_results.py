"""What a successful run publishes, through the real template, state machine and handlers on the embedded AWS:
the per-epoch LoRAs, the samples and the run report next to the LoRA; the trigger words and the report link
in the email; and the CLI's download and report commands."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from embedded_aws.training import (
    ArchiveExecutor,
    TrainingProgress,
    TrainingResult,
    model_artifact_uri,
    split_s3_uri,
)
from lora_pipeline.s3_layout import RunLayout
from lora_pipeline_cli.main import main
from tests.integration.pipeline_support import dataset, emails, pipeline, upload
from tests.lora_files import (
    Member,
    kohya_metadata,
    lora_tensors,
    safetensors_bytes,
    sdxl_lora_bytes,
    tar_bytes,
)
from tests.run_reports import png

pytestmark = pytest.mark.slow

FINAL = safetensors_bytes(
    lora_tensors(4),
    {**kohya_metadata(4), "modelspec.trigger_phrase": "bluebot"},  # type: ignore[arg-type]
)
EPOCH_1 = sdxl_lora_bytes(rank=2)
SAMPLES = {f"bluebot_e{epoch:06d}_00_20261130120000.png": png((0, 200, 0)) for epoch in (1, 2)}
LOSS_LOG = "".join(json.dumps({"step": s, "epoch": 1 + s // 3, "loss": 0.3 / s}) + "\n" for s in range(1, 7))


class _JobWithOutput(ArchiveExecutor):
    """Uploads model.tar.gz and, as SageMaker does for /opt/ml/output/data, output.tar.gz with the loss log."""

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        bucket, key = split_s3_uri(model_artifact_uri(request))
        output = tar_bytes(
            [Member("logs/events.out", b"tensorboard"), Member("training_loss.jsonl", LOSS_LOG.encode())]
        )
        s3_client.put_object(Bucket=bucket, Key=key.replace("model.tar.gz", "output.tar.gz"), Body=output)
        return super().run(request, s3_client, progress)


def _archive() -> bytes:
    return tar_bytes(
        [
            Member("bluebot.safetensors", FINAL),
            Member("epochs/bluebot-000001.safetensors", EPOCH_1),
            *(Member(f"samples/{name}", data) for name, data in SAMPLES.items()),
        ]
    )


def test_a_run_publishes_epochs_samples_and_a_report_and_the_email_names_the_trigger_words(
    tmp_path: Path,
) -> None:
    with pipeline(_JobWithOutput(_archive())) as stack:
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=120)
        (execution,) = stack.executions()
        assert execution.status == "SUCCEEDED"
        layout = RunLayout("bluebot", execution.input["run_id"])
        keys = {
            o["Key"] for o in stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=layout.prefix)["Contents"]
        }
        assert {
            layout.model_key("bluebot"),
            layout.epochs_prefix + "bluebot-000001.safetensors",
            *(layout.samples_prefix + name for name in SAMPLES),
            layout.report_key,
        } <= keys

        report = stack.s3.get_object(Bucket=stack.bucket, Key=layout.report_key)
        assert report["ContentType"].startswith("text/html")
        page = report["Body"].read().decode()
        assert page.count('<img class="sample"') == len(SAMPLES)
        line = re.search(r'<polyline id="loss-line"[^>]* points="([^"]*)"', page)
        assert line is not None and len(line[1].split()) == 6, "every step of the loss log in output.tar.gz"
        assert "bluebot-000001.safetensors" in page

        body = emails(stack)["LoRA ready: bluebot"]
        assert "Trigger words: bluebot" in body
        assert f"/{layout.report_key}?" in body, "a presigned link to the report"
        assert "plus the trigger words: bluebot" in body

        target = tmp_path / "out"
        assert main(["download", "bluebot", "--all", "--stack", stack.stack_name, "-o", str(target)]) == 0
        manifest = json.loads((target / "manifest.json").read_text())
        assert [e["name"] for e in manifest["epochs"]] == ["bluebot-000001.safetensors"]
        assert (target / "epochs/bluebot-000001.safetensors").read_bytes() == EPOCH_1
        assert sorted(p.name for p in (target / "samples").iterdir()) == sorted(SAMPLES)
        assert (target / "report.html").read_text() == page, "the report's epoch links resolve next to it"

        only_report = tmp_path / "report-only"
        assert main(["report", "bluebot", "--stack", stack.stack_name, "-o", str(only_report)]) == 0
        assert sorted(p.name for p in only_report.iterdir()) == ["report.html"]
