"""SageMaker training jobs on the embedded AWS: a pluggable executor does the work a training instance would.

`CreateTrainingJob` (from Step Functions, the CLI or a test) hands the request to the stack's executor in a
thread; the job reads `InProgress` until `run` returns, then `Completed`, `Failed` or `Stopped` with what the
executor reported. The executor writes `model.tar.gz` under `OutputDataConfig.S3OutputPath/<job>/output/`.
"""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

TrainingStatus = Literal["Completed", "Failed", "Stopped"]

# The executor does a job's work here, no image runs: stacks on the embedded AWS pin this stand-in as their
# TrainingImageUri (no `make image` without CodeBuild and Docker).
STAND_IN_TRAINING_IMAGE = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/embedded-stand-in@sha256:{'0' * 64}"


@dataclass(frozen=True)
class TrainingResult:
    """What a finished job reports; becomes DescribeTrainingJob's fields."""

    status: TrainingStatus
    failure_reason: str | None = None
    billable_seconds: int = 1
    final_metrics: dict[str, float] = field(default_factory=dict)
    secondary_status: str | None = None  # the last SecondaryStatus when not the status (`MaxRuntimeExceeded`)


class TrainingJobRejected(Exception):
    """CreateTrainingJob refused before any job exists (throttling, quota): a SageMaker API error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TrainingProgress(Protocol):
    """Where an executor reports what a SageMaker console would show while a job runs."""

    def secondary_status(self, status: str, message: str) -> None: ...

    def log_line(self, line: str) -> None: ...


class TrainingExecutor(Protocol):
    """Does the work of one SageMaker training job.

    `admit` runs inside CreateTrainingJob and may raise TrainingJobRejected; `run` runs in its own thread and
    returns when the job is over; `stop` is StopTrainingJob (run must then return status "Stopped").
    """

    def admit(self, request: dict[str, Any]) -> None: ...

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult: ...

    def stop(self, job_name: str) -> None: ...


def model_artifact_uri(request: dict[str, Any]) -> str:
    """Where SageMaker puts model.tar.gz for this request."""
    output_path = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return f"{output_path}/{request['TrainingJobName']}/output/model.tar.gz"


def split_s3_uri(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3:// URI: {uri}")
    return parts.netloc, parts.path.lstrip("/")


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A gzip'd tar of in-memory files, as SageMaker writes model.tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _ExecutorBase:
    def admit(self, request: dict[str, Any]) -> None:
        return None

    def stop(self, job_name: str) -> None:
        return None


class NoExecutor(_ExecutorBase):
    """Fails every job, saying that the embedded AWS was started without an executor."""

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        return TrainingResult(
            status="Failed",
            failure_reason="ClientError: the embedded AWS was started without a training executor",
        )


class ArchiveExecutor(_ExecutorBase):
    """Completes every job by uploading a given model.tar.gz (bytes, a file, or made from the request)."""

    def __init__(
        self,
        archive: bytes | Path | Callable[[dict[str, Any]], bytes],
        billable_seconds: int = 42,
    ) -> None:
        self._archive = archive
        self._billable_seconds = billable_seconds

    def _archive_bytes(self, request: dict[str, Any]) -> bytes:
        if isinstance(self._archive, bytes):
            return self._archive
        if isinstance(self._archive, Path):
            return self._archive.read_bytes()
        return self._archive(request)

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        progress.secondary_status("Training", "Training image download completed. Training in progress.")
        bucket, key = split_s3_uri(model_artifact_uri(request))
        progress.secondary_status("Uploading", "Uploading generated training model")
        s3_client.put_object(Bucket=bucket, Key=key, Body=self._archive_bytes(request))
        return TrainingResult(status="Completed", billable_seconds=self._billable_seconds)


class FailingExecutor(_ExecutorBase):
    """Fails every job with the given FailureReason (as a crashed algorithm or a bad image would)."""

    def __init__(self, failure_reason: str, billable_seconds: int = 7) -> None:
        self._failure_reason = failure_reason
        self._billable_seconds = billable_seconds

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        progress.secondary_status("Training", "Training in progress.")
        return TrainingResult(
            status="Failed", failure_reason=self._failure_reason, billable_seconds=self._billable_seconds
        )


CAPACITY_FAILURE_REASON = (
    "CapacityError: Unable to provision requested ML compute capacity. Please retry using a different ML "
    "instance type."
)


class FlakyExecutor(_ExecutorBase):
    """Refuses the first CreateTrainingJob calls (ThrottlingException), fails the first jobs for capacity,
    then behaves like `then`. For Retry tests."""

    def __init__(
        self, then: TrainingExecutor, throttled_creates: int = 1, capacity_failures: int = 0
    ) -> None:
        self._then = then
        self._throttled_creates = throttled_creates
        self._capacity_failures = capacity_failures
        self._lock = threading.Lock()
        self.throttled = 0
        self.capacity_failed = 0

    def admit(self, request: dict[str, Any]) -> None:
        with self._lock:
            if self.throttled < self._throttled_creates:
                self.throttled += 1
                raise TrainingJobRejected("ThrottlingException", "Rate exceeded")
        self._then.admit(request)

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        with self._lock:
            capacity_failure = self.capacity_failed < self._capacity_failures
            if capacity_failure:
                self.capacity_failed += 1
        if capacity_failure:
            return TrainingResult(status="Failed", failure_reason=CAPACITY_FAILURE_REASON, billable_seconds=0)
        return self._then.run(request, s3_client, progress)

    def stop(self, job_name: str) -> None:
        self._then.stop(job_name)


class HeldExecutor(_ExecutorBase):
    """Holds every job InProgress until `release()` (then runs `then`) or StopTrainingJob (then Stopped).

    For cancel and concurrency-cap tests: `running()` names the jobs currently held.
    """

    def __init__(self, then: TrainingExecutor) -> None:
        self._then = then
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._stopped: dict[str, threading.Event] = {}
        self._held: set[str] = set()

    def running(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def release(self) -> None:
        """Let every held job (and every later one) finish through `then`."""
        self._released.set()

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        job_name = request["TrainingJobName"]
        stopped = threading.Event()
        with self._lock:
            self._stopped[job_name] = stopped
            self._held.add(job_name)
        try:
            while not (self._released.wait(0.02) or stopped.is_set()):
                pass
        finally:
            with self._lock:
                self._held.discard(job_name)
        if stopped.is_set():
            return TrainingResult(status="Stopped", billable_seconds=1)
        return self._then.run(request, s3_client, progress)

    def stop(self, job_name: str) -> None:
        with self._lock:
            stopped = self._stopped.get(job_name)
        if stopped is not None:
            stopped.set()
        self._then.stop(job_name)
