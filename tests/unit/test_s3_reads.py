"""How many requests the validator makes per image, and how many it overlaps (the validate Lambda's S3 reads).
Seconds per 1,000 images at S3 latency: benchmarks/validate_s3.py."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.s3_source import S3DatasetSource
from lora_pipeline.dataset import DatasetRules, check_dataset
from lora_pipeline.dataset_source import LocalFolder
from lora_pipeline.images import HEAD_BLOCK, WHOLE_READ_BYTES
from tests.corpus import image_bytes, write_caption


class CountingFolder(LocalFolder):
    """A local folder that counts reads per file and the most reads in flight at once."""

    def __init__(self, root: Path, parallel: int) -> None:
        super().__init__(root)
        self.parallel = parallel
        self.reads: Counter[str] = Counter()
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    @property
    def parallel_reads(self) -> int:
        return self.parallel

    def _counted(self, path: str) -> None:
        with self._lock:
            self.reads[path] += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(0.002)  # a round trip, so that reads overlap
        with self._lock:
            self.in_flight -= 1

    def read_range(self, path: str, start: int, length: int) -> bytes:
        self._counted(path)
        return super().read_range(path, start, length)

    def read_small(self, path: str, limit: int) -> bytes | None:
        self._counted(path)
        return super().read_small(path, limit)

    def read_all(self, path: str) -> bytes:
        self._counted(path)
        return super().read_all(path)


def _dataset(root: Path, images: dict[str, bytes]) -> Path:
    folder = root / "10_bluebot"
    folder.mkdir(parents=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
        write_caption((folder / name).with_suffix(".caption"), "bluebot")
    return root


@pytest.mark.parametrize("decode", [False, True])
def test_a_small_image_costs_one_read_and_a_large_one_two_plus_its_caption(
    tmp_path: Path, decode: bool
) -> None:
    small = image_bytes("WEBP", (256, 256), noise=True, quality=80)
    large = image_bytes("BMP", (256, 256), noise=True)
    assert len(small) <= WHOLE_READ_BYTES < len(large) and len(large) > 2 * HEAD_BLOCK
    source = CountingFolder(_dataset(tmp_path, {"small.webp": small, "large.bmp": large}), parallel=4)
    summary, problems = check_dataset(source, DatasetRules(), decode=decode)
    assert summary.total_images == 2
    assert {p.code for p in problems} == {"IMAGE_TOO_SMALL"}  # 256 px: read, measured, found small
    assert source.reads == {
        "10_bluebot/small.webp": 1,  # header and tail from one whole read
        # headers only: the first block, then the last 4 KiB; the full decode reads every file once, whole
        "10_bluebot/large.bmp": 1 if decode else 2,
        "10_bluebot/small.caption": 1,
        "10_bluebot/large.caption": 1,
    }


@pytest.mark.parametrize("parallel", [1, 3])
def test_the_validator_overlaps_as_many_reads_as_the_source_serves(tmp_path: Path, parallel: int) -> None:
    png = image_bytes("PNG", (64, 64))
    source = CountingFolder(_dataset(tmp_path, {f"img{i:02d}.png": png for i in range(24)}), parallel)
    check_dataset(source, DatasetRules())
    assert source.most_in_flight == parallel


def test_whole_files_waiting_for_their_decode_stay_within_the_file_budget(tmp_path: Path) -> None:
    class ImageReadsCounted(CountingFolder):
        def read_small(self, path: str, limit: int) -> bytes | None:
            return LocalFolder.read_small(self, path, limit)  # captions: outside the file budget

    png = image_bytes("PNG", (64, 64))
    source = ImageReadsCounted(_dataset(tmp_path, {f"img{i:02d}.png": png for i in range(24)}), parallel=8)
    summary, problems = check_dataset(source, DatasetRules(), file_memory_bytes=2 * len(png))
    assert summary.total_images == 24 and {p.code for p in problems} == {"IMAGE_TOO_SMALL"}
    # 8 reader threads (8 reads at once without the budget, test above), but two files' bytes at a time
    assert source.most_in_flight <= 2
    assert len(source.reads) == 24 and set(source.reads.values()) == {1}


def test_s3_reader_threads_match_the_clients_connection_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    s3 = client("s3")
    pool = s3.meta.config.max_pool_connections
    # botocore's default pool is 10; 16 threads on it opened and discarded connections ("pool is full").
    assert pool >= 32
    assert S3DatasetSource(s3, "bucket", "bluebot").parallel_reads == pool
