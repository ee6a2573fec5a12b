"""Dataset layout rules: what sd-scripts v0.10.1 does with a DreamBooth-style folder, said out loud.

sd-scripts (`library/config_util.py`, `library/train_util.py`) reads `train_data_dir` like this, and these
rules follow it exactly, turning each silent skip into a problem:
- every direct sub-folder is a subset named `<repeats>_<class tokens>`: `int(name.split("_")[0])` repeats,
  the rest joined by `_` is the class tokens; a folder whose prefix `int()` rejects is skipped with a log
  line, one with repeats < 1 silently; files in the root are ignored;
- a subset's images are `glob("*" + ext)` for `kohya_contract.IMAGE_EXTENSIONS`, so hidden files and
  sub-folders are never seen, and `.Jpg` (mixed case) is not an image;
- an image's caption is `<image path without extension><caption_extension>`; for names with 5 or more
  `_`-separated parts (face-crop naming) also the name without its last four parts. An empty caption file
  stops training; otherwise only its first line is used (all lines with `enable_wildcard`); an image
  without caption trains with the folder's class tokens;
- images are opened with Pillow and `convert("RGB")`: EXIF orientation is not applied, alpha is dropped,
  CMYK is converted without its colour profile.

Findings are one problem per file, so the JSON report is complete (the CLI shortens long runs of one code).
Each image is read once: its header pass (`images`) names the common faults precisely, then Pillow decodes
every pixel (`images.decode_problem`), as sd-scripts will when it caches latents. A thread pool overlaps
the reads and the decodes (Pillow releases the GIL); `_Decoding` keeps the decodes to one per CPU and
their pixel buffers, and the files read ahead of them, to memory budgets, so a folder of large PNGs cannot
exhaust a Lambda.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from lora_pipeline.buckets import BucketChoice, BucketSettings, ImageSize, assign_buckets, batches_per_epoch
from lora_pipeline.dataset_source import DatasetSource, FileEntry
from lora_pipeline.images import (
    MAX_IMAGE_PIXELS,
    ORIENTATION_MEANING,
    TAIL_BYTES,
    TRAINABLE_FORMATS,
    BlockReader,
    ImageFormat,
    ImageFormatError,
    ImageHeader,
    bytes_reader,
    decode_problem,
    identify,
    read_header,
    truncation,
)
from lora_pipeline.kohya_contract import (
    DEFAULT_CAPTION_EXTENSION,
    IMAGE_EXTENSIONS,
    caption_candidates,
    caption_extension,
    parse_resolution,
    parse_subset_folder,
)
from lora_pipeline.problems import Problem, Severity, define
from lora_pipeline.s3_layout import unsafe_key_reason

_EXTENSION_FORMAT = {
    ".png": ImageFormat.PNG,
    ".jpg": ImageFormat.JPEG,
    ".jpeg": ImageFormat.JPEG,
    ".webp": ImageFormat.WEBP,
    ".bmp": ImageFormat.BMP,
}
UNSUPPORTED_IMAGE_EXTENSIONS = {
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".gif": "GIF",
    ".avif": "AVIF",
    ".jxl": "JPEG XL",
    ".jfif": "JPEG",  # what browsers on Windows often save JPEGs as
    ".jpe": "JPEG",
}
# Files in the dataset root that other modules read: not part of the image layout.
SETTINGS_FILES = frozenset({"config.toml", "pipeline.toml", "_READY"})
# Caption extensions people commonly use; any of them other than the configured one is never read.
COMMON_CAPTION_EXTENSIONS = (".caption", ".txt")
# Decoded pixels the validator holds at once: 512 MiB leaves the validate Lambda (2 GB) room for the files in flight.
DECODE_MEMORY_BYTES = 512 * 1024 * 1024
# Whole image files read and not yet decoded: the S3 source reads with 64 threads (one per pooled
# connection), and 64 large PNGs waiting for a decode slot must not add a gigabyte.
FILE_MEMORY_BYTES = 256 * 1024 * 1024
# Bucket upscaling below this factor is invisible; from here on an image is reported as too small.
UPSCALE_WARNING_FACTOR = 1.1
# sd-scripts keeps at most 225 tokens of a caption (train_util.py, `--max_token_length` choices); 64 KiB
# is far beyond any caption, and bounds the memory a hostile "caption" can take.
MAX_CAPTION_BYTES = 64 * 1024

_CONVERT_FIX = "Convert it to PNG or JPEG (e.g. `magick <file> out.png`) or remove it."

DATASET_NO_SUBSETS = define(
    "DATASET_NO_SUBSETS",
    Severity.ERROR,
    "No usable subset folder: sd-scripts logs 'No data found' and exits without training.",
    "Put the images in a folder named <repeats>_<class tokens> in the dataset root, e.g. 10_bluebot/.",
)
DATASET_NO_IMAGES = define(
    "DATASET_NO_IMAGES",
    Severity.ERROR,
    "The subset folders hold no image sd-scripts reads: it logs 'No data found' and exits without training.",
    "Add .png, .jpg, .jpeg, .webp or .bmp images to the subset folders.",
)
SUBSET_NO_REPEATS = define(
    "SUBSET_NO_REPEATS",
    Severity.WARNING,
    "A folder name does not start with an integer repeat count: sd-scripts skips the folder.",
    "Rename the folder to <repeats>_<class tokens>, e.g. 10_bluebot, or remove it.",
)
SUBSET_ZERO_REPEATS = define(
    "SUBSET_ZERO_REPEATS",
    Severity.WARNING,
    "A folder's repeat count is below 1: sd-scripts skips it without a word.",
    "Use a repeat count of 1 or more in the folder name, e.g. 1_bluebot.",
)
SUBSET_NO_IMAGES = define(
    "SUBSET_NO_IMAGES",
    Severity.WARNING,
    "A subset folder holds no image sd-scripts reads.",
    "Add images to the folder or remove it.",
)
SUBSET_NESTED_FOLDER = define(
    "SUBSET_NESTED_FOLDER",
    Severity.WARNING,
    "A subset folder has a sub-folder: sd-scripts does not look inside it.",
    "Move the images up into the subset folder, or make the sub-folder a subset of its own in the dataset root.",
)
FILE_PATH_UNSAFE = define(
    "FILE_PATH_UNSAFE",
    Severity.ERROR,
    "A file's S3 key is not a plain relative path ('..' or '.' segment, '//', backslash, NUL or another "
    "control character): the training container cannot copy it safely.",
    "Delete the object (`aws s3 rm` with its exact key) and upload it again under a plain name.",
)
ROOT_IMAGE = define(
    "ROOT_IMAGE",
    Severity.WARNING,
    "An image lies in the dataset root: sd-scripts only reads images inside subset folders.",
    "Move it into a subset folder such as 10_bluebot/.",
)
ROOT_FILE_IGNORED = define(
    "ROOT_FILE_IGNORED",
    Severity.INFO,
    "A file in the dataset root that nothing reads.",
    "Remove it, or rename it if it was meant to be config.toml or pipeline.toml.",
)
FILE_IGNORED = define(
    "FILE_IGNORED",
    Severity.INFO,
    "A file in a subset folder that is neither an image nor a caption sd-scripts reads.",
    "Remove it if it is not needed.",
)
IMAGE_EXTENSION_CASE = define(
    "IMAGE_EXTENSION_CASE",
    Severity.ERROR,
    "A mixed-case image extension (.Jpg): sd-scripts matches lower- or upper-case extensions only and skips it.",
    "Rename the file with a lower-case extension.",
)
IMAGE_UNSUPPORTED_FORMAT = define(
    "IMAGE_UNSUPPORTED_FORMAT",
    Severity.ERROR,
    "An image format sd-scripts does not read (HEIC, TIFF, GIF, AVIF, JPEG XL): it skips the file.",
    _CONVERT_FIX,
)
IMAGE_CONTENT_MISMATCH = define(
    "IMAGE_CONTENT_MISMATCH",
    Severity.ERROR,
    "The file has an image extension sd-scripts reads, but its content is a format it cannot train on.",
    _CONVERT_FIX,
)
IMAGE_EXTENSION_MISMATCH = define(
    "IMAGE_EXTENSION_MISMATCH",
    Severity.WARNING,
    "The file's content is another trainable format than its extension says (Pillow reads it by content).",
    "Rename the file to the extension of its real format.",
)
IMAGE_EMPTY = define(
    "IMAGE_EMPTY",
    Severity.ERROR,
    "The image file is empty (0 bytes): training stops when it reaches it.",
    "Upload the image again, or remove it.",
)
IMAGE_UNREADABLE = define(
    "IMAGE_UNREADABLE",
    Severity.ERROR,
    "The image cannot be read or its header is corrupt: training stops when it reaches it.",
    "Re-export the image from the original, or remove it.",
)
IMAGE_TRUNCATED = define(
    "IMAGE_TRUNCATED",
    Severity.ERROR,
    "The image is cut off (no end marker, or shorter than its header says): Pillow fails to decode it.",
    "Upload the image again (an interrupted copy is the usual cause), or re-export it from the original.",
)
IMAGE_UNDECODABLE = define(
    "IMAGE_UNDECODABLE",
    Severity.ERROR,
    "The image's header is valid but its pixel data cannot be decoded: sd-scripts crashes when it caches "
    "latents, after the GPU job has started.",
    "Re-export the image from the original (open it and save it again), or remove it.",
)
IMAGE_TOO_MANY_PIXELS = define(
    "IMAGE_TOO_MANY_PIXELS",
    Severity.ERROR,
    f"The image has more than {MAX_IMAGE_PIXELS:,} pixels (Pillow's decompression-bomb limit).",
    "Downscale it, e.g. to 2048 px on the long side (`magick <file> -resize 2048x2048 <file>`).",
)
IMAGE_EXIF_ROTATED = define(
    "IMAGE_EXIF_ROTATED",
    Severity.WARNING,
    "The image has an EXIF orientation: viewers turn it, sd-scripts does not, so the LoRA learns it turned.",
    "Apply the rotation to the pixels: `magick mogrify -auto-orient <file>`, or Pillow `ImageOps.exif_transpose`.",
)
IMAGE_16BIT_GREYSCALE = define(
    "IMAGE_16BIT_GREYSCALE",
    Severity.ERROR,
    "A 16-bit greyscale PNG: Pillow's convert('RGB') clips every value above 255, so it trains almost white.",
    "Convert it to 8 bits: `magick <file> -depth 8 <file>`.",
)
IMAGE_CMYK = define(
    "IMAGE_CMYK",
    Severity.WARNING,
    "A CMYK image: sd-scripts converts it to RGB without its colour profile, so colours shift.",
    "Convert it to sRGB: `magick <file> -colorspace sRGB <file>`.",
)
IMAGE_ALPHA = define(
    "IMAGE_ALPHA",
    Severity.WARNING,
    "The image has transparency: sd-scripts drops it, transparent areas train as the colour stored under them.",
    "Flatten it onto a background (`magick <file> -background white -flatten <file>`), "
    "or set alpha_mask = true in config.toml to use the transparency as a loss mask.",
)
IMAGE_TOO_SMALL = define(
    "IMAGE_TOO_SMALL",
    Severity.WARNING,
    "The image is smaller than the training resolution: sd-scripts upscales it (blur) or trains it smaller.",
    "Use a larger original, or accept the blur for this image.",
)
IMAGE_SAME_NAME = define(
    "IMAGE_SAME_NAME",
    Severity.WARNING,
    "Two images share a name with different extensions: both train, with the same caption file.",
    "Remove the duplicate, or rename one of them (and give it its own caption).",
)
CAPTION_WRONG_EXTENSION = define(
    "CAPTION_WRONG_EXTENSION",
    Severity.ERROR,
    "The image's caption has another extension than caption_extension: sd-scripts never reads it.",
    "Set caption_extension in config.toml to the extension your captions use, or rename the caption files.",
)
CAPTION_EMPTY = define(
    "CAPTION_EMPTY",
    Severity.ERROR,
    "The caption file is empty or its first line is blank.",
    "Write the caption on the first line, or delete the file to train the image with the folder's class tokens.",
)
CAPTION_NOT_UTF8 = define(
    "CAPTION_NOT_UTF8",
    Severity.ERROR,
    "The caption file is not UTF-8: sd-scripts stops with a UnicodeDecodeError.",
    "Save the caption as UTF-8 (e.g. `iconv -f WINDOWS-1252 -t UTF-8`).",
)
CAPTION_TOO_LARGE = define(
    "CAPTION_TOO_LARGE",
    Severity.ERROR,
    f"The caption file is larger than {MAX_CAPTION_BYTES // 1024} KiB: not a caption.",
    "Replace <file> with the caption text, or move the file out of the subset folder.",
)
CAPTION_BYTE_ORDER_MARK = define(
    "CAPTION_BYTE_ORDER_MARK",
    Severity.WARNING,
    "The caption starts with a UTF-8 byte-order mark, which sd-scripts keeps as part of the first word.",
    "Save the caption as UTF-8 without BOM.",
)
CAPTION_MULTILINE = define(
    "CAPTION_MULTILINE",
    Severity.WARNING,
    "The caption has several lines: sd-scripts uses only the first one.",
    "Put the whole caption on one line (or set enable_wildcard = true to pick a random line each step).",
)
CAPTION_NO_TRIGGER = define(
    "CAPTION_NO_TRIGGER",
    Severity.WARNING,
    "The caption does not contain the subset's class tokens: sd-scripts does not add them.",
    "Add the trigger word to the caption, e.g. at its start.",
)
CAPTION_MISSING = define(
    "CAPTION_MISSING",
    Severity.WARNING,
    "The image has no caption: sd-scripts trains it with the folder's class tokens as its whole caption.",
    "Add a caption file next to the image, or ignore this if class-token-only training is what you want.",
)
CAPTION_ORPHAN = define(
    "CAPTION_ORPHAN",
    Severity.INFO,
    "A caption file without an image: nothing uses it.",
    "Remove it, or add the image it belongs to.",
)


@dataclass(frozen=True)
class DatasetRules:
    """The sd-scripts settings that decide how a dataset is read. Defaults are sd-scripts' own, except
    `resolution`, which sd-scripts leaves unset and SDXL trains at 1024x1024."""

    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    resolution: tuple[int, int] = (1024, 1024)
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    alpha_mask: bool = False
    enable_wildcard: bool = False
    max_pixels: int = MAX_IMAGE_PIXELS

    @classmethod
    def from_kohya_config(cls, cfg: Mapping[str, Any]) -> DatasetRules:
        """Rules from a flat, effective Kohya config. Raises ValueError on a value sd-scripts cannot use."""
        defaults = cls()
        return cls(
            caption_extension=caption_extension(cfg),
            resolution=parse_resolution(cfg["resolution"]) if "resolution" in cfg else defaults.resolution,
            enable_bucket=bool(cfg.get("enable_bucket", defaults.enable_bucket)),
            min_bucket_reso=int(cfg.get("min_bucket_reso", defaults.min_bucket_reso)),
            max_bucket_reso=int(cfg.get("max_bucket_reso", defaults.max_bucket_reso)),
            bucket_reso_steps=int(cfg.get("bucket_reso_steps", defaults.bucket_reso_steps)),
            bucket_no_upscale=bool(cfg.get("bucket_no_upscale", defaults.bucket_no_upscale)),
            alpha_mask=bool(cfg.get("alpha_mask", defaults.alpha_mask)),
            enable_wildcard=bool(cfg.get("enable_wildcard", defaults.enable_wildcard)),
        )

    @property
    def buckets(self) -> BucketSettings:
        return BucketSettings(
            resolution=self.resolution,
            enable_bucket=self.enable_bucket,
            min_bucket_reso=self.min_bucket_reso,
            max_bucket_reso=self.max_bucket_reso,
            bucket_reso_steps=self.bucket_reso_steps,
            bucket_no_upscale=self.bucket_no_upscale,
        )


class TrainingImage(BaseModel):
    file: str
    """Path relative to the dataset root."""
    caption: str | None
    """The caption sd-scripts trains the image with (`DreamBoothDataset`'s `read_caption`): the caption file's
    first line, stripped (with `enable_wildcard`, its non-blank lines joined by newlines), or the folder's class
    tokens when the image has no caption file. None when sd-scripts stops on the caption file (an error says why)."""


class SubsetSummary(BaseModel):
    folder: str
    repeats: int
    class_tokens: str
    image_count: int
    """Files sd-scripts takes as images (accepted extensions), readable or not."""
    captioned_image_count: int
    image_bytes: int
    images: list[TrainingImage]
    """Every image of the subset, sorted by path, as sd-scripts lists it."""


class BucketCount(BaseModel):
    width: int
    height: int
    image_count: int
    """Images in this bucket, each counted once per repeat of its subset."""


class DatasetSummary(BaseModel):
    location: str
    caption_extension: str
    subsets: list[SubsetSummary]
    skipped_folders: list[str]
    total_images: int
    total_repeated_images: int
    """Sum of images x repeats: the images one epoch goes through."""
    image_bytes: int
    total_bytes: int
    """Every file listed under the dataset root."""
    buckets: list[BucketCount]
    """sd-scripts' bucket assignment for the images whose size could be read."""

    def trigger_words(self) -> list[str]:
        """The class tokens of the subsets that train (at least one repeat and one image), each once, in folder
        order: what a prompt uses to call up what the LoRA learned."""
        words: list[str] = []
        for subset in self.subsets:
            tokens = subset.class_tokens.strip()
            if subset.repeats >= 1 and subset.image_count and tokens and tokens not in words:
                words.append(tokens)
        return words

    def batches_per_epoch(self, batch_size: int) -> int:
        """sd-scripts fills each batch from one bucket, so an epoch has a partial batch per bucket."""
        if self.buckets:
            return batches_per_epoch([b.image_count for b in self.buckets], batch_size)
        return batches_per_epoch([self.total_repeated_images], batch_size)


def check_dataset(
    source: DatasetSource,
    rules: DatasetRules,
    files: list[FileEntry] | None = None,
    max_workers: int | None = None,
    *,
    decode: bool = True,
    decode_memory_bytes: int = DECODE_MEMORY_BYTES,
    file_memory_bytes: int = FILE_MEMORY_BYTES,
) -> tuple[DatasetSummary, list[Problem]]:
    """Every layout, image and caption rule over the dataset; `files` saves a second listing.

    `max_workers` threads read images (default: as many as the source serves at once, `parallel_reads`);
    `decode = False` checks headers and tails only (ranged reads, a few KiB per image) and cannot see corrupt
    pixel data. `decode_memory_bytes` bounds the decoded pixels held at once, `file_memory_bytes` the whole
    image files read and waiting for their decode (one image larger than either still runs, alone)."""
    listing = source.list_files() if files is None else files
    problems: list[Problem] = []
    usable = []
    for entry in listing:
        reason = unsafe_key_reason(entry.path)
        if reason is None:
            usable.append(entry)
        else:
            shown = ascii(entry.path)  # control characters escaped, so a message cannot carry them
            problems.append(FILE_PATH_UNSAFE.at(shown, f"{shown} {reason}; it was not read."))
    layout = _Layout.of(usable)
    subsets, skipped = _parse_subsets(layout)
    problems += _skipped_folder_problems(layout, skipped)
    problems += _nested_folder_problems(layout, subsets)

    images: list[_ImageEntry] = []
    used_captions: set[str] = set()
    for subset in subsets:
        folder_images, folder_problems = _folder_images(layout, subset, rules, used_captions)
        images += folder_images
        problems += folder_problems
    problems += _root_problems(layout, used_captions)

    workers = max(1, max_workers or source.parallel_reads)
    decoding = (
        _Decoding(_Slots(os.cpu_count() or 1, decode_memory_bytes), _Slots(workers, file_memory_bytes))
        if decode
        else None
    )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = list(pool.map(lambda image: _check_image(source, rules, image, decoding), images))
    sized = [(result, result.header) for result in checked if result.header is not None]
    assignment = assign_buckets(
        [ImageSize(header.width, header.height, result.image.subset.repeats) for result, header in sized],
        rules.buckets,
    )
    for result in checked:
        problems += result.problems
    for (result, header), choice in zip(sized, assignment.choices, strict=True):
        problems += _size_problems(rules, result.image.entry.path, header, choice)

    summaries = _subset_summaries(subsets, checked)
    problems += _dataset_problems(layout, subsets, skipped, summaries)
    summary = DatasetSummary(
        location=source.location,
        caption_extension=rules.caption_extension,
        subsets=summaries,
        skipped_folders=[f"{folder}/" for folder in skipped],
        total_images=sum(s.image_count for s in summaries),
        total_repeated_images=sum(s.image_count * s.repeats for s in summaries),
        image_bytes=sum(s.image_bytes for s in summaries),
        total_bytes=sum(entry.size for entry in listing),
        buckets=[BucketCount(width=w, height=h, image_count=n) for (w, h), n in assignment.counts.items()],
    )
    return summary, sorted(problems, key=_problem_order)


# --- layout ----------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    root_files: list[FileEntry] = field(default_factory=list)
    folder_files: dict[str, list[FileEntry]] = field(default_factory=lambda: defaultdict(list))
    """Files directly inside each top-level folder."""
    nested_files: dict[str, list[FileEntry]] = field(default_factory=lambda: defaultdict(list))
    """Files deeper down, by top-level folder."""
    paths: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, listing: Iterable[FileEntry]) -> _Layout:
        layout = cls()
        for entry in listing:
            if entry.path.endswith("/"):
                continue  # an S3 "folder" placeholder object, not a file
            layout.paths.add(entry.path)
            parts = entry.path.split("/")
            if len(parts) == 1:
                layout.root_files.append(entry)
            elif len(parts) == 2:
                layout.folder_files[parts[0]].append(entry)
            else:
                layout.nested_files[parts[0]].append(entry)
        return layout

    @property
    def folders(self) -> list[str]:
        return sorted(set(self.folder_files) | set(self.nested_files))


@dataclass(frozen=True)
class _Subset:
    folder: str
    repeats: int
    class_tokens: str


@dataclass(frozen=True)
class _ImageEntry:
    entry: FileEntry
    subset: _Subset
    caption: str | None
    """The caption path sd-scripts will read, when one exists."""
    wrong_caption: str | None
    """Without a caption: a caption file with another common extension that sd-scripts will not read."""


@dataclass(frozen=True)
class _ImageResult:
    image: _ImageEntry
    caption: str | None
    """The caption sd-scripts trains the image with (`TrainingImage.caption`)."""
    problems: list[Problem]
    header: ImageHeader | None


def _extension(name: str) -> str:
    return posixpath.splitext(name)[1]


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and _extension(name) in IMAGE_EXTENSIONS


def _looks_like_image(name: str) -> bool:
    ext = _extension(name).lower()
    return ext in _EXTENSION_FORMAT or ext in UNSUPPORTED_IMAGE_EXTENSIONS


def _root_problems(layout: _Layout, used_captions: set[str]) -> list[Problem]:
    problems = []
    for entry in layout.root_files:
        if entry.path in SETTINGS_FILES or entry.path in used_captions:
            continue
        if _looks_like_image(entry.path):
            problems.append(
                ROOT_IMAGE.at(
                    entry.path,
                    f"{entry.path} lies in the dataset root; sd-scripts only reads images inside subset folders "
                    "(<repeats>_<class tokens>/), so it is not trained.",
                )
            )
        elif entry.path.lower().endswith(".toml"):
            problems.append(
                ROOT_FILE_IGNORED.at(
                    entry.path,
                    f"{entry.path} is not read: only config.toml (Kohya settings) and pipeline.toml (job settings) are.",
                    fix="Rename it to config.toml or pipeline.toml (lower case) if it holds settings.",
                )
            )
        else:
            problems.append(
                ROOT_FILE_IGNORED.at(entry.path, f"{entry.path} in the dataset root is not read.")
            )
    return problems


def _parse_subsets(layout: _Layout) -> tuple[list[_Subset], list[str]]:
    subsets, skipped = [], []
    for folder in layout.folders:
        parsed = parse_subset_folder(folder)
        if parsed is None or not parsed.trains:
            skipped.append(folder)
        else:
            subsets.append(_Subset(folder, *parsed))
    return subsets, skipped


def _count_images(entries: Iterable[FileEntry]) -> int:
    names = (posixpath.basename(e.path) for e in entries)
    return sum(1 for name in names if not name.startswith(".") and _looks_like_image(name))


def _skipped_folder_problems(layout: _Layout, skipped: list[str]) -> list[Problem]:
    problems = []
    for folder in skipped:
        entries = layout.folder_files.get(folder, []) + layout.nested_files.get(folder, [])
        images = _count_images(entries)
        holding = f"; its {images} image(s) are not trained" if images else ""
        inner_subsets = sorted(
            {
                e.path.split("/")[1]
                for e in layout.nested_files.get(folder, [])
                if (parsed := parse_subset_folder(e.path.split("/")[1])) and parsed.trains
            }
        )
        fix = None
        if folder == "__MACOSX":
            fix = "It is metadata that macOS adds to zip files: delete it."
        elif inner_subsets:
            fix = (
                f"It contains {', '.join(s + '/' for s in inner_subsets)}, which look like subset folders: "
                "move them up into the dataset root."
            )
        parsed = parse_subset_folder(folder)
        if parsed is None:
            problems.append(
                SUBSET_NO_REPEATS.at(
                    f"{folder}/",
                    f"{folder}/ does not start with an integer repeat count (<repeats>_<class tokens>), "
                    f"so sd-scripts skips it{holding}.",
                    fix=fix,
                )
            )
        else:
            problems.append(
                SUBSET_ZERO_REPEATS.at(
                    f"{folder}/",
                    f"{folder}/ has {parsed.repeats} repeats; sd-scripts skips folders with fewer than 1, "
                    f"without a message{holding}.",
                    fix=fix,
                )
            )
    return problems


def _nested_folder_problems(layout: _Layout, subsets: list[_Subset]) -> list[Problem]:
    problems = []
    for subset in subsets:
        by_child: dict[str, list[FileEntry]] = defaultdict(list)
        for entry in layout.nested_files.get(subset.folder, []):
            by_child[entry.path.split("/")[1]].append(entry)
        for child, entries in sorted(by_child.items()):
            parsed = parse_subset_folder(child)
            fix = None
            if parsed is not None and parsed.trains:
                fix = f"{child}/ looks like a subset folder: move it up into the dataset root."
            problems.append(
                SUBSET_NESTED_FOLDER.at(
                    f"{subset.folder}/{child}/",
                    f"{subset.folder}/{child}/ is a sub-folder of a subset; sd-scripts does not look inside "
                    f"sub-folders, so its {_count_images(entries)} image(s) and {len(entries)} file(s) are not used.",
                    fix=fix,
                )
            )
    return problems


def _folder_images(
    layout: _Layout, subset: _Subset, rules: DatasetRules, used_captions: set[str]
) -> tuple[list[_ImageEntry], list[Problem]]:
    entries = sorted(layout.folder_files.get(subset.folder, []), key=lambda e: e.path)
    images: list[_ImageEntry] = []
    problems: list[Problem] = []
    image_bases: dict[str, str] = {}
    for entry in entries:
        if not _is_image_name(posixpath.basename(entry.path)):
            continue
        caption = _first_existing(layout, caption_candidates(entry.path, rules.caption_extension))
        other_extensions = [ext for ext in COMMON_CAPTION_EXTENSIONS if ext != rules.caption_extension]
        other = None
        if caption is None:
            other = _first_existing(
                layout, [c for ext in other_extensions for c in caption_candidates(entry.path, ext)]
            )
        used_captions.update(c for c in (caption, other) if c is not None)
        images.append(_ImageEntry(entry, subset, caption, other))
        base = posixpath.splitext(entry.path)[0]
        if base in image_bases:
            problems.append(
                IMAGE_SAME_NAME.at(
                    entry.path,
                    f"{entry.path} and {image_bases[base]} have the same name: both are trained, with the same "
                    f"caption file {base}{rules.caption_extension}.",
                )
            )
        image_bases.setdefault(base, entry.path)

    image_paths = {image.entry.path for image in images}
    other_bases = {
        posixpath.splitext(e.path)[0]
        for e in entries
        if e.path not in image_paths and not _is_caption_like(e.path, rules)
    }
    for entry in entries:
        if entry.path in image_paths or entry.path in used_captions:
            continue
        problem = _non_image_problem(entry.path, image_bases, other_bases, rules)
        if problem is not None:
            problems.append(problem)
    problems += [_missing_caption_problem(image, rules) for image in images if image.caption is None]
    return images, problems


def _first_existing(layout: _Layout, paths: list[str]) -> str | None:
    return next((path for path in paths if path in layout.paths), None)


def _is_caption_like(path: str, rules: DatasetRules) -> bool:
    return path.endswith(rules.caption_extension) or _extension(path) in COMMON_CAPTION_EXTENSIONS


def _caption_base(path: str, rules: DatasetRules) -> str:
    if path.endswith(rules.caption_extension):
        return path[: -len(rules.caption_extension)]
    return posixpath.splitext(path)[0]


def _non_image_problem(
    path: str, image_bases: dict[str, str], other_bases: set[str], rules: DatasetRules
) -> Problem | None:
    name = posixpath.basename(path)
    ext = _extension(name)
    if name.startswith("."):
        extra = " (a '._' file is a macOS resource fork, not an image)" if name.startswith("._") else ""
        return FILE_IGNORED.at(path, f"{path} starts with '.', so sd-scripts' file search skips it{extra}.")
    if ext.lower() in _EXTENSION_FORMAT:
        return IMAGE_EXTENSION_CASE.at(
            path,
            f"{path} has the extension {ext}; sd-scripts only matches {ext.lower()} or {ext.upper()}, "
            "so it skips this image.",
            fix=f"Rename it to {posixpath.splitext(name)[0]}{ext.lower()}.",
        )
    if ext.lower() in UNSUPPORTED_IMAGE_EXTENSIONS:
        kind = UNSUPPORTED_IMAGE_EXTENSIONS[ext.lower()]
        stem = posixpath.splitext(name)[0]
        fix = f"Convert it to PNG or JPEG (e.g. `magick {name} {stem}.png`) or remove it."
        if kind == "JPEG":
            fix = f"Rename it to {stem}.jpg (the content is already JPEG)."
        return IMAGE_UNSUPPORTED_FORMAT.at(
            path,
            f"{path} has the extension {ext}; sd-scripts only reads .png .jpg .jpeg .webp .bmp, "
            "so it skips this image.",
            fix=fix,
        )
    if not _is_caption_like(path, rules):
        return FILE_IGNORED.at(
            path, f"{path} is neither an image nor a {rules.caption_extension} caption; it is not used."
        )
    base = _caption_base(path, rules)
    if base in image_bases:
        return FILE_IGNORED.at(
            path,
            f"{path} is not read: {image_bases[base]} takes its caption from "
            f"{base}{rules.caption_extension}.",
        )
    if base in other_bases:
        return None  # the file it belongs to (e.g. a .Jpg or .heic image) is reported on its own
    return CAPTION_ORPHAN.at(path, f"{path} has no image with the same name next to it; nothing reads it.")


def _missing_caption_problem(image: _ImageEntry, rules: DatasetRules) -> Problem:
    subset = image.subset
    path = image.entry.path
    uses = (
        f"the folder's class tokens '{subset.class_tokens}' as its whole caption"
        if subset.class_tokens
        else f"an empty caption (the folder name '{subset.folder}' has no class tokens after the repeat count)"
    )
    expected = caption_candidates(path, rules.caption_extension)[0]
    if image.wrong_caption is not None:
        other_ext = _extension(image.wrong_caption)
        return CAPTION_WRONG_EXTENSION.at(
            image.wrong_caption,
            f"{image.wrong_caption} is never read: caption_extension is '{rules.caption_extension}', so "
            f"sd-scripts looks for {expected} and trains {path} with {uses}.",
            fix=f'Add caption_extension = "{other_ext}" to config.toml, or rename the caption files '
            f"to {rules.caption_extension}.",
        )
    return CAPTION_MISSING.at(path, f"{path} has no caption ({expected}); sd-scripts trains it with {uses}.")


# --- images and captions -------------------------------------------------------------------------------------


def _check_image(
    source: DatasetSource, rules: DatasetRules, image: _ImageEntry, decoding: _Decoding | None
) -> _ImageResult:
    caption, problems = _check_caption(source, rules, image)
    header = None
    try:
        with decoding.files.held(image.entry.size) if decoding is not None else nullcontext():
            header, image_problems = _inspect(source, rules, image.entry, decoding)
        problems += image_problems
    except ImageFormatError as error:
        problems.append(IMAGE_UNREADABLE.at(image.entry.path, f"{image.entry.path} cannot be read: {error}."))
    except Exception as error:  # a storage failure (I/O, S3 access) must not hide every other finding
        problems.append(
            IMAGE_UNREADABLE.at(
                image.entry.path,
                f"{image.entry.path} could not be read from {source.location}: {type(error).__name__}: {error}",
                fix="Check that the file exists and is readable, then validate again.",
            )
        )
    return _ImageResult(image, caption, problems, header)


def _inspect(
    source: DatasetSource, rules: DatasetRules, entry: FileEntry, decoding: _Decoding | None
) -> tuple[ImageHeader | None, list[Problem]]:
    path = entry.path
    if entry.size == 0:
        return None, [IMAGE_EMPTY.at(path, f"{path} is empty (0 bytes).")]
    data = None
    if decoding is not None:
        data = source.read_all(path)
        reader = BlockReader(bytes_reader(data), len(data))
    else:
        reader = BlockReader(lambda start, length: source.read_range(path, start, length), entry.size)
    found = identify(reader.read(0, min(reader.size, 32)))
    claimed = _EXTENSION_FORMAT[_extension(path).lower()]
    if found is None:
        return None, [
            IMAGE_UNREADABLE.at(
                path, f"{path} is not a {claimed} image: its first bytes match no image format."
            )
        ]
    if found not in TRAINABLE_FORMATS:
        return None, [
            IMAGE_CONTENT_MISMATCH.at(
                path,
                f"{path} is named like a {claimed} image but is a {found} file, which sd-scripts cannot train on.",
                fix=f"Convert it to {claimed} (e.g. `magick {posixpath.basename(path)} out.png`) or remove it.",
            )
        ]
    problems = []
    if found is not claimed:
        real_ext = ".jpg" if found is ImageFormat.JPEG else f".{found.value.lower()}"
        problems.append(
            IMAGE_EXTENSION_MISMATCH.at(
                path,
                f"{path} is named like a {claimed} image but is a {found} file; Pillow reads it by content, "
                "so it trains, but other tools may not.",
                fix=f"Rename it to {posixpath.splitext(posixpath.basename(path))[0]}{real_ext}.",
            )
        )
    header = read_header(reader)
    cut = truncation(header, reader.tail(TAIL_BYTES), reader.size)
    if cut is not None:
        problems.append(IMAGE_TRUNCATED.at(path, f"{path} is cut off: {cut}."))
    if header.pixels > rules.max_pixels:
        problems.append(
            IMAGE_TOO_MANY_PIXELS.at(
                path,
                f"{path} is {header.width}x{header.height} = {header.pixels:,} pixels, above the limit of "
                f"{rules.max_pixels:,} (Pillow's decompression-bomb limit; sd-scripts crashes above twice that).",
            )
        )
    if header.orientation != 1:
        problems.append(
            IMAGE_EXIF_ROTATED.at(
                path,
                f"{path} has EXIF orientation {header.orientation} ({ORIENTATION_MEANING[header.orientation]}): "
                f"viewers show it turned, but sd-scripts trains on the stored {header.width}x{header.height} "
                "pixels as they are.",
            )
        )
    if header.mode == "I;16":
        problems.append(
            IMAGE_16BIT_GREYSCALE.at(
                path,
                f"{path} is a 16-bit greyscale PNG; sd-scripts' convert('RGB') clips its values to 255, "
                "so the model sees an almost white image.",
            )
        )
    if header.is_cmyk:
        problems.append(
            IMAGE_CMYK.at(
                path,
                f"{path} is CMYK; sd-scripts converts it to RGB without its colour profile, so colours shift.",
            )
        )
    if header.has_alpha and not rules.alpha_mask:
        problems.append(
            IMAGE_ALPHA.at(
                path,
                f"{path} has transparency ({header.mode}); sd-scripts converts it to RGB, so transparent areas "
                "train as whatever colour is stored under them (often black).",
            )
        )
    if data is not None and decoding is not None and not any(p.severity is Severity.ERROR for p in problems):
        with decoding.pixels.held(_decoded_bytes(header)):
            reason = decode_problem(data)
        if reason is not None:
            problems.append(
                IMAGE_UNDECODABLE.at(
                    path,
                    f"{path} has a valid {header.format} header ({header.width}x{header.height}) but Pillow "
                    f"cannot decode its pixels ({reason}); sd-scripts would crash on it while caching latents.",
                )
            )
    return header, problems


def _decoded_bytes(header: ImageHeader) -> int:
    """Pixel memory of a decode: RGBA-sized buffer plus its RGB conversion; a JPEG decodes at 1/8 scale."""
    pixels = header.pixels // 64 if header.format is ImageFormat.JPEG else header.pixels
    return pixels * 7


class _Slots:
    """At most `workers` holders at a time, holding at most `budget` bytes between them (a single holder
    above the budget runs alone)."""

    def __init__(self, workers: int, budget: int) -> None:
        self._workers = max(1, workers)
        self._budget = budget
        self._running = 0
        self._held = 0
        self._changed = threading.Condition()

    @contextmanager
    def held(self, cost: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._running == 0
                    or (self._running < self._workers and self._held + cost <= self._budget)
                )
            )
            self._running += 1
            self._held += cost
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._held -= cost
                self._changed.notify_all()


@dataclass(frozen=True)
class _Decoding:
    """The full decode's memory: `pixels` admits one decode per CPU within the pixel budget, `files` the
    whole image files read and waiting for their decode within the file budget."""

    pixels: _Slots
    files: _Slots


def _size_problems(
    rules: DatasetRules, path: str, header: ImageHeader, choice: BucketChoice
) -> list[Problem]:
    width, height = header.width, header.height
    target_w, target_h = rules.resolution
    upscale = choice.resized[0] / width
    bucket = f"{choice.bucket[0]}x{choice.bucket[1]}"
    target = f"{target_w}x{target_h}"
    if upscale >= UPSCALE_WARNING_FACTOR:
        below_min = ""
        if rules.enable_bucket and min(width, height) < rules.min_bucket_reso:
            below_min = f"; its short side is below min_bucket_reso {rules.min_bucket_reso}"
        return [
            IMAGE_TOO_SMALL.at(
                path,
                f"{path} is {width}x{height}; sd-scripts upscales it {upscale:.2f}x to fill the {bucket} bucket "
                f"(training resolution {target}){below_min}, which blurs it.",
            )
        ]
    shortfall = math.sqrt(target_w * target_h / (width * height))
    if rules.enable_bucket and rules.bucket_no_upscale and shortfall >= UPSCALE_WARNING_FACTOR:
        return [
            IMAGE_TOO_SMALL.at(
                path,
                f"{path} is {width}x{height}; with bucket_no_upscale it trains in a {bucket} bucket, "
                f"{shortfall:.2f}x smaller than the training resolution {target}.",
            )
        ]
    return []


def _check_caption(
    source: DatasetSource, rules: DatasetRules, image: _ImageEntry
) -> tuple[str | None, list[Problem]]:
    """The caption the image trains with (`TrainingImage.caption`) and the problems of its caption file."""
    path = image.caption
    if path is None:
        return image.subset.class_tokens, []
    data = source.read_small(path, MAX_CAPTION_BYTES)
    if data is None:
        return None, [
            CAPTION_TOO_LARGE.at(path, f"{path} is larger than {MAX_CAPTION_BYTES:,} bytes; it was not read.")
        ]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, [
            CAPTION_NOT_UTF8.at(
                path,
                f"{path} is not UTF-8 (byte {error.start}: {error.object[error.start : error.start + 1]!r}).",
            )
        ]
    problems = []
    # sd-scripts reads in text mode: \r\n and \r end lines too.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        return None, [
            CAPTION_EMPTY.at(
                path, f"{path} is empty; sd-scripts stops training with 'caption file is empty'."
            )
        ]
    if rules.enable_wildcard:
        caption = "\n".join(line.strip() for line in lines if line.strip())
    else:
        caption = lines[0].strip()
    if not caption:
        return caption, [
            CAPTION_EMPTY.at(
                path,
                f"{path} has a blank first line; sd-scripts trains {image.entry.path} with an empty caption.",
            )
        ]
    extra_lines = [line for line in lines[1:] if line.strip()]
    if extra_lines and not rules.enable_wildcard:
        problems.append(
            CAPTION_MULTILINE.at(
                path,
                f"{path} has {len(extra_lines) + 1} non-blank lines; sd-scripts uses only the first: {caption[:80]!r}.",
            )
        )
    if caption.startswith("\ufeff"):
        problems.append(
            CAPTION_BYTE_ORDER_MARK.at(
                path, f"{path} starts with a byte-order mark; sd-scripts keeps it as part of the first word."
            )
        )
    tokens = image.subset.class_tokens.strip()
    if tokens and not re.search(rf"(?<!\w){re.escape(tokens)}(?!\w)", caption, re.IGNORECASE):
        problems.append(
            CAPTION_NO_TRIGGER.at(
                path,
                f"{path} does not contain '{tokens}' (the class tokens of {image.subset.folder}/); sd-scripts does "
                f"not add them, so {image.entry.path} does not teach the trigger word.",
                fix=f"Start the caption with '{tokens}, ...'.",
            )
        )
    return caption, problems


# --- summary -----------------------------------------------------------------------------------------------


def _subset_summaries(subsets: list[_Subset], checked: list[_ImageResult]) -> list[SubsetSummary]:
    summaries = []
    for subset in subsets:
        mine = [result for result in checked if result.image.subset == subset]
        summaries.append(
            SubsetSummary(
                folder=subset.folder,
                repeats=subset.repeats,
                class_tokens=subset.class_tokens,
                image_count=len(mine),
                captioned_image_count=sum(1 for result in mine if result.image.caption is not None),
                image_bytes=sum(result.image.entry.size for result in mine),
                images=[
                    TrainingImage(file=result.image.entry.path, caption=result.caption) for result in mine
                ],
            )
        )
    return summaries


def _dataset_problems(
    layout: _Layout, subsets: list[_Subset], skipped: list[str], summaries: list[SubsetSummary]
) -> list[Problem]:
    problems = []
    loose = _count_images(layout.root_files)
    loose_note = f" {loose} image(s) lie loose in the dataset root." if loose else ""
    if not subsets:
        found = f" Skipped folders: {', '.join(f + '/' for f in skipped)}." if skipped else ""
        problems.append(
            DATASET_NO_SUBSETS.at(
                None,
                "No folder named <repeats>_<class tokens> with at least 1 repeat: sd-scripts would log "
                f"'No data found' and exit without training, and without an error.{found}{loose_note}",
            )
        )
        return problems
    if not any(s.image_count for s in summaries):
        return [
            DATASET_NO_IMAGES.at(
                None,
                f"The subset folders {', '.join(s.folder + '/' for s in summaries)} hold no .png .jpg .jpeg .webp "
                f".bmp image: sd-scripts would log 'No data found' and exit without training.{loose_note}",
            )
        ]
    for summary in summaries:
        if summary.image_count == 0:
            problems.append(
                SUBSET_NO_IMAGES.at(
                    f"{summary.folder}/",
                    f"{summary.folder}/ holds no .png .jpg .jpeg .webp .bmp image, so it adds nothing to training.",
                )
            )
    return problems


_SEVERITY_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


def _problem_order(problem: Problem) -> tuple[bool, str, int, str]:
    return (problem.file is not None, problem.file or "", _SEVERITY_ORDER[problem.severity], problem.code)
