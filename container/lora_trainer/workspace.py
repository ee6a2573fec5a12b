"""Local files a run works with: the dataset copy, the sample prompts, and the saved states to resume from."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lora_pipeline import salvage
from lora_pipeline.safetensors_lora import LoraFormatError, read_safetensors_header
from lora_pipeline.sample_prompts import with_sdxl_size
from lora_pipeline.text_formats import loads_json


def copy_dataset(source: Path, destination: Path) -> int:
    """Copy the dataset's subset folders to local scratch and return how many files were copied.

    Latent caches (`.npz`) are left behind: a stale cache from an earlier run would be trained on instead of
    the images. Files in the dataset root (config.toml, pipeline.toml, _READY) are not training data.
    """
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    copied = 0
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        for file in sorted(folder.rglob("*")):
            if not file.is_file() or file.suffix.lower() == ".npz":
                continue
            target = destination / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
            copied += 1
    return copied


def write_sample_prompts(source: Path, destination: Path) -> Path:
    """Copy the prompt lines, rendering at SDXL's 1024 px unless a line sets its own size, read as sd-scripts
    reads it (`lora_pipeline.sample_prompts`: `--W 832` is a size)."""
    lines = []
    for line in source.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        lines.append(with_sdxl_size(stripped) if stripped and not stripped.startswith("#") else stripped)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return destination


@dataclass(frozen=True)
class SavedState:
    """One complete sd-scripts state folder and its `train_state.json`.

    sd-scripts v0.10.1 (train_network.py, `save_model_hook`) records `current_epoch`, the epoch loop's own
    number and so always absolute (1-based), and `current_step`, its `global_step` at the save. After a resume
    with `--initial_step`, train_network.py restarts `global_step` inside the resumed epoch (the block that
    subtracts one epoch's batches per skipped epoch), so `current_step` then counts from that epoch's start.
    """

    directory: Path
    epoch: int
    step: int


@dataclass(frozen=True)
class TrainingShape:
    """How long sd-scripts' epochs and run are, as it wrote into its own LoRAs' metadata (train_network.py:
    `ss_num_batches_per_epoch` = len(train_dataloader) per process, `ss_gradient_accumulation_steps`,
    `ss_max_train_steps`)."""

    batches_per_epoch: int
    gradient_accumulation_steps: int
    total_steps: int

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: train_network.py `num_update_steps_per_epoch`."""
        return math.ceil(self.batches_per_epoch / self.gradient_accumulation_steps)

    def steps_done(self, state: SavedState) -> int:
        """Optimizer steps the run had made when `state` was saved, counted from the start of the whole run.

        Only `current_epoch` is trusted for whole epochs; `current_step` gives the position inside that epoch,
        which is the same whether it counts from the run's start or from a resumed epoch's start (both are
        whole epochs apart). A step count that is a whole number of epochs means the epoch was finished.
        """
        per_epoch = self.steps_per_epoch
        within_epoch = (state.step - 1) % per_epoch + 1
        return (state.epoch - 1) * per_epoch + within_epoch


@dataclass(frozen=True)
class ResumePoint:
    """Where a restarted job continues: the state to load and the optimizer steps already done.

    `initial_step` is None when the checkpoints hold no LoRA metadata to measure epochs with (`no_metadata`);
    sd-scripts then takes the step from the state itself, which is right unless the state was written after an
    earlier resume. `skip_batches` is True for a state saved inside an epoch: sd-scripts must then skip that
    epoch's first batches (`--skip_until_initial_step`).
    """

    state: SavedState
    initial_step: int | None
    skip_batches: bool
    total_steps: int | None = None

    @property
    def completed_steps(self) -> int:
        return self.initial_step if self.initial_step is not None else self.state.step

    def trainer_arguments(self) -> list[str]:
        """sd-scripts' resume options (train_network.py reads `--initial_step` over the state's own step)."""
        arguments = ["--resume", str(self.state.directory)]
        if self.initial_step is not None:
            arguments += ["--initial_step", str(self.initial_step)]
        if self.skip_batches:
            arguments.append("--skip_until_initial_step")
        return arguments


TRAIN_STATE_FILE = "train_state.json"


def state_dir_name(output_name: str, *, epoch: int | None = None, step: int | None = None) -> str:
    """sd-scripts' names (library/train_util.py EPOCH_STATE_NAME, STEP_STATE_NAME, LAST_STATE_NAME):
    `<name>-<epoch:06d>-state` for epoch saves, `<name>-step<step:08d>-state` for step saves and
    `<name>-state` for the save at the end of training."""
    if step is not None:
        return f"{output_name}-step{step:08d}-state"
    if epoch is not None:
        return f"{output_name}-{epoch:06d}-state"
    return f"{output_name}-state"


def _is_complete(state_dir: Path) -> bool:
    # accelerate writes the random states last, after the hook that writes train_state.json and after the
    # weights and optimiser: a directory without them was cut off mid-save.
    return (state_dir / TRAIN_STATE_FILE).is_file() and any(state_dir.glob("random_states_*.pkl"))


def read_saved_state(state_dir: Path) -> SavedState | None:
    if not _is_complete(state_dir):
        return None
    try:
        data = loads_json((state_dir / TRAIN_STATE_FILE).read_text(encoding="utf-8"))
        return SavedState(state_dir, epoch=int(data["current_epoch"]), step=int(data["current_step"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def saved_states(checkpoints_dir: Path) -> list[SavedState]:
    if not checkpoints_dir.is_dir():
        return []
    states = [read_saved_state(d) for d in sorted(checkpoints_dir.glob("*-state")) if d.is_dir()]
    return [s for s in states if s is not None]


def _metadata_int(metadata: dict[str, str], key: str) -> int | None:
    try:
        value = int(metadata[key])
    except (KeyError, ValueError):
        return None
    return value if value > 0 else None


def read_training_shape(checkpoints_dir: Path) -> TrainingShape | None:
    """The shape recorded in any LoRA sd-scripts wrote into `checkpoints_dir` (all of one run agree)."""
    for lora in sorted(checkpoints_dir.glob("*.safetensors"), reverse=True):
        try:
            with lora.open("rb") as stream:
                metadata = read_safetensors_header(stream).metadata
        except (OSError, LoraFormatError):
            continue
        batches = _metadata_int(metadata, "ss_num_batches_per_epoch")
        accumulation = _metadata_int(metadata, "ss_gradient_accumulation_steps")
        total = _metadata_int(metadata, "ss_max_train_steps")
        if batches and accumulation and total:
            return TrainingShape(batches, accumulation, total)
    return None


def find_resume_state(checkpoints_dir: Path, output_name: str) -> ResumePoint | None:
    """The furthest complete state a restarted job can continue from exactly, or None to start from step 0.

    Positions come from `TrainingShape.steps_done`, never from file times (a spot restart restores every
    file from S3 with new times) nor from `current_step` alone. Left out:
    - states at or past the planned total (the `<name>-state` saved before the final LoRA): sd-scripts
      asserts `max_train_steps > initial_step` (train_network.py); the newest earlier state redoes the end;
    - with gradient accumulation, states saved inside an epoch: train_network.py converts the skipped steps
      to batches before dividing by steps per epoch, so it cannot skip to the middle of an epoch exactly.
    """
    states = saved_states(checkpoints_dir)
    shape = read_training_shape(checkpoints_dir)
    if shape is None:
        final = state_dir_name(output_name)
        furthest = max(
            (s for s in states if s.directory.name != final),
            key=lambda s: (s.epoch, s.step, s.directory.name),
            default=None,
        )
        return ResumePoint(furthest, None, skip_batches=True) if furthest else None
    candidates = []
    for state in states:
        done = shape.steps_done(state)
        mid_epoch = done % shape.steps_per_epoch != 0
        if done >= shape.total_steps or (mid_epoch and shape.gradient_accumulation_steps > 1):
            continue
        candidates.append(ResumePoint(state, done, mid_epoch, shape.total_steps))
    return max(candidates, key=lambda p: (p.initial_step or 0, p.state.directory.name), default=None)


def newest_epoch_lora(checkpoints_dir: Path, output_name: str) -> tuple[Path, int] | None:
    """The LoRA of the newest finished epoch (`<name>-<epoch:06d>.safetensors`) and its epoch number."""
    names = [path.name for path in checkpoints_dir.glob("*.safetensors")]
    found = salvage.newest_epoch_lora(names, output_name)
    return (checkpoints_dir / found[0], found[1]) if found else None


def incomplete_states(checkpoints_dir: Path) -> list[Path]:
    if not checkpoints_dir.is_dir():
        return []
    return sorted(d for d in checkpoints_dir.glob("*-state") if d.is_dir() and read_saved_state(d) is None)


def save_in_progress(
    checkpoints_dir: Path, output_name: str, quiet_seconds: float = 10.0, final_seconds: float = 60.0
) -> bool:
    """A save that must not be cut off: a state directory being written (`_being_written`), or the final
    LoRA about to be written (train_network.py saves `<name>-state` first, then `<name>.safetensors`; a stop
    in between would leave the whole run's training without its LoRA)."""
    now = time.time()
    states = [d for d in checkpoints_dir.glob("*-state") if d.is_dir()] if checkpoints_dir.is_dir() else []
    if any(_being_written(state_dir, now, quiet_seconds) for state_dir in states):
        return True
    final_state = checkpoints_dir / state_dir_name(output_name)
    return (
        read_saved_state(final_state) is not None
        and not (checkpoints_dir / f"{output_name}.safetensors").is_file()
        and now - _last_write(final_state) < final_seconds
    )


def _being_written(state_dir: Path, now: float, quiet_seconds: float) -> bool:
    """Written to within `quiet_seconds` and not finished: incomplete, or a complete-looking folder that a new
    save is overwriting. After a resume sd-scripts names step states by its restarted step count, so it can
    save into an older state's folder; accelerate's save writes train_state.json first (the pre-hook) and the
    random states last, so random states older than train_state.json belong to the earlier save."""
    if now - _last_write(state_dir) >= quiet_seconds:
        return False
    if not _is_complete(state_dir):
        return True
    try:
        written = (state_dir / TRAIN_STATE_FILE).stat().st_mtime
        random_states = max(path.stat().st_mtime for path in state_dir.glob("random_states_*.pkl"))
    except (FileNotFoundError, ValueError):  # removed while we looked (sd-scripts prunes old states)
        return False
    return random_states < written


def _last_write(directory: Path) -> float:
    newest = 0.0
    for path in [directory, *directory.rglob("*")]:
        try:
            newest = max(newest, path.stat().st_mtime)
        except FileNotFoundError:  # removed while we looked (sd-scripts prunes old states)
            continue
    return newest
