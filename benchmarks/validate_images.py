"""How fast does `check_dataset` verify 1,000 JPEGs, against decoding each one as sd-scripts does?

    .venv/bin/python benchmarks/validate_images.py [--count 1000] [--workers 16] [--latency-ms 0]

Generates `--count` photo-like 1024x1024 JPEGs (quality 90, some with an EXIF orientation), each with a
caption, in a temporary folder, then times, in the same run:
- the baseline: `PIL.Image.open(path).convert("RGB")` on every image, one after the other (what
  sd-scripts' `load_image` does, and what a naive validator would do);
- `check_dataset` with the full decode (every image read once, header pass, then Pillow decodes every
  pixel: JPEGs at 1/8 DCT scale, which still reads the whole entropy stream), with the thread pool;
- `check_dataset` with headers and tails only (`decode=False`), with the thread pool and with one worker.
It prints the figures and whether the full decode meets its targets: at least 2x faster than the baseline,
and under 10 s for 1,000 images. `--latency-ms` adds a delay to every read of `check_dataset`'s source,
to model S3 GETs (the baseline reads the local disk).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from lora_pipeline.dataset import DatasetRules, check_dataset
from lora_pipeline.dataset_source import LocalFolder
from lora_pipeline.problems import Severity

SIZE = (1024, 1024)
# Distinct encodings the dataset cycles through (every image is a different file on disk either way).
TEMPLATES = 8
TARGET_SPEEDUP = 2.0
TARGET_SECONDS_PER_1000 = 10.0


def photo_like(size: tuple[int, int]) -> Image.Image:
    """Smooth gradients plus grain: compresses like a photo, unlike flat colour or pure noise."""
    gradient = Image.linear_gradient("L").resize(size)
    grain = Image.effect_noise(size, 24)
    bands = [
        Image.blend(gradient, grain, 0.3),
        Image.blend(gradient.rotate(90).resize(size), grain, 0.2),
        Image.radial_gradient("L").resize(size),
    ]
    return Image.merge("RGB", bands)


def encoded(orientation: int | None) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, object] = {"quality": 90}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    photo_like(SIZE).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def generate(root: Path, count: int) -> list[Path]:
    templates = [encoded(6 if index % 4 == 3 else None) for index in range(TEMPLATES)]
    paths = []
    for index in range(count):
        folder = root / ("10_bluebot" if index % 2 else "5_bluebot night")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{index:04d}.jpg"
        path.write_bytes(templates[index % TEMPLATES])
        path.with_suffix(".caption").write_text(f"bluebot, photo {index}\n")
        paths.append(path)
    return paths


class SlowFolder(LocalFolder):
    """A local folder whose every read waits like a network round trip."""

    def __init__(self, root: Path, latency: float) -> None:
        super().__init__(root)
        self.latency = latency
        self.bytes_read = 0

    def read_range(self, path: str, start: int, length: int) -> bytes:
        time.sleep(self.latency)
        data = super().read_range(path, start, length)
        self.bytes_read += len(data)
        return data

    def read_small(self, path: str, limit: int) -> bytes | None:
        time.sleep(self.latency)
        return super().read_small(path, limit)

    def read_all(self, path: str) -> bytes:
        time.sleep(self.latency)
        return super().read_all(path)


def timed_check(root: Path, workers: int, latency: float, decode: bool) -> tuple[float, int, int, int]:
    source = SlowFolder(root, latency)
    start = time.perf_counter()
    summary, problems = check_dataset(
        source, DatasetRules(enable_bucket=True, max_bucket_reso=2048), max_workers=workers, decode=decode
    )
    errors = sum(1 for p in problems if p.severity is Severity.ERROR)
    return time.perf_counter() - start, summary.total_images, source.bytes_read, errors


def timed_baseline(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.convert("RGB")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay per read, to model S3 (e.g. 20)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="lora-bench-"))
    try:
        paths = generate(root, args.count)
        total_bytes = sum(p.stat().st_size for p in paths)
        latency = args.latency_ms / 1000
        timed_check(root, args.workers, 0, decode=False)  # warm the page cache for every contender
        print(
            f"{args.count} JPEGs {SIZE[0]}x{SIZE[1]}, {total_bytes / 1e6:.0f} MB, {os.cpu_count()} CPU(s), "
            f"read latency {args.latency_ms:g} ms"
        )
        baseline = timed_baseline(paths)
        print(
            f"baseline, Pillow convert('RGB') one by one:  {baseline:6.2f} s  {args.count / baseline:6.0f} images/s"
        )
        full, images, _, errors = timed_check(root, args.workers, latency, decode=True)
        print(
            f"check_dataset, full decode, {args.workers} workers:  {full:6.2f} s  {images / full:6.0f} images/s"
        )
        pooled, _, bytes_read, _ = timed_check(root, args.workers, latency, decode=False)
        print(
            f"check_dataset, headers only, {args.workers} workers: {pooled:6.2f} s  {images / pooled:6.0f} images/s"
        )
        if latency == 0:
            single, _, _, _ = timed_check(root, 1, latency, decode=False)
            print(
                f"check_dataset, headers only, 1 worker:   {single:6.2f} s  {images / single:6.0f} images/s"
            )
        print(f"headers only: {bytes_read / 1e6:.1f} MB read of {total_bytes / 1e6:.0f} MB")

        speedup = baseline / full
        per_1000 = full * 1000 / args.count
        met = speedup >= TARGET_SPEEDUP and per_1000 < TARGET_SECONDS_PER_1000 and errors == 0
        print(
            f"full decode: {speedup:.1f}x faster than the baseline (target >= {TARGET_SPEEDUP:g}x), "
            f"{per_1000:.2f} s per 1,000 images (target < {TARGET_SECONDS_PER_1000:g} s), "
            f"{errors} error(s): {'MET' if met else 'NOT MET'}"
        )
        return 0 if met else 1
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    sys.exit(main())
