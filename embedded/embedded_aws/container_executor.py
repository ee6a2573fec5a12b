"""The local SageMaker: run the training container's real entrypoint (`container/train`) in a subprocess.

Per job, as a training instance would: build an /opt/ml tree from the CreateTrainingJob request (channels
downloaded from the embedded S3, hyperparameters.json, resourceconfig.json, inputdataconfig.json, the
checkpoints restored from CheckpointConfig), run the entrypoint with `OPT_ML` pointing at it, read metric lines
with the request's MetricDefinitions, then upload `model/` as model.tar.gz and `output/data/` as output.tar.gz
and take FailureReason from `output/failure`. StopTrainingJob and MaxRuntimeInSeconds send SIGTERM.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_trainer.sagemaker_env import SINGLE_HOST, OptMl

from .training import TrainingProgress, TrainingResult, model_artifact_uri, split_s3_uri

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_ENTRYPOINT = REPOSITORY / "container" / "train"
FAILURE_REASON_LIMIT = 1024  # SageMaker keeps about 1 KB of output/failure


def _download_prefix(s3: Any, uri: str, destination: Path) -> int:
    """SageMaker's S3Prefix semantics: every key under the prefix, placed relative to the prefix's last '/'."""
    bucket, prefix = split_s3_uri(uri)
    base = prefix[: prefix.rfind("/") + 1]
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            relative = item["Key"][len(base) :]
            if not relative or relative.endswith("/"):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
            count += 1
    return count


def _upload_tree(s3: Any, folder: Path, uri: str) -> None:
    bucket, prefix = split_s3_uri(uri)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, prefix.rstrip("/") + "/" + path.relative_to(folder).as_posix())


def _tar_folder(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))


class _Job:
    """One running container: its process and why it was asked to stop."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.stop_reason: str | None = None


class ContainerExecutor:
    """Runs `container/train` (or `command`) for every job, on this machine's CPU/GPU.

    `trainer` overrides the `trainer` hyperparameter ("smoke" by default, so the embedded default never needs a
    GPU; None keeps the request's). To run real Kohya, pass trainer=None or "kohya" and `environment` with
    SD_SCRIPTS_DIR (an sd-scripts checkout) and a base model channel in the request.
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        trainer: str | None = "smoke",
        environment: Mapping[str, str] | None = None,
        work_root: Path | None = None,
        keep_work_dirs: bool = False,
        stop_grace_seconds: float = 30.0,
    ) -> None:
        self._command = list(command or [sys.executable, str(DEFAULT_ENTRYPOINT)])
        self._trainer = trainer
        self._environment = dict(environment or {})
        self._work_root = work_root
        self._keep_work_dirs = keep_work_dirs
        self._stop_grace_seconds = stop_grace_seconds
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}

    def admit(self, request: dict[str, Any]) -> None:
        return None

    def stop(self, job_name: str) -> None:
        with self._lock:
            job = self._jobs.get(job_name)
        if job is not None:
            self._terminate(job, "StopTrainingJob")

    def _terminate(self, job: _Job, reason: str) -> None:
        if job.stop_reason is not None or job.process.poll() is not None:
            return
        job.stop_reason = reason
        os.killpg(job.process.pid, signal.SIGTERM)

        def kill_after_grace() -> None:
            try:
                job.process.wait(self._stop_grace_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(job.process.pid, signal.SIGKILL)

        threading.Thread(target=kill_after_grace, daemon=True).start()

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        if self._work_root is not None:
            self._work_root.mkdir(parents=True, exist_ok=True)
        opt_ml = Path(tempfile.mkdtemp(prefix=f"opt-ml-{request['TrainingJobName']}-", dir=self._work_root))
        try:
            return self._run(request, s3_client, progress, opt_ml)
        finally:
            if not self._keep_work_dirs:
                shutil.rmtree(opt_ml, ignore_errors=True)

    def _prepare(self, request: dict[str, Any], s3: Any, progress: TrainingProgress, opt_ml: Path) -> None:
        progress.secondary_status("Downloading", "Downloading input data")
        layout = OptMl(opt_ml)
        hyperparameters = {name: str(value) for name, value in request.get("HyperParameters", {}).items()}
        if self._trainer is not None:
            hyperparameters["trainer"] = self._trainer
        channels = request.get("InputDataConfig", [])
        layout.write_job_config(
            hyperparameters,
            [channel["ChannelName"] for channel in channels],
            {
                "current_host": SINGLE_HOST,
                "hosts": [SINGLE_HOST],
                "current_instance_type": request["ResourceConfig"]["InstanceType"],
                "current_group_name": "homogeneousCluster",
                "network_interface_name": "eth0",
            },
        )
        for channel in channels:
            source = channel["DataSource"]["S3DataSource"]
            _download_prefix(s3, source["S3Uri"], layout.channel(channel["ChannelName"]))
        layout.make_output_dirs()
        checkpoint_uri = request.get("CheckpointConfig", {}).get("S3Uri")
        if checkpoint_uri:
            _download_prefix(s3, checkpoint_uri.rstrip("/") + "/", layout.checkpoints_dir)

    def _run(
        self, request: dict[str, Any], s3: Any, progress: TrainingProgress, opt_ml: Path
    ) -> TrainingResult:
        job_name = request["TrainingJobName"]
        self._prepare(request, s3, progress, opt_ml)
        metric_patterns = [
            (definition["Name"], re.compile(definition["Regex"]))
            for definition in request.get("AlgorithmSpecification", {}).get("MetricDefinitions", [])
        ]
        max_runtime = request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
        progress.secondary_status("Training", "Training image download completed. Training in progress.")
        started = time.monotonic()
        process = subprocess.Popen(
            self._command,
            env={**os.environ, **self._environment, "OPT_ML": str(opt_ml)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        job = _Job(process)
        with self._lock:
            self._jobs[job_name] = job
        watchdog = None
        if max_runtime:
            watchdog = threading.Timer(float(max_runtime), self._terminate, (job, "MaxRuntimeExceeded"))
            watchdog.daemon = True
            watchdog.start()
        final_metrics: dict[str, float] = {}
        try:
            assert process.stdout is not None
            for line in process.stdout:
                progress.log_line(line.rstrip("\n"))
                for name, pattern in metric_patterns:
                    match = pattern.search(line)
                    if match:
                        final_metrics[name] = float(match.group(1))
            exit_code = process.wait()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            with self._lock:
                self._jobs.pop(job_name, None)
        billable = max(1, math.ceil(time.monotonic() - started))
        return self._publish(
            request, s3, progress, opt_ml, exit_code, job.stop_reason, billable, final_metrics
        )

    def _publish(
        self,
        request: dict[str, Any],
        s3: Any,
        progress: TrainingProgress,
        opt_ml: Path,
        exit_code: int,
        stop_reason: str | None,
        billable: int,
        final_metrics: dict[str, float],
    ) -> TrainingResult:
        progress.secondary_status("Uploading", "Uploading generated training model")
        layout = OptMl(opt_ml)
        checkpoint_uri = request.get("CheckpointConfig", {}).get("S3Uri")
        if checkpoint_uri and _has_files(layout.checkpoints_dir):
            _upload_tree(s3, layout.checkpoints_dir, checkpoint_uri)
        output_dir = model_artifact_uri(request).rsplit("/", 1)[0]
        if _has_files(layout.output_data_dir):
            archive = opt_ml / "output.tar.gz"
            _tar_folder(layout.output_data_dir, archive)
            s3.upload_file(str(archive), *split_s3_uri(f"{output_dir}/output.tar.gz"))
        if stop_reason is not None:
            if stop_reason == "MaxRuntimeExceeded":
                progress.secondary_status(
                    "MaxRuntimeExceeded", "Job stopped: it exceeded MaxRuntimeInSeconds"
                )
            return TrainingResult(status="Stopped", billable_seconds=billable, final_metrics=final_metrics)
        if exit_code != 0:
            reason = (
                layout.failure_file.read_text(encoding="utf-8", errors="replace")
                if layout.failure_file.is_file()
                else f"AlgorithmError: the training container exited with code {exit_code}"
            )
            return TrainingResult(
                status="Failed",
                failure_reason=reason[:FAILURE_REASON_LIMIT],
                billable_seconds=billable,
                final_metrics=final_metrics,
            )
        archive = opt_ml / "model.tar.gz"
        _tar_folder(layout.model_dir, archive)
        s3.upload_file(str(archive), *split_s3_uri(model_artifact_uri(request)))
        return TrainingResult(status="Completed", billable_seconds=billable, final_metrics=final_metrics)
