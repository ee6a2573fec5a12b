"""The smoke trainer's command line: a few real LoRA steps on a tiny random SDXL-shaped model, on CPU.

`python -m lora_trainer.smoke_cli` takes the same options as sd-scripts for what the entrypoint decides (config
file, data, output, resume, sample prompts) and honours the same contract: the dataset rules of sd-scripts
(`kohya_contract`, including "No data found" and exit 0 when no subset folder is usable),
`<output_name>-<NNNNNN>-state` / `<output_name>-step<NNNNNNNN>-state` directories written by `accelerate` with
`train_state.json`, resume with the step count kept, per-epoch LoRAs `<output_name>-<NNNNNN>.safetensors`
(`save_every_n_epochs`) and samples `<output_dir>/sample/<output_name>_e<NNNNNN>_<NN>_<time>.png`
(`sample_every_n_epochs`) at the end of each epoch, and a Kohya-format `<output_name>.safetensors` with
sd-scripts' metadata. The result proves the pipeline, not a style: the base model is random. The training
itself is `smoke_trainer.SmokeTrainer`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from lora_pipeline.kohya_contract import caption_extension
from lora_trainer.kohya_command import read_kohya_config
from lora_trainer.smoke_dataset import find_training_images


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
    parser.add_argument("--metadata_trigger_phrase", default=None)
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
    images = find_training_images(args.train_data_dir, caption_extension(config))
    if not images:
        # sd-scripts' behaviour, kept on purpose: the entrypoint must catch it by the missing output file.
        print(
            "No data found. Please verify arguments (train_data_dir must be the parent of folders with images)"
        )
        return 0
    # Heavy imports after the cheap checks: they take seconds.
    from lora_trainer.smoke_trainer import SmokeTrainer

    trainer = SmokeTrainer(args, config, images)
    return trainer.train(stop=lambda: stop.requested)


if __name__ == "__main__":
    sys.exit(main())
