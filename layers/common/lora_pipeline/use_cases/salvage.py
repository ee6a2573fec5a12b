"""salvage: a training job that did not finish -> its newest epoch LoRA under model/, checkpoints kept to resume."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from lora_pipeline.aws.run_objects import checkpoint_names, delete_prefix
from lora_pipeline.s3_layout import RunLayout, s3_uri
from lora_pipeline.salvage import (
    KEPT_FOR_RESUME_TAG,
    SalvagedLora,
    has_complete_state,
    how_it_stopped,
    newest_epoch_lora,
)
from lora_pipeline.use_cases.run_input import SalvageInput

if TYPE_CHECKING:
    from lora_pipeline.aws.s3_model_io import S3ObjectStream


class _HashingReader:
    def __init__(self, stream: S3ObjectStream) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self.stream.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data


def salvage_run(s3: Any, run: SalvageInput) -> SalvagedLora | None:
    """Publish the newest finished epoch's LoRA of a run that did not finish, and keep its checkpoints.

    The LoRA is read whole (sha256) and checked like a final one (`check_lora_stream` for the run's trainer:
    structure, SDXL identity, every tensor's numbers), then copied to
    `model/<name>-<epoch:06d>.safetensors` with a manifest marked `partial`. Checkpoints holding a complete
    state or an epoch LoRA are tagged for the lifecycle rule that expires them (`lora-pipeline resume` uses
    them meanwhile); others are deleted. Returns None when no epoch finished or its LoRA is refused.
    """
    from lora_pipeline.aws.s3_model_io import S3ObjectStream, write_manifest
    from lora_pipeline.manifest import RunFacts, build_manifest
    from lora_pipeline.model_archive import UnpackResult
    from lora_pipeline.safetensors_lora import Architecture, check_lora_stream

    layout = RunLayout(run.dataset, run.run_id)
    names = checkpoint_names(s3, run.bucket, layout.checkpoints_prefix)
    newest = newest_epoch_lora(names, run.output_name)
    resumable = has_complete_state(names)
    if newest is None and not resumable:
        delete_prefix(s3, run.bucket, layout.checkpoints_prefix)
        return None
    for name in names:
        s3.put_object_tagging(
            Bucket=run.bucket,
            Key=layout.checkpoints_prefix + name,
            Tagging={"TagSet": [KEPT_FOR_RESUME_TAG]},
        )
    if newest is None:
        return None
    name, epoch = newest
    source_key = layout.checkpoints_prefix + name
    stream = S3ObjectStream(s3, run.bucket, source_key)
    reader = _HashingReader(stream)
    try:
        check = check_lora_stream(reader, None, Architecture.for_trainer(run.trainer))
        while reader.read(1024 * 1024):
            pass
    finally:
        stream.close()
    if not check.accepted or check.header is None or check.summary is None:
        return None
    header, summary = check.header, check.summary
    model_key = layout.model_prefix + name
    s3.copy_object(Bucket=run.bucket, Key=model_key, CopySource={"Bucket": run.bucket, "Key": source_key})
    epochs = header.metadata.get("ss_num_epochs")
    outcome = SalvagedLora(
        model_uri=s3_uri(run.bucket, model_key),
        manifest_uri=s3_uri(run.bucket, layout.manifest_key),
        sha256=reader.sha256.hexdigest(),
        size_bytes=reader.size,
        epoch=epoch,
        epochs=int(epochs) if epochs and epochs.isdigit() else None,
        stopped=how_it_stopped(run.training_job),
        resumable=resumable,
    )
    job = run.training_job or {}
    result = UnpackResult(
        name=name,
        size=reader.size,
        sha256=outcome.sha256,
        member=name,
        summary=summary,
        metadata=header.metadata,
        alphas=check.alphas,
    )
    manifest = build_manifest(
        result,
        model_uri=outcome.model_uri,
        archive_uri=s3_uri(run.bucket, source_key),
        run=RunFacts(
            dataset=run.dataset,
            run_id=run.run_id,
            training_job_name=job.get("TrainingJobName"),
            billable_seconds=job.get("BillableTimeInSeconds"),
        ),
    ).model_copy(update={"partial": outcome.summary})
    write_manifest(s3, run.bucket, layout.manifest_key, manifest)
    return outcome
