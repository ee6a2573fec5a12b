"""How fast is `check_dataset` on 1,000 images, against a validator that decodes every image?

    .venv/bin/python benchmarks/validate_images.py [--count 1000] [--workers 16] [--latency-ms 0]

Generates a dataset of mixed formats in a temporary folder (1024 px photo-like JPEGs with EXIF,
PNGs, WebPs, BMPs, each with a caption), then times, in the same run:
- `check_dataset` (headers and tails only) with the thread pool, and with one worker;
- the baseline a naive validator would use: `PIL.Image.open(path).load()` on every image, one by one.
`--latency-ms` adds a delay to every read of `check_dataset`'s source, to model S3 ranged GETs
(the baseline would have to download every whole file there).
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from lora_pipeline.dataset import DatasetRules, check_dataset
from lora_pipeline.storage import LocalFolder

# (extension, size, mode, EXIF orientation, share of the dataset)
MIX = [
    (".jpg", (1024, 1024), "RGB", 1, 0.4),
    (".jpg", (1536, 1024), "RGB", 6, 0.1),
    (".png", (1024, 1024), "RGB", None, 0.25),
    (".webp", (1024, 1024), "RGB", None, 0.15),
    (".bmp", (768, 768), "RGB", None, 0.1),
]


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


def encoded(extension: str, size: tuple[int, int], orientation: int | None) -> bytes:
    buffer = io.BytesIO()
    image = photo_like(size)
    options: dict[str, object] = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    fmt = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}[extension]
    if fmt == "JPEG":
        options["quality"] = 90
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def generate(root: Path, count: int) -> list[Path]:
    templates = [
        (ext, encoded(ext, size, orientation), share) for ext, size, _mode, orientation, share in MIX
    ]
    paths = []
    index = 0
    for ext, data, share in templates:
        for _ in range(round(count * share)):
            folder = root / ("10_bluebot" if index % 2 else "5_bluebot night")
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"img{index:04d}{ext}"
            path.write_bytes(data)
            path.with_suffix(".caption").write_text(f"bluebot, photo {index}\n")
            paths.append(path)
            index += 1
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


def timed_check(root: Path, workers: int, latency: float) -> tuple[float, int, int]:
    source = SlowFolder(root, latency)
    start = time.perf_counter()
    summary, _ = check_dataset(
        source, DatasetRules(enable_bucket=True, max_bucket_reso=2048), max_workers=workers
    )
    return time.perf_counter() - start, summary.total_images, source.bytes_read


def timed_decode(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.load()
    return time.perf_counter() - start


def main() -> None:
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
        timed_check(root, args.workers, 0)  # warm the page cache for both contenders
        pooled, images, bytes_read = timed_check(root, args.workers, latency)
        print(f"{images} images, {total_bytes / 1e6:.0f} MB, read latency {args.latency_ms:g} ms")
        print(f"check_dataset, {args.workers} workers:  {pooled:6.2f} s  {images / pooled:6.0f} images/s")
        if latency == 0:
            single, _, _ = timed_check(root, 1, latency)
            print(f"check_dataset, 1 worker:     {single:6.2f} s  {images / single:6.0f} images/s")
        decoded = timed_decode(paths)
        print(
            f"Pillow open+load, one by one: {decoded:6.2f} s  {images / decoded:6.0f} images/s (local disk)"
        )
        print(f"check_dataset is {decoded / pooled:.0f}x faster than decoding")
        print(f"bytes read by check_dataset: {bytes_read / 1e6:.1f} MB of {total_bytes / 1e6:.0f} MB")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
