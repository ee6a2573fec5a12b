"""The smoke trainer: a few real LoRA steps on the dataset, on a tiny random SDXL-shaped model, on CPU.

It takes the same options as sd-scripts for what the entrypoint decides (config file, data, output, resume,
sample prompts) and honours the same contract: the dataset rules of sd-scripts (including "No data found" and
exit 0 when no subset folder is usable), `<output_name>-<NNNNNN>-state` / `<output_name>-step<NNNNNNNN>-state`
directories written by `accelerate` with `train_state.json`, resume with the step count kept, samples in
`<output_dir>/sample/`, and a Kohya-format `<output_name>.safetensors` with sd-scripts' metadata. The result
proves the pipeline, not a style: the base model is random.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from lora_trainer.kohya_command import read_kohya_config

IMAGE_EXTENSIONS = frozenset(
    ext for e in (".png", ".jpg", ".jpeg", ".webp", ".bmp") for ext in (e, e.upper())
)


@dataclass(frozen=True)
class TrainingImage:
    path: Path
    caption: str
    repeats: int
    subset: str


def find_training_images(train_data_dir: Path, caption_extension: str) -> list[TrainingImage]:
    """The images sd-scripts would train on: `<repeats>_<class tokens>/` folders, caption files over tokens."""
    images = []
    for folder in sorted(p for p in train_data_dir.iterdir() if p.is_dir()):
        repeats_text, _, class_tokens = folder.name.partition("_")
        if not repeats_text.isdigit():
            print(
                f"WARNING: skipping folder {folder.name}: the name does not start with <repeats>_", flush=True
            )
            continue
        if int(repeats_text) < 1:
            continue
        for file in sorted(folder.iterdir()):
            if file.suffix not in IMAGE_EXTENSIONS:
                continue
            caption_file = file.with_suffix(caption_extension)
            caption = class_tokens
            if caption_file.is_file():
                lines = caption_file.read_text(encoding="utf-8").splitlines()
                if not lines or not lines[0].strip():
                    raise ValueError(f"caption file {caption_file} is empty")
                caption = lines[0].strip()
            images.append(TrainingImage(file, caption, int(repeats_text), folder.name))
    return images


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", type=Path, required=True)
    parser.add_argument("--train_data_dir", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--output_name", required=True)
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument("--resume", type=Path, default=None)
    parser.add_argument("--initial_step", type=int, default=None)
    parser.add_argument("--skip_until_initial_step", action="store_true")
    parser.add_argument("--sample_prompts", type=Path, default=None)
    return parser.parse_args(argv)


class _StopRequest:
    """SIGTERM ends the run after the current step, so a state being written is finished first."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        print("SIGTERM received: stopping after the current step", flush=True)
        self.requested = True


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    stop = _StopRequest()
    config = read_kohya_config(args.config_file)
    images = find_training_images(args.train_data_dir, str(config.get("caption_extension", ".caption")))
    if not images:
        # sd-scripts' behaviour, kept on purpose: the entrypoint must catch it by the missing output file.
        print(
            "No data found. Please verify arguments (train_data_dir must be the parent of folders with images)"
        )
        return 0
    # Heavy imports after the cheap checks: they take seconds.
    from lora_trainer.smoke_run import SmokeRun

    run = SmokeRun(args, config, images)
    return run.train(stop=lambda: stop.requested)


if __name__ == "__main__":
    sys.exit(main())
