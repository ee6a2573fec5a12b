from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import tarfile
import tracemalloc

import numpy as np
import pytest

from lora_pipeline.model_archive import (
    LocalFolderSink,
    ModelArchiveError,
    UnpackLimits,
    unpack_model_archive,
)
from tests.lora_files import (
    Member,
    kohya_metadata,
    lora_tensors,
    safetensors_bytes,
    sdxl_lora_bytes,
    tar_bytes,
)

LORA = sdxl_lora_bytes(module_limit=40)
OTHER_LORA = sdxl_lora_bytes(rank=2, module_limit=10)


class OneWayStream:
    """Only `read`, like an S3 body: proves the unpack never seeks."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.largest_read = 0

    def read(self, size: int = -1, /) -> bytes:
        self.largest_read = max(self.largest_read, size)
        return self._data.read(size)


def unpack(tmp_path, archive: bytes, **options):
    return unpack_model_archive(OneWayStream(archive), LocalFolderSink(tmp_path), **options)


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_lora_is_streamed_out_with_its_checksum_summary_and_metadata(tmp_path):
    archive = tar_bytes(
        [
            Member("logs/", kind=tarfile.DIRTYPE),
            Member("logs/train.log", b"ok"),
            Member("x.safetensors", LORA),
        ]
    )

    result = unpack(tmp_path, archive, output_name="bluebot")

    assert files_in(tmp_path) == ["bluebot.safetensors"]
    assert (tmp_path / "bluebot.safetensors").read_bytes() == LORA
    assert (result.name, result.member, result.size) == ("bluebot.safetensors", "x.safetensors", len(LORA))
    assert result.sha256 == hashlib.sha256(LORA).hexdigest()
    assert result.summary.unet_modules == 40 and result.summary.network_dim == 4
    assert result.metadata["ss_base_model_version"] == "sdxl_base_v1-0"


def test_without_output_name_the_member_keeps_its_own_name(tmp_path):
    result = unpack(tmp_path, tar_bytes([Member("out/my_lora.safetensors", LORA)]))
    assert result.name == "my_lora.safetensors" and files_in(tmp_path) == ["my_lora.safetensors"]


def test_a_model_tar_gz_inside_the_archive_is_unpacked(tmp_path):
    inner = tar_bytes([Member("bluebot.safetensors", LORA)])
    result = unpack(tmp_path, tar_bytes([Member("model.tar.gz", inner)]), output_name="bluebot")
    assert result.member == "model.tar.gz!/bluebot.safetensors"
    assert (tmp_path / "bluebot.safetensors").read_bytes() == LORA


def test_archives_nested_deeper_than_the_limit_are_not_opened_and_the_error_says_so(tmp_path):
    innermost = tar_bytes([Member("bluebot.safetensors", LORA)])
    archive = tar_bytes([Member("model.tar.gz", tar_bytes([Member("again.tar.gz", innermost)]))])
    with pytest.raises(ModelArchiveError, match=r"nested too deep.*model\.tar\.gz!/again\.tar\.gz"):
        unpack(tmp_path, archive)
    assert unpack(tmp_path, archive, limits=UnpackLimits(max_nesting=2)).member.count("!/") == 2


def test_uncompressed_tar_multi_member_gzip_and_zero_padding_are_read(tmp_path):
    plain = tar_bytes([Member("a.safetensors", LORA)], compress=False)
    half = len(plain) // 2
    assert unpack(tmp_path, plain).size == len(LORA)
    assert unpack(
        tmp_path, gzip.compress(plain[:half]) + gzip.compress(plain[half:]) + bytes(512)
    ).size == len(LORA)


@pytest.mark.parametrize("preferred_first", [True, False])
def test_output_name_picks_the_final_lora_among_epoch_saves(tmp_path, preferred_first):
    members = [Member("bluebot-000001.safetensors", OTHER_LORA), Member("bluebot.safetensors", LORA)]
    if preferred_first:
        members.reverse()
    result = unpack(tmp_path, tar_bytes(members), output_name="bluebot")
    assert result.member == "bluebot.safetensors" and result.sha256 == hashlib.sha256(LORA).hexdigest()
    assert files_in(tmp_path) == ["bluebot.safetensors"]
    assert (tmp_path / "bluebot.safetensors").read_bytes() == LORA


def test_a_broken_epoch_save_does_not_matter_when_the_named_lora_follows(tmp_path):
    members = [Member("bluebot-000001.safetensors", b"garbage"), Member("bluebot.safetensors", LORA)]
    assert unpack(tmp_path, tar_bytes(members), output_name="bluebot").size == len(LORA)


def test_several_loras_without_a_name_match_are_refused_and_nothing_is_left(tmp_path):
    members = [Member("a.safetensors", LORA), Member("b.safetensors", OTHER_LORA)]
    with pytest.raises(
        ModelArchiveError, match=r"2 \.safetensors files and none is bluebot\.safetensors"
    ) as caught:
        unpack(tmp_path, tar_bytes(members), output_name="bluebot")
    assert "'a.safetensors', 'b.safetensors'" in str(caught.value) and "output_name" in caught.value.fix
    assert files_in(tmp_path) == []


def test_two_members_with_the_chosen_name_are_refused(tmp_path):
    members = [Member("bluebot.safetensors", LORA), Member("old/bluebot.safetensors", LORA)]
    with pytest.raises(ModelArchiveError, match=r"several members are named bluebot\.safetensors"):
        unpack(tmp_path, tar_bytes(members), output_name="bluebot")
    assert files_in(tmp_path) == []


def test_an_archive_without_safetensors_is_refused(tmp_path):
    with pytest.raises(ModelArchiveError, match=r"no \.safetensors file") as caught:
        unpack(tmp_path, tar_bytes([Member("model.ckpt", b"pickle"), Member("train.log", b"No data found")]))
    assert caught.value.member is None


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (Member("../../escape.safetensors", LORA), "climbs out"),
        (Member("ok/../../escape.txt", b"x"), "climbs out"),
        (Member("/etc/cron.d/evil", b"x"), "absolute"),
        (
            Member("link.safetensors", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
            "symbolic link to '/etc/passwd'",
        ),
        (Member("hard.safetensors", kind=tarfile.LNKTYPE, linkname="x.safetensors"), "hard link"),
        (Member("dev", kind=tarfile.CHRTYPE), "device"),
        (Member("pipe", kind=tarfile.FIFOTYPE), "FIFO"),
    ],
    ids=["dotdot", "inner-dotdot", "absolute", "symlink", "hardlink", "device", "fifo"],
)
def test_dangerous_members_fail_the_whole_archive_naming_the_member(tmp_path, member, expected):
    archive = tar_bytes([Member("bluebot.safetensors", LORA), member])
    with pytest.raises(ModelArchiveError, match=expected) as caught:
        unpack(tmp_path, archive, output_name="bluebot")
    assert caught.value.member == member.name
    assert files_in(tmp_path) == []


def test_a_member_claiming_10_gb_is_refused_from_its_header_alone(tmp_path):
    stream = OneWayStream(tar_bytes([Member("huge.safetensors", LORA[:1000], claimed_size=10 * 1024**3)]))
    with pytest.raises(ModelArchiveError, match=r"claims 10,737,418,240 bytes.*per member") as caught:
        unpack_model_archive(stream, LocalFolderSink(tmp_path))
    assert caught.value.member == "huge.safetensors"
    assert "max_member_bytes" in caught.value.fix


def test_total_size_and_member_count_limits_are_configurable(tmp_path):
    members = [Member(f"sample_{i}.png", bytes(1000)) for i in range(5)] + [Member("a.safetensors", LORA)]
    with pytest.raises(ModelArchiveError, match="add up to more than 3,000 bytes") as caught:
        unpack(tmp_path, tar_bytes(members), limits=UnpackLimits(max_total_bytes=3000))
    assert caught.value.member == "sample_3.png"
    with pytest.raises(ModelArchiveError, match="more than 4 members"):
        unpack(tmp_path, tar_bytes(members), limits=UnpackLimits(max_members=4))


def test_an_oversized_extended_header_is_refused_before_tarfile_buffers_it(tmp_path):
    archive = tar_bytes([Member("././@PaxHeader", b"9 x=y\n".ljust(2 * 1024 * 1024), kind=tarfile.XHDTYPE)])
    with pytest.raises(ModelArchiveError, match="extended tar header claims"):
        unpack(tmp_path, archive)


def test_a_full_checkpoint_named_like_a_lora_is_refused(tmp_path):
    checkpoint = safetensors_bytes(
        {"model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4), np.float16)}
    )
    with pytest.raises(
        ModelArchiveError, match="not an SDXL LoRA: this is a full model checkpoint"
    ) as caught:
        unpack(tmp_path, tar_bytes([Member("bluebot.safetensors", checkpoint)]), output_name="bluebot")
    assert caught.value.member == "bluebot.safetensors"
    assert files_in(tmp_path) == []


def test_a_diffusers_format_lora_is_refused_with_how_to_tell(tmp_path):
    diffusers = safetensors_bytes(
        {
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": np.zeros(
                (4, 8), np.float16
            )
        }
    )
    with pytest.raises(ModelArchiveError, match="diffusers/PEFT-format LoRA"):
        unpack(tmp_path, tar_bytes([Member("pytorch_lora_weights.safetensors", diffusers)]))


def test_a_lone_non_lora_candidate_is_refused_even_without_output_name(tmp_path):
    with pytest.raises(ModelArchiveError, match=r"not an SDXL LoRA.*too short"):
        unpack(tmp_path, tar_bytes([Member("x.safetensors", b"tiny")]), output_name="bluebot")


def test_a_truncated_archive_is_reported_naming_the_member_being_read(tmp_path):
    archive = tar_bytes([Member("bluebot.safetensors", sdxl_lora_bytes(module_limit=400))])
    with pytest.raises(ModelArchiveError, match="truncated") as caught:
        unpack(tmp_path, archive[: len(archive) // 2])
    assert caught.value.member == "bluebot.safetensors"
    assert files_in(tmp_path) == []


def test_corrupt_and_foreign_archives_are_refused(tmp_path):
    archive = bytearray(tar_bytes([Member("bluebot.safetensors", LORA)]))
    archive[len(archive) // 2] ^= 0xFF
    with pytest.raises(ModelArchiveError, match="truncated or corrupt"):
        unpack(tmp_path, bytes(archive))
    with pytest.raises(ModelArchiveError, match="bzip2-compressed"):
        unpack(tmp_path, bz2.compress(tar_bytes([Member("a.safetensors", LORA)], compress=False)))
    with pytest.raises(ModelArchiveError, match="is empty"):
        unpack(tmp_path, b"")
    assert files_in(tmp_path) == []


def test_output_name_must_be_a_plain_file_name(tmp_path):
    with pytest.raises(ValueError, match="not a plain file name"):
        unpack(tmp_path, tar_bytes([Member("a.safetensors", LORA)]), output_name="../bluebot")


def test_memory_stays_bounded_when_a_tiny_archive_inflates_to_64_mb(tmp_path):
    tensors = lora_tensors(module_limit=1)
    # A real SDXL layer (5120 -> 1280) at an absurd rank: 66 MiB of zeros in lora_down.
    padding = "lora_te2_text_model_encoder_layers_0_mlp_fc2"
    tensors[f"{padding}.lora_down.weight"] = np.zeros((6600, 5120), np.float16)
    tensors[f"{padding}.lora_up.weight"] = np.zeros((1280, 6600), np.float16)
    tensors[f"{padding}.alpha"] = np.array(1.0, np.float16)
    archive = tar_bytes([Member("bluebot.safetensors", safetensors_bytes(tensors, kohya_metadata()))])
    del tensors
    assert len(archive) < 1024 * 1024

    tracemalloc.start()
    try:
        result = unpack(tmp_path, archive)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.size > 64 * 1024 * 1024
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_local_sink_shows_the_file_only_after_close_and_leaves_nothing_after_abort(tmp_path):
    sink = LocalFolderSink(tmp_path)
    writer = sink.open("a.safetensors")
    writer.write(b"data")
    assert not (tmp_path / "a.safetensors").exists()
    writer.close()
    assert (tmp_path / "a.safetensors").read_bytes() == b"data"
    aborted = sink.open("b.safetensors")
    aborted.write(b"data")
    aborted.abort()
    assert files_in(tmp_path) == ["a.safetensors"]
    with pytest.raises(ValueError, match="plain file name"):
        sink.open("sub/c.safetensors")


class FullDiskSink:
    """A sink whose writes fail like a full disk; records what happened to the writer."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def open(self, name: str):
        sink = self

        class Writer:
            def write(self, data: bytes) -> None:
                raise OSError(28, "No space left on device")

            def close(self) -> None:
                sink.events.append("close")

            def abort(self) -> None:
                sink.events.append("abort")

        return Writer()


def test_a_failing_sink_is_aborted_and_its_error_is_not_blamed_on_the_archive():
    sink = FullDiskSink()
    with pytest.raises(OSError, match="No space left"):
        unpack_model_archive(OneWayStream(tar_bytes([Member("a.safetensors", LORA)])), sink)
    assert sink.events == ["abort"]
