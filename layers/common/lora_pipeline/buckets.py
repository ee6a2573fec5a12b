"""Aspect-ratio buckets and batches, formed as sd-scripts v0.10.1 forms them. Pure functions, no I/O.

sd-scripts' data flow, mirrored step by step:
1. `library/model_util.py` `make_bucket_resolutions`: the candidate bucket sizes for `resolution`,
   `min_bucket_reso`, `max_bucket_reso` and `bucket_reso_steps` (`bucket_resolutions`).
2. `library/train_util.py` `BucketManager.select_bucket`: each image's bucket and the size it is scaled to
   before cropping; with `bucket_no_upscale` the bucket is derived from the image itself (`select_bucket`).
   Without `enable_bucket`, `BaseDataset.make_buckets` sets one predefined bucket, the resolution.
3. `BaseDataset.make_buckets`: every image goes into its bucket once per repeat of its subset, and each
   bucket is cut into `ceil(images / train_batch_size)` batches of its own (`assign_buckets`,
   `BucketAssignment.batches_per_epoch`). A batch never mixes buckets, so with a batch size above 1 an
   epoch has up to one partial batch per bucket.
4. `train_network.py`: `max_train_steps = max_train_epochs * ceil(batches / processes / gradient_accumulation_steps)`
   (`steps_per_epoch`).

The signature is what the differential tests against sd-scripts need: image sizes and settings in, the
assignment and the batch count out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketSettings:
    """sd-scripts' bucket arguments. Defaults are sd-scripts' own argparse defaults (`train_util.py`
    `add_dataset_arguments`), except `resolution`, which sd-scripts requires and SDXL trains at 1024x1024."""

    resolution: tuple[int, int] = (1024, 1024)
    """(width, height)."""
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False

    def __post_init__(self) -> None:
        # train_util.py BaseDataset.adjust_min_max_bucket_reso_by_steps: sd-scripts rounds the minimum down and
        # the maximum up to multiples of bucket_reso_steps before it makes the buckets.
        steps = self.bucket_reso_steps
        if steps > 0:
            object.__setattr__(self, "min_bucket_reso", self.min_bucket_reso - self.min_bucket_reso % steps)
            object.__setattr__(self, "max_bucket_reso", -(-self.max_bucket_reso // steps) * steps)


@dataclass(frozen=True)
class ImageSize:
    """One training image as sd-scripts sees it: stored pixel size (EXIF orientation not applied) and the
    repeat count of its subset."""

    width: int
    height: int
    repeats: int = 1


@dataclass(frozen=True)
class BucketChoice:
    bucket: tuple[int, int]
    """(width, height) of the bucket the image trains in."""
    resized: tuple[int, int]
    """The size the image is scaled to before it is cropped to the bucket."""


@dataclass(frozen=True)
class BucketAssignment:
    choices: tuple[BucketChoice, ...]
    """One per image, in the order the images were given."""
    counts: dict[tuple[int, int], int]
    """Images per bucket, each image counted once per repeat; buckets sorted as sd-scripts sorts them."""

    def batches_per_epoch(self, batch_size: int) -> int:
        return batches_per_epoch(self.counts.values(), batch_size)


def bucket_resolutions(settings: BucketSettings) -> list[tuple[int, int]]:
    """`model_util.make_bucket_resolutions(resolution, min_bucket_reso, max_bucket_reso, bucket_reso_steps)`:
    sorted (width, height) pairs."""
    max_area = settings.resolution[0] * settings.resolution[1]
    steps = settings.bucket_reso_steps
    side = int(math.sqrt(max_area) // steps) * steps
    resolutions = {(side, side)}
    width = settings.min_bucket_reso
    while width <= settings.max_bucket_reso:
        height = min(settings.max_bucket_reso, int((max_area // width) // steps) * steps)
        if height >= settings.min_bucket_reso:
            resolutions.update({(width, height), (height, width)})
        width += steps
    return sorted(resolutions)


def select_bucket(
    settings: BucketSettings, width: int, height: int, resolutions: Sequence[tuple[int, int]]
) -> BucketChoice:
    """`BucketManager.select_bucket` for an image of `width` x `height`; `resolutions` comes from
    `bucket_resolutions` (unused with `bucket_no_upscale`, ignored without `enable_bucket`)."""
    aspect = width / height
    if settings.enable_bucket and settings.bucket_no_upscale:
        return _select_bucket_no_upscale(settings, width, height)
    candidates = list(resolutions) if settings.enable_bucket else [settings.resolution]
    if (width, height) in candidates:
        bucket = (width, height)
    else:
        # numpy's argmin over |aspect error|: the first of equal errors wins, as min() does here.
        bucket = min(candidates, key=lambda r: abs(r[0] / r[1] - aspect))
    scale = bucket[1] / height if aspect > bucket[0] / bucket[1] else bucket[0] / width
    return BucketChoice(bucket, (int(width * scale + 0.5), int(height * scale + 0.5)))


def _select_bucket_no_upscale(settings: BucketSettings, width: int, height: int) -> BucketChoice:
    steps = settings.bucket_reso_steps
    max_area = settings.resolution[0] * settings.resolution[1]
    aspect = width / height

    def round_to_steps(x: float) -> int:
        rounded = int(x + 0.5)
        return rounded - rounded % steps

    if width * height > max_area:
        resized_width = math.sqrt(max_area * aspect)
        resized_height = max_area / resized_width
        width_rounded = round_to_steps(resized_width)
        height_for_width = round_to_steps(width_rounded / aspect)
        height_rounded = round_to_steps(resized_height)
        width_for_height = round_to_steps(height_rounded * aspect)
        if abs(width_rounded / height_for_width - aspect) < abs(width_for_height / height_rounded - aspect):
            resized = (width_rounded, int(width_rounded / aspect + 0.5))
        else:
            resized = (int(height_rounded * aspect + 0.5), height_rounded)
    else:
        resized = (width, height)
    return BucketChoice((resized[0] - resized[0] % steps, resized[1] - resized[1] % steps), resized)


def assign_buckets(images: Sequence[ImageSize], settings: BucketSettings) -> BucketAssignment:
    """`BaseDataset.make_buckets`: each image's bucket, and the images (x repeats) in every bucket."""
    resolutions = bucket_resolutions(settings) if settings.enable_bucket else []
    choices = tuple(select_bucket(settings, image.width, image.height, resolutions) for image in images)
    counts: Counter[tuple[int, int]] = Counter()
    for image, choice in zip(images, choices, strict=True):
        counts[choice.bucket] += image.repeats
    return BucketAssignment(choices, {bucket: counts[bucket] for bucket in sorted(counts)})


def batches_per_epoch(bucket_counts: Iterable[int], batch_size: int) -> int:
    """`len(train_dataloader)` in sd-scripts: `BaseDataset.make_buckets` cuts each bucket of `count` images
    (with repeats) into `ceil(count / batch_size)` batches of its own."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    return sum(math.ceil(count / batch_size) for count in bucket_counts)


def steps_per_epoch(batches_per_epoch: int, processes: int = 1, gradient_accumulation_steps: int = 1) -> int:
    """`train_network.py`: `ceil(len(train_dataloader) / num_processes / gradient_accumulation_steps)`."""
    return math.ceil(batches_per_epoch / processes / gradient_accumulation_steps)
