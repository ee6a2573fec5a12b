"""The images the smoke trainer trains on, found by the dataset rules of sd-scripts (`kohya_contract`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_pipeline.kohya_contract import IMAGE_EXTENSIONS, caption_candidates, parse_subset_folder


@dataclass(frozen=True)
class TrainingImage:
    path: Path
    caption: str
    repeats: int
    subset: str


def find_training_images(train_data_dir: Path, caption_extension: str) -> list[TrainingImage]:
    """The images sd-scripts would train on: every `<repeats>_<class tokens>/` folder that trains
    (`kohya_contract.parse_subset_folder`), its files with an image extension, each captioned by the first
    caption file that exists (`kohya_contract.caption_candidates`), else by the folder's class tokens.

    `caption_extension` is dotted (`kohya_contract.caption_extension`). Raises ValueError for a caption file
    whose first line is blank."""
    images = []
    for folder in sorted(p for p in train_data_dir.iterdir() if p.is_dir()):
        subset = parse_subset_folder(folder.name)
        if subset is None:
            print(
                f"WARNING: skipping folder {folder.name}: the name does not start with <repeats>_", flush=True
            )
            continue
        if not subset.trains:
            continue
        for file in sorted(folder.iterdir()):
            if file.suffix not in IMAGE_EXTENSIONS:
                continue
            caption = subset.class_tokens
            caption_file = next(
                (Path(c) for c in caption_candidates(str(file), caption_extension) if Path(c).is_file()), None
            )
            if caption_file is not None:
                lines = caption_file.read_text(encoding="utf-8").splitlines()
                if not lines or not lines[0].strip():
                    raise ValueError(f"caption file {caption_file} is empty")
                caption = lines[0].strip()
            images.append(TrainingImage(file, caption, subset.repeats, folder.name))
    return images
