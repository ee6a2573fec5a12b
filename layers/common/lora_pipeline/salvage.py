"""What a stopped run leaves behind: the newest finished epoch's LoRA (published as a partial result) and the
states a later run resumes from (`lora-pipeline resume <dataset>`).

sd-scripts v0.10.1 writes, into its output directory (the job's checkpoints folder, synced to
`runs/<dataset>/<run>/checkpoints/`), one LoRA per saved epoch named `<output_name>-<epoch:06d>.safetensors`
(library/train_util.py EPOCH_FILE_NAME) just before that epoch's state folder `<output_name>-<epoch:06d>-state/`,
and, at the end, `<output_name>-state/` then `<output_name>.safetensors`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_EPOCH_LORA = re.compile(r"^(?P<name>[^/]+)-(?P<epoch>\d{6})\.safetensors$")
# accelerate writes the random states last: a state folder with them and train_state.json is complete.
_STATE_FILE = re.compile(r"^(?P<folder>[^/]+-state)/(?P<file>train_state\.json|random_states_\d+\.pkl)$")
# Tag put on a stopped run's checkpoints; the bucket's lifecycle rule expires tagged objects.
KEPT_FOR_RESUME_TAG = {"Key": "lora-pipeline", "Value": "kept-for-resume"}


def newest_epoch_lora(names: Iterable[str], output_name: str | None = None) -> tuple[str, int] | None:
    """The newest `<output_name>-<epoch:06d>.safetensors` among file names relative to the checkpoints
    folder (any output name when None), with its epoch."""
    found = []
    for name in names:
        match = _EPOCH_LORA.match(name)
        if match and (output_name is None or match["name"] == output_name):
            found.append((name, int(match["epoch"])))
    return max(found, key=lambda item: item[1], default=None)


def has_complete_state(names: Iterable[str]) -> bool:
    """A state folder with both train_state.json and accelerate's random states: something to resume from."""
    files: dict[str, set[str]] = {}
    for name in names:
        if match := _STATE_FILE.match(name):
            files.setdefault(match["folder"], set()).add(
                "train_state" if match["file"] == "train_state.json" else "random_states"
            )
    return any(kinds == {"train_state", "random_states"} for kinds in files.values())


def how_it_stopped(description: Mapping[str, Any] | None) -> str:
    """How a training job ended, in words, from its DescribeTrainingJob output (None: the run was cancelled)."""
    if description is None:
        return "cancelled"
    secondary = description.get("SecondaryStatus")
    if secondary == "MaxRuntimeExceeded":
        return "stopped at MaxRuntime"
    if secondary == "MaxWaitTimeExceeded":
        return "stopped at MaxWaitTime (spot capacity)"
    if description.get("TrainingJobStatus") == "Stopped":
        return "stopped"
    return "failed"


class SalvagedLora(BaseModel):
    """The newest finished epoch's LoRA of a run that did not finish, published under model/."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_uri: str = Field(description="s3:// URI of the epoch LoRA under model/.")
    manifest_uri: str
    sha256: str
    size_bytes: int
    epoch: int = Field(description="The epoch the LoRA was saved after (1-based).")
    epochs: int | None = Field(description="Epochs the run planned (sd-scripts' ss_num_epochs), if recorded.")
    stopped: str = Field(description="How the run ended: 'stopped at MaxRuntime', 'cancelled', 'failed', ...")
    resumable: bool = Field(
        description="Its checkpoints hold a state that `lora-pipeline resume` continues from."
    )

    @property
    def summary(self) -> str:
        """`stopped at MaxRuntime after epoch 9 of 10`."""
        of = f" of {self.epochs}" if self.epochs else ""
        return f"{self.stopped} after epoch {self.epoch}{of}"


class ResumeRequest(BaseModel):
    """`runs/<dataset>/resume-request.json` (s3_layout.resume_request_key), written by `lora-pipeline resume`:
    the dataset's next run copies this earlier run's kept checkpoints into its own and resumes from them."""

    run_id: str
