"""Aspect buckets and batches. Expected values follow sd-scripts v0.10.1's code:
`library/model_util.py` make_bucket_resolutions, `library/train_util.py` BucketManager.select_bucket and
BaseDataset.make_buckets (one list per bucket, `num_repeats` entries per image, `ceil(len / batch_size)`
batches per bucket), `train_network.py` (max_train_steps from max_train_epochs)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lora_pipeline.buckets import (
    BucketSettings,
    ImageSize,
    assign_buckets,
    batches_per_epoch,
    bucket_resolutions,
    steps_per_epoch,
)
from lora_pipeline.dataset_source import LocalFolder
from lora_pipeline.validate import build_validation_report
from tests.corpus import make_image, write_caption

SDXL = BucketSettings(enable_bucket=True, max_bucket_reso=2048)
# 3 squares, 3 landscapes, 2 portraits: each size is itself a predefined bucket of make_bucket_resolutions
# for 1024x1024 (1048576 // 1344 = 780 -> 768 at steps of 64), so select_bucket keeps it.
MIXED = [ImageSize(1024, 1024)] * 3 + [ImageSize(1344, 768)] * 3 + [ImageSize(768, 1344)] * 2


def test_each_size_lands_in_its_own_bucket_sorted_like_bucket_manager_sort() -> None:
    assert (1344, 768) in bucket_resolutions(SDXL)
    assignment = assign_buckets(MIXED, SDXL)
    assert assignment.counts == {(768, 1344): 2, (1024, 1024): 3, (1344, 768): 3}
    assert list(assignment.counts) == sorted(assignment.counts)
    assert [c.bucket for c in assignment.choices] == [(1024, 1024)] * 3 + [(1344, 768)] * 3 + [
        (768, 1344)
    ] * 2


@pytest.mark.parametrize(
    ("batch_size", "batches"),
    # make_buckets: sum over buckets of ceil(len(bucket) / batch_size), never ceil(8 / batch_size)
    [(1, 8), (2, 2 + 2 + 1), (4, 1 + 1 + 1), (8, 3)],
)
def test_batches_are_cut_per_bucket(batch_size: int, batches: int) -> None:
    assert assign_buckets(MIXED, SDXL).batches_per_epoch(batch_size) == batches


def test_repeats_add_one_entry_per_repeat_to_the_bucket() -> None:
    assignment = assign_buckets([ImageSize(1024, 1024, repeats=5), ImageSize(1344, 768, repeats=3)], SDXL)
    assert assignment.counts == {(1024, 1024): 5, (1344, 768): 3}
    assert assignment.batches_per_epoch(4) == 2 + 1


def test_without_enable_bucket_every_image_shares_the_resolution_bucket() -> None:
    assignment = assign_buckets(MIXED, BucketSettings(enable_bucket=False))
    assert assignment.counts == {(1024, 1024): 8}
    assert assignment.batches_per_epoch(4) == 2
    landscape = assignment.choices[3]
    # select_bucket scales to cover the one bucket: the landscape's height fills 1024.
    assert landscape.resized == (int(1344 * 1024 / 768 + 0.5), 1024)


def test_no_upscale_buckets_come_from_the_image_size_rounded_down_to_steps() -> None:
    settings = BucketSettings(enable_bucket=True, bucket_no_upscale=True)
    assignment = assign_buckets([ImageSize(500, 300), ImageSize(510, 300), ImageSize(640, 320)], settings)
    # 500 - 500 % 64 = 448, 510 - 510 % 64 = 448, 300 - 300 % 64 = 256
    assert assignment.counts == {(448, 256): 2, (640, 320): 1}


def test_closest_aspect_bucket_is_chosen_for_sizes_not_in_the_table() -> None:
    assignment = assign_buckets([ImageSize(3000, 2000)], SDXL)
    (bucket,) = assignment.counts
    aspect_errors = {r: abs(r[0] / r[1] - 1.5) for r in bucket_resolutions(SDXL)}
    assert aspect_errors[bucket] == min(aspect_errors.values())


def test_steps_divide_batches_by_processes_then_gradient_accumulation() -> None:
    # train_network.py: ceil(len(train_dataloader) / num_processes / gradient_accumulation_steps)
    assert steps_per_epoch(5, 1, 2) == 3
    assert steps_per_epoch(10, 4, 1) == math.ceil(10 / 4)
    assert steps_per_epoch(10, 4, 2) == math.ceil(10 / 4 / 2)


def test_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch size"):
        batches_per_epoch([3], 0)


def test_validation_plan_counts_batches_per_bucket(tmp_path: Path) -> None:
    subset = tmp_path / "1_zkq dog"
    sizes = [(1024, 1024)] * 3 + [(1344, 768)] * 3 + [(768, 1344)] * 2
    for index, size in enumerate(sizes):
        make_image(subset / f"img{index}.jpg", size=size)
        write_caption(subset / f"img{index}.caption", "zkq dog")
    (tmp_path / "config.toml").write_text(
        "train_batch_size = 4\nmax_train_epochs = 2\ngradient_accumulation_steps = 2\n"
    )
    report = build_validation_report(LocalFolder(tmp_path), "dog")
    assert report.plan is not None
    assert (report.plan.buckets, report.plan.batches_per_epoch) == (3, 3)
    assert report.plan.steps_per_epoch == 2  # ceil(3 batches / 2 accumulated)
    assert report.plan.total_steps == 4


def test_bucket_limits_are_rounded_to_the_step_as_sd_scripts_does():
    # train_util.py BaseDataset.adjust_min_max_bucket_reso_by_steps: min rounds down, max rounds up
    settings = BucketSettings(min_bucket_reso=250, max_bucket_reso=2000, bucket_reso_steps=32)
    assert (settings.min_bucket_reso, settings.max_bucket_reso) == (224, 2016)
    assert BucketSettings(min_bucket_reso=256, max_bucket_reso=2048).max_bucket_reso == 2048
