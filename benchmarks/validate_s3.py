"""The validate Lambda's S3 reads at S3-like latency: seconds per 1,000 images, requests per image.

    .venv/bin/python benchmarks/validate_s3.py [--count 1000] [--latency-ms 20] [--limit 2.0]

The dataset (benchmarks/validate_images.py's mix: 1024 px JPEGs with EXIF, PNGs, WebPs, BMPs, a caption
each) is served to the real S3 client the functions use (`lora_pipeline.aws.clients`, with its retry and
connection pool settings) by a botocore `before-send` hook instead of the network: botocore still builds, signs
and parses every request. Each request waits `--latency-ms`; one that finds all of the client's pooled
connections busy waits two more round trips (the TCP and TLS set-up of the connection urllib3 opens and then
discards, "Connection pool is full"). Runs `build_validation_report` as the validate step does and prints the time,
requests by kind and per image. Exit status 1 above `--limit` seconds per 1,000 images.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from botocore.awsrequest import AWSResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_images import generate

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.s3_source import S3DatasetSource
from lora_pipeline.validate import build_validation_report

BUCKET = "bench-bucket"
DATASET = "bluebot"


class _Body(io.BytesIO):
    def stream(self, amt: int = 65536) -> Iterator[bytes]:
        while chunk := self.read(amt):
            yield chunk


class LatentS3:
    """Answers GetObject (with Range) and ListObjectsV2 from a local folder, after a modelled network wait."""

    def __init__(self, root: Path, latency: float, pool_size: int) -> None:
        self.root = root
        self.latency = latency
        self.pool_size = pool_size
        self.requests: Counter[str] = Counter()
        self.new_connections = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, request: Any, **_: Any) -> AWSResponse:
        with self._lock:
            self._in_flight += 1
            over_pool = self._in_flight > self.pool_size
            self.new_connections += over_pool
        try:
            time.sleep(self.latency * (3 if over_pool else 1))
            return self._answer(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, request: Any) -> AWSResponse:
        url = urlsplit(request.url)
        query = parse_qs(url.query)
        key = unquote(url.path.split(f"/{BUCKET}/", 1)[-1] if f"/{BUCKET}/" in url.path else url.path[1:])
        if "list-type" in query:
            self.requests["ListObjectsV2"] += 1
            return self._list(query.get("prefix", [""])[0], request.url)
        path = self.root / key.removeprefix(f"datasets/{DATASET}/")
        size = path.stat().st_size
        byte_range = request.headers.get("Range")
        self.requests["GetObject (range)" if byte_range else "GetObject"] += 1
        start, end, status, headers = 0, size - 1, 200, {}
        if byte_range:
            first, last = byte_range.decode().removeprefix("bytes=").split("-")
            start = max(size - int(last), 0) if first == "" else int(first)
            end = size - 1 if first == "" or last == "" else min(int(last), size - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            status = 206
        with path.open("rb") as file:
            file.seek(start)
            data = file.read(end + 1 - start)
        headers["Content-Length"] = str(len(data))
        return AWSResponse(request.url, status, headers, _Body(data))

    def _list(self, prefix: str, url: str) -> AWSResponse:
        entries = "".join(
            f"<Contents><Key>{escape(prefix + str(path.relative_to(self.root)))}</Key>"
            f"<Size>{path.stat().st_size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
            for path in sorted(self.root.rglob("*"))
            if path.is_file()
        )
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>{BUCKET}</Name>'
            f"<Prefix>{escape(prefix)}</Prefix><IsTruncated>false</IsTruncated>{entries}</ListBucketResult>"
        ).encode()
        return AWSResponse(url, 200, {"Content-Length": str(len(xml))}, _Body(xml))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--limit", type=float, default=2.0, help="seconds per 1,000 images")
    args = parser.parse_args()
    os.environ.update(
        {"AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    )
    os.environ.pop("AWS_ENDPOINT_URL", None)

    root = Path(tempfile.mkdtemp(prefix="lora-bench-s3-"))
    try:
        generate(root, args.count)
        s3 = client("s3")
        fake = LatentS3(root, args.latency_ms / 1000, s3.meta.config.max_pool_connections)
        s3.meta.events.register("before-send.s3", fake)
        wall, cpu = time.perf_counter(), time.process_time()
        report = build_validation_report(S3DatasetSource(s3, BUCKET, DATASET), DATASET)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        shutil.rmtree(root, ignore_errors=True)
    images = report.summary.total_images
    per_thousand = wall * 1000 / images
    print(f"{images} images at {args.latency_ms:g} ms per request, pool of {fake.pool_size} connections")
    print(
        f"build_validation_report: {wall:.2f} s wall ({per_thousand:.2f} s per 1,000 images), {cpu:.2f} s CPU"
    )
    for kind, count in sorted(fake.requests.items()):
        print(f"  {kind:<18} {count:6d}")
    total = sum(fake.requests.values())
    print(
        f"  requests per image {total / images:.2f}; connections opened past the pool: {fake.new_connections}"
    )
    return 1 if per_thousand > args.limit else 0


if __name__ == "__main__":
    sys.exit(main())
