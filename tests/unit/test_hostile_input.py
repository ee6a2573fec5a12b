"""Hostile input costs bounded work and ends as a named problem, never as a traceback or a memory spike.

Each fixture is one kind of attack: deep nesting (RecursionError in tomllib/json), huge files, huge key
counts, chains of tar extended headers, and object keys that are not plain relative paths.
"""

from __future__ import annotations

import gzip
import struct
import tarfile
import time
import tracemalloc
from pathlib import Path

import pytest

from lora_pipeline.base_model import check_s3_checkpoint
from lora_pipeline.dataset import MAX_CAPTION_BYTES, DatasetRules, check_dataset
from lora_pipeline.dataset_source import FileEntry, LocalFolder
from lora_pipeline.instances import load_instance_table
from lora_pipeline.job_settings import StackLimits, read_job_settings
from lora_pipeline.kohya_config import PipelineInputs, build_effective_config
from lora_pipeline.model_archive import LocalFolderSink, ModelArchiveError, unpack_model_archive
from lora_pipeline.rules import MAX_UNKNOWN_KEYS_REPORTED
from lora_pipeline.s3_layout import parse_dataset_key, unsafe_key_reason
from lora_pipeline.safetensors_lora import (
    SafetensorsHeaderError,
    check_lora_stream,
    read_safetensors_header,
    trigger_words,
)
from lora_pipeline.training_metrics import LossPoint, parse_loss_log
from lora_pipeline.validate import MAX_SETTINGS_BYTES, build_validation_report
from tests.corpus import make_good_dataset
from tests.lora_files import Member, sdxl_lora_bytes, tar_bytes

DEEP = 100_000
INPUTS = PipelineInputs(
    dataset_name="bluebot", output_name=None, base_model_hf_id=None, sample_every_n_epochs=None
)


def peak_bytes(action) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- deep nesting --------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [f"x = {'[' * DEEP}{']' * DEEP}", f"x = {'{a = ' * DEEP}1{'}' * DEEP}"])
@pytest.mark.parametrize("file", ["config.toml", "pipeline.toml"])
def test_deeply_nested_settings_are_a_parse_error(tmp_path: Path, file: str, line: str) -> None:
    folder = make_good_dataset(tmp_path / "bluebot")
    (folder / file).write_text(line + "\n")
    report = build_validation_report(LocalFolder(folder), "bluebot")
    (problem,) = [p for p in report.problems if p.file == file]
    assert problem.code in {"CONFIG_PARSE_ERROR", "JOB_TOML_SYNTAX"}
    assert "nested too deeply" in problem.message
    assert not report.trainable


def test_a_safetensors_header_of_deeply_nested_arrays_is_a_header_error() -> None:
    header = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(SafetensorsHeaderError, match="nested too deeply"):
        read_safetensors_header(_UnseekableStream(struct.pack("<Q", len(header)) + header))


def test_a_model_archive_whose_lora_header_is_deeply_nested_is_refused(tmp_path: Path) -> None:
    header = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    archive = tar_bytes([Member("bluebot.safetensors", struct.pack("<Q", len(header)) + header)])
    with pytest.raises(ModelArchiveError, match=r"not an SDXL LoRA.*nested too deeply"):
        unpack_model_archive(_UnseekableStream(archive), LocalFolderSink(tmp_path), output_name="bluebot")


def test_the_streaming_output_check_reports_a_deeply_nested_header() -> None:
    header = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    data = struct.pack("<Q", len(header)) + header
    check = check_lora_stream(_UnseekableStream(data), len(data))
    assert check.header is None and any("nested too deeply" in problem for problem in check.problems)


def test_deeply_nested_training_metadata_gives_no_trigger_words() -> None:
    nested = "[" * 200_000 + "]" * 200_000
    assert trigger_words({"ss_tag_frequency": nested, "ss_dataset_dirs": nested}) == []


@pytest.mark.parametrize(
    "line",
    [
        f'{{"step": 2, "loss": {"[" * DEEP}{"]" * DEEP}}}',
        "[2, 0.5]",
        '"text"',
        '{"step": 1e999, "loss": 0.5}',
    ],
    ids=["deeply-nested", "array", "string", "infinite-step"],
)
def test_a_hostile_loss_log_line_is_skipped(line: str) -> None:
    # training_loss.jsonl comes out of the job's output archive, like the LoRA itself.
    text = "\n".join(['{"step": 1, "loss": 0.25}', line, '{"step": 3, "epoch": 1, "loss": 0.125}'])
    assert parse_loss_log(text) == [LossPoint(1, None, 0.25), LossPoint(3, 1, 0.125)]


def test_an_s3_base_model_with_a_deeply_nested_header_is_not_sdxl() -> None:
    header = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    data = struct.pack("<Q", len(header)) + header

    class Checkpoint:
        def read_range(self, uri: str, start: int, length: int) -> bytes:
            return data[start : start + length]

    problem = check_s3_checkpoint("s3://models/base.safetensors", Checkpoint(), "pipeline.toml")
    assert problem is not None and problem.code == "JOB_BASE_MODEL_NOT_SDXL"


class _UnseekableStream:
    """Bytes read front to back only, as from an S3 GetObject body."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def read(self, size: int = -1, /) -> bytes:
        end = len(self._data) if size < 0 else self._at + size
        chunk, self._at = self._data[self._at : end], min(end, len(self._data))
        return chunk


# --- size caps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("decode", [True, False], ids=["full-decode", "headers-only"])
def test_a_100_mb_caption_is_refused_after_reading_64_kib(tmp_path: Path, decode: bool) -> None:
    folder = make_good_dataset(tmp_path / "bluebot")
    caption = next(folder.glob("10_bluebot/*.caption"))
    with caption.open("wb") as f:  # sparse: costs no disk
        f.truncate(100 * 1024 * 1024)
    result: list = []
    peak = peak_bytes(
        lambda: result.append(check_dataset(LocalFolder(folder), DatasetRules(), decode=decode))
    )
    problems = [p for p in result[0][1] if p.file == caption.relative_to(folder).as_posix()]
    assert [p.code for p in problems] == ["CAPTION_TOO_LARGE"]
    assert f"{MAX_CAPTION_BYTES:,} bytes" in problems[0].message
    assert peak < 8 * 1024 * 1024


@pytest.mark.parametrize("file", ["config.toml", "pipeline.toml"])
def test_an_oversized_settings_file_is_refused_unread(tmp_path: Path, file: str) -> None:
    folder = make_good_dataset(tmp_path / "bluebot")
    (folder / file).write_text("# padding\n" * (MAX_SETTINGS_BYTES // 10 + 1))
    report = build_validation_report(LocalFolder(folder), "bluebot")
    assert [p.code for p in report.problems if p.file == file] == ["SETTINGS_TOO_LARGE"]
    assert not report.trainable


def test_100_000_unknown_keys_are_fast_and_reported_in_a_bounded_list() -> None:
    text = "".join(f"unknown_key_{i} = {i}\n" for i in range(100_000))
    started = time.perf_counter()
    result = build_effective_config(text, INPUTS)
    _, job_problems = read_job_settings(text, StackLimits(), load_instance_table())
    assert time.perf_counter() - started < 10  # was 74 s: a difflib suggestion for every key
    for problems in (result.problems, job_problems):
        unknown = [p for p in problems if p.code in ("CONFIG_UNKNOWN_KEY", "JOB_UNKNOWN_KEY")]
        assert len(unknown) == MAX_UNKNOWN_KEYS_REPORTED + 1
        assert f"{100_000 - MAX_UNKNOWN_KEYS_REPORTED:,} more" in unknown[-1].message


# --- tar extended headers ------------------------------------------------------------------------------


def _pax(size: int) -> Member:
    """One pax extended header of about `size` bytes (a valid `<length> comment=...` record)."""
    body = "comment=" + "x" * (size - 20) + "\n"
    length = len(body) + 1
    while len(record := f"{length} {body}") != length:
        length = len(record)
    return Member("././@PaxHeader", record.encode(), kind=tarfile.XHDTYPE)


def test_a_chain_of_1000_pax_headers_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    archive = tar_bytes([*(_pax(1_000_000) for _ in range(1000)), Member("bluebot.safetensors", b"")])
    assert len(archive) < 10 * 1024 * 1024

    def unpack() -> None:
        with pytest.raises(ModelArchiveError, match="extended tar headers in a row"):
            unpack_model_archive(_UnseekableStream(archive), LocalFolderSink(tmp_path), output_name="bluebot")

    assert peak_bytes(unpack) < 24 * 1024 * 1024  # was about 1 GB: every header held at once
    assert list(tmp_path.iterdir()) == []


def test_members_with_large_pax_headers_are_not_kept_in_memory(tmp_path: Path) -> None:
    members = []
    for i in range(60):
        members += [_pax(900_000), Member(f"sample_{i}.png", b"png")]
    archive = tar_bytes([*members, Member("bluebot.safetensors", sdxl_lora_bytes(module_limit=10))])
    result = []
    peak = peak_bytes(
        lambda: result.append(
            unpack_model_archive(_UnseekableStream(archive), LocalFolderSink(tmp_path), output_name="bluebot")
        )
    )
    assert result[0].name == "bluebot.safetensors"
    assert peak < 24 * 1024 * 1024  # 60 members' 900 KB headers would be 54 MB


def _pax_sized(name: str, data: bytes) -> bytes:
    """A member whose ustar size field says 0 and whose pax `size` record says `len(data)` (tar, uncompressed)."""
    info = tarfile.TarInfo(name)
    info.pax_headers = {"size": str(len(data))}
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return header + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def test_the_header_check_follows_the_member_extent_tarfile_reads_from_a_pax_size_record(
    tmp_path: Path,
) -> None:
    lora = sdxl_lora_bytes(module_limit=10)
    chain = tar_bytes([*(_pax(1000) for _ in range(5)), Member("x.png", b"")], compress=False)
    end = bytes(2 * tarfile.BLOCKSIZE)
    accepted = unpack_model_archive(
        _UnseekableStream(_pax_sized("bluebot.safetensors", lora) + end),
        LocalFolderSink(tmp_path),
        output_name="bluebot",
    )
    assert (accepted.size, (tmp_path / "bluebot.safetensors").read_bytes()) == (len(lora), lora)
    # The chain right after the member is found only by skipping the pax-given size, not the ustar one.
    with pytest.raises(ModelArchiveError, match="more than 4 extended tar headers in a row"):
        unpack_model_archive(
            _UnseekableStream(_pax_sized("bluebot.safetensors", lora) + chain), LocalFolderSink(tmp_path)
        )


def test_four_extended_headers_before_one_member_are_accepted(tmp_path: Path) -> None:
    lora = sdxl_lora_bytes(module_limit=10)
    archive = tar_bytes([*(_pax(1000) for _ in range(4)), Member("bluebot.safetensors", lora)])
    result = unpack_model_archive(
        _UnseekableStream(archive), LocalFolderSink(tmp_path), output_name="bluebot"
    )
    assert result.size == len(lora)


def _gnu_sparse_header_chain(extension_blocks: int) -> bytes:
    """A GNU sparse ('S') member followed by `extension_blocks` sparse-map blocks and the end of the archive."""
    info = tarfile.TarInfo("bluebot.safetensors")
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[482] = 1  # isextended: a sparse-map block follows
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    entry = b"%011o\0%011o\0" % (1, 1)  # offset, length: a real map entry, which tarfile keeps
    extension = entry * 21 + b"\1" + bytes(7)  # isextended: one more block follows
    last = entry * 21 + bytes(8)
    return bytes(header) + extension * (extension_blocks - 1) + last + bytes(2 * tarfile.BLOCKSIZE)


def test_a_gnu_sparse_map_of_millions_of_blocks_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    # tarfile reads a GNU sparse map whole before it returns the member, 21 entries a block: 256 Ki blocks
    # (128 MiB of map) would hold 5.5 M tuples.
    archive = gzip.compress(_gnu_sparse_header_chain(256 * 1024))
    assert len(archive) < 10 * 1024 * 1024

    def unpack() -> None:
        with pytest.raises(
            ModelArchiveError, match="tar headers of more than 1048576 bytes before one member"
        ):
            unpack_model_archive(_UnseekableStream(archive), LocalFolderSink(tmp_path))

    assert peak_bytes(unpack) < 24 * 1024 * 1024
    with pytest.raises(ModelArchiveError, match="is a device, FIFO or sparse file"):
        unpack_model_archive(
            _UnseekableStream(gzip.compress(_gnu_sparse_header_chain(3))), LocalFolderSink(tmp_path)
        )


# --- object keys ---------------------------------------------------------------------------------------

UNSAFE_PATHS = [
    "10_a/../x.png",
    "10_a/./x.png",
    "10_a//x.png",
    "10_a\\x.png",
    "10_a/x\x00.png",
    "10_a/x\n.png",
]


@pytest.mark.parametrize("path", UNSAFE_PATHS)
def test_unsafe_keys_are_errors_and_never_read(path: str) -> None:
    class Unreadable(LocalFolder):
        def read_range(self, path: str, start: int, length: int) -> bytes:
            raise AssertionError(f"read {path!r}")

        def read_all(self, path: str) -> bytes:
            raise AssertionError(f"read {path!r}")

    listing = [FileEntry(path, 10)]
    _, problems = check_dataset(Unreadable("/nonexistent"), DatasetRules(), listing)
    (unsafe,) = [p for p in problems if p.code == "FILE_PATH_UNSAFE"]
    assert unsafe.severity == "error" and unsafe.file == ascii(path)
    assert all(ord(c) >= 0x20 for p in problems for c in p.message)


@pytest.mark.parametrize("name", ["..", ".", "a\\b", "a\x00b", "a\rb"])
def test_ingest_ignores_a_dataset_folder_that_cannot_be_a_name(name: str) -> None:
    assert unsafe_key_reason(name) is not None
    assert parse_dataset_key(f"datasets/{name}/10_a/x.png") is None


def test_plain_keys_stay_usable() -> None:
    for path in ["10_a/x.png", "10_a/.hidden", "config.toml", "10_a b/ü.png"]:
        assert unsafe_key_reason(path) is None
