"""Peak memory and throughput of the model unpack on a generated ~1 GB model.tar.gz, next to `tar xzf`.

    .venv/bin/python benchmarks/unpack_memory.py [--size-mb 1024] [--zero-fraction 0] [--rounds 2] [--keep DIR]

The archive holds one SDXL LoRA (real module shapes, rank 4) padded by one more LoRA module to the
requested size. Padding is 16 MiB blocks of normally distributed fp16 values (about as compressible as
trained weights), `--zero-fraction` of them zero.

Each measurement runs in its own process. Peak RSS is the process's VmHWM (unlike ru_maxrss it does not
inherit the parent's size across fork+exec): the unpack reads its own, tar's is sampled every 20 ms. A
second unpack under tracemalloc gives the peak of Python allocations. Source and sink are local files
here, and a third run sends the LoRA through the S3 multipart sink (s3transfer) to a boto3 client that
reads and discards each request body (the Lambda's sink without the network).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import math
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]
MIB = 1024 * 1024
BLOCK = 16 * MIB
# An SDXL layer the LoRA of `lora_tensors` leaves free (a LoCon convolution), stretched to [1, N]: its width
# is not the layer's, so the unpack runs with Architecture.SMOKE, which checks names and numbers but not widths.
PADDING_MODULE = "lora_unet_input_blocks_1_0_in_layers_2"


def write_archive(path: Path, size_bytes: int, zero_fraction: float) -> tuple[str, int]:
    """Writes model.tar.gz holding a LoRA of about `size_bytes`; returns the LoRA's sha256 and size.

    The gzip file has several members: each 16 MiB padding block is compressed once and its member
    repeated, so generation takes seconds while decompression still inflates every byte.
    """
    # Imported here so that the measured worker processes do not load numpy.
    import numpy as np

    from tests.lora_files import kohya_metadata, lora_tensors

    tensors = lora_tensors(rank=4)
    offset = 0
    header: dict[str, object] = {"__metadata__": kohya_metadata(rank=4)}
    for name, array in tensors.items():
        header[name] = {
            "dtype": "F16",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    blocks = max(1, (size_bytes - offset) // BLOCK)
    padding = {
        f"{PADDING_MODULE}.lora_down.weight": [1, blocks * BLOCK // 2],
        f"{PADDING_MODULE}.lora_up.weight": [1, 1],
        f"{PADDING_MODULE}.alpha": [],
    }
    for name, shape in padding.items():
        nbytes = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    lora_size = 8 + len(encoded) + offset
    member = tarfile.TarInfo("benchmark.safetensors")
    member.size = lora_size

    random_block = np.random.default_rng(1).standard_normal(BLOCK // 2).astype(np.float16).tobytes()
    compressed = {False: gzip.compress(random_block, 1), True: gzip.compress(bytes(BLOCK), 1)}
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        head = len(encoded).to_bytes(8, "little") + encoded + b"".join(a.tobytes() for a in tensors.values())
        digest.update(head)
        file.write(gzip.compress(member.tobuf(tarfile.GNU_FORMAT) + head, 1))
        for index in range(blocks):
            # Spreads the zero blocks evenly: block i is zero when i * fraction crosses an integer.
            is_zero = int((index + 1) * zero_fraction) > int(index * zero_fraction)
            digest.update(bytes(BLOCK) if is_zero else random_block)
            file.write(compressed[is_zero])
        tail = np.ones(2, np.float16).tobytes()  # lora_up (1x1) and alpha
        digest.update(tail)
        end_of_archive = bytes(-lora_size % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE)
        file.write(gzip.compress(tail + end_of_archive, 1))
    return digest.hexdigest(), lora_size


def peak_rss(pid: int | str = "self") -> int:
    """VmHWM: the process's peak resident memory in bytes (unlike ru_maxrss, not inherited across exec)."""
    status = Path(f"/proc/{pid}/status").read_text()
    kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kilobytes) * 1024


def run_measured(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, sampled peak RSS and stdout of one child process (RSS read every 20 ms)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout:
        process = subprocess.Popen(command, stdout=stdout, text=True)
        sampled = 0
        while process.poll() is None:
            with contextlib.suppress(OSError, StopIteration):
                sampled = max(sampled, peak_rss(process.pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        if process.returncode != 0:
            raise SystemExit(f"{command[0]} failed with status {process.returncode}")
        stdout.seek(0)
        return seconds, sampled, stdout.read()


class _Payload:
    """The raw body botocore reads a canned response from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: object) -> list[bytes]:
        return [self._data]


def discarding_s3_client() -> object:
    """A real boto3 S3 client whose requests never leave the process: each body is read as a send would
    read it and dropped, and S3's reply is canned. The sink's own memory (s3transfer, botocore), no network."""
    import boto3
    from botocore.awsrequest import AWSResponse

    replies = {
        "CreateMultipartUpload": b"<InitiateMultipartUploadResult><UploadId>benchmark</UploadId>"
        b"</InitiateMultipartUploadResult>",
        "CompleteMultipartUpload": b'<CompleteMultipartUploadResult><ETag>"done"</ETag>'
        b"</CompleteMultipartUploadResult>",
    }

    def answer(request: object, operation_name: str, **_: object) -> AWSResponse:
        body = getattr(request, "body", None)
        if hasattr(body, "read"):
            while body.read(64 * 1024):
                pass
        url = getattr(request, "url", "")
        return AWSResponse(url, 200, {"ETag": '"part"'}, _Payload(replies.get(operation_name, b"")))

    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="benchmark", aws_secret_access_key="benchmark"
    )
    for operation in ("CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "PutObject"):
        client.meta.events.register(
            f"before-send.s3.{operation}",
            lambda request, operation=operation, **_: answer(request, operation),
        )
    return client


MODES = {
    "local": "unpack to a local file",
    "traced": "same, under tracemalloc",
    "multipart": "unpack to an S3 multipart sink",
}


def worker(archive: Path, output: Path, mode: str) -> None:
    """Runs one unpack and prints its facts as JSON (called in a child process)."""
    import tracemalloc

    from lora_pipeline.aws.s3_model_io import S3MultipartSink
    from lora_pipeline.model_archive import LocalFolderSink, ModelSink, unpack_model_archive
    from lora_pipeline.safetensors_lora import Architecture

    sink: ModelSink = LocalFolderSink(output)
    if mode == "multipart":
        sink = S3MultipartSink(discarding_s3_client(), "bucket", "runs/benchmark/model/")
    rss_before = peak_rss()
    if mode == "traced":
        tracemalloc.start()
    start = time.perf_counter()
    with open(archive, "rb") as source:
        result = unpack_model_archive(source, sink, output_name="benchmark", architecture=Architecture.SMOKE)
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1] if mode == "traced" else None
    facts = {"seconds": seconds, "rss_before": rss_before, "rss_peak": peak_rss(), "traced_peak": traced_peak}
    print(json.dumps(facts | {"sha256": result.sha256, "size": result.size}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the LoRA inside the archive")
    parser.add_argument(
        "--zero-fraction", type=float, default=0.0, help="share of padding blocks that are zero"
    )
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tool; the best time counts")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the archive")
    parser.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="local", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, mode=args.mode)
        return

    with tempfile.TemporaryDirectory(dir=args.keep) as temporary:
        work = Path(temporary)
        archive = (args.keep or work) / "model.tar.gz"
        start = time.perf_counter()
        expected_sha256, lora_size = write_archive(archive, args.size_mb * MIB, args.zero_fraction)
        archive_size = archive.stat().st_size
        print(
            f"archive: {archive_size / MIB:.0f} MiB gzip holding a {lora_size / MIB:.0f} MiB LoRA "
            f"(generated in {time.perf_counter() - start:.0f} s)"
        )

        # Rounds alternate between the tools, so a busy machine slows them alike; each keeps its best time.
        extracted = work / "tar"
        extracted.mkdir()
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for mode, label in MODES.items():
                output = work / mode
                output.mkdir(exist_ok=True)
                command = [sys.executable, __file__, "--worker", str(archive), str(output), "--mode", mode]
                facts = json.loads(run_measured(command)[2])
                if facts.pop("sha256") != expected_sha256:
                    raise SystemExit(f"{label}: sha256 differs from the generated file")
                (output / "benchmark.safetensors").unlink(missing_ok=True)
                best[mode] = min(best.get(mode, facts), facts, key=lambda f: f["seconds"])
            seconds, rss, _ = run_measured(["tar", "xzf", str(archive), "-C", str(extracted)])
            best["tar"] = min(
                best.get("tar", {"seconds": math.inf}),
                {"seconds": seconds, "rss_peak": rss},
                key=lambda f: f["seconds"],
            )
        with open(extracted / "benchmark.safetensors", "rb") as untarred:
            if hashlib.file_digest(untarred, "sha256").hexdigest() != expected_sha256:
                raise SystemExit("tar xzf extracted a different file")

    print(f"best of {args.rounds} rounds")
    print(f"{'':30}{'seconds':>9}{'MB/s':>9}{'peak RSS MB':>13}{'Python peak MB':>16}")
    for mode, label in [*MODES.items(), ("tar", "tar xzf")]:
        facts = best[mode]
        traced = f"{facts['traced_peak'] / 1e6:16.1f}" if facts.get("traced_peak") else ""
        throughput = lora_size / 1e6 / facts["seconds"]
        print(f"{label:30}{facts['seconds']:9.1f}{throughput:9.0f}{facts['rss_peak'] / 1e6:13.1f}{traced}")
    local, multipart = best["local"], best["multipart"]
    print(f"unpack / tar xzf: {local['seconds'] / best['tar']['seconds']:.2f}x the time")
    for label, facts in (("local file", local), ("multipart sink", multipart)):
        print(
            f"unpack to a {label}: RSS {facts['rss_peak'] / 1e6:.0f} MB, of which {facts['rss_before'] / 1e6:.0f}"
            f" MB is the interpreter and imports (+{(facts['rss_peak'] - facts['rss_before']) / 1e6:.0f} MB)"
        )


if __name__ == "__main__":
    main()
