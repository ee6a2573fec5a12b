"""Local files a run works with: the dataset copy, the sample prompts, and the saved states to resume from."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

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
    directory: Path
    epoch: int
    step: int


TRAIN_STATE_FILE = "train_state.json"


def state_dir_name(output_name: str, *, epoch: int | None = None, step: int | None = None) -> str:
    """sd-scripts' names: `<name>-<epoch:06d>-state` for epoch saves, `<name>-step<step:08d>-state` for steps."""
    if step is not None:
        return f"{output_name}-step{step:08d}-state"
    return f"{output_name}-{epoch:06d}-state"


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


def find_resume_state(checkpoints_dir: Path) -> SavedState | None:
    """The furthest complete `*-state` directory in `checkpoints_dir` (by saved step, not by file time:
    a spot restart restores every file from S3 with new times)."""
    if not checkpoints_dir.is_dir():
        return None
    states = [read_saved_state(d) for d in checkpoints_dir.glob("*-state") if d.is_dir()]
    complete = [s for s in states if s is not None]
    return max(complete, key=lambda s: (s.step, s.epoch, s.directory.name), default=None)


def incomplete_states(checkpoints_dir: Path) -> list[Path]:
    if not checkpoints_dir.is_dir():
        return []
    return sorted(d for d in checkpoints_dir.glob("*-state") if d.is_dir() and read_saved_state(d) is None)


def save_in_progress(checkpoints_dir: Path, quiet_seconds: float = 10.0) -> bool:
    """An incomplete state directory written to within `quiet_seconds`: a save that must not be cut off."""
    now = time.time()
    return any(
        now - _last_write(state_dir) < quiet_seconds for state_dir in incomplete_states(checkpoints_dir)
    )


def _last_write(directory: Path) -> float:
    newest = 0.0
    for path in [directory, *directory.rglob("*")]:
        try:
            newest = max(newest, path.stat().st_mtime)
        except FileNotFoundError:  # removed while we looked (sd-scripts prunes old states)
            continue
    return newest
