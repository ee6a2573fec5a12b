"""Dataset layout rules: one generated dataset per rule, and good datasets that must pass untouched."""

from __future__ import annotations

import io
import random
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.buckets import bucket_resolutions, select_bucket
from lora_pipeline.dataset import DatasetRules, DatasetSummary, check_dataset
from lora_pipeline.dataset_source import FileEntry, LocalFolder
from lora_pipeline.images import HEAD_BLOCK, TAIL_BYTES, decode_problem
from lora_pipeline.kohya_contract import caption_candidates, parse_resolution, parse_subset_folder
from lora_pipeline.problems import Problem, Severity, catalogue, has_errors
from tests.corpus import (
    heic_bytes,
    image_bytes,
    make_good_dataset,
    make_image,
    make_subset,
    png_bytes_with_size,
    truncate,
    write_caption,
)


def check(root: Path, **rules: object) -> tuple[DatasetSummary, list[Problem]]:
    return check_dataset(LocalFolder(root), DatasetRules(**rules))  # type: ignore[arg-type]


def codes(problems: list[Problem]) -> list[str]:
    return [p.code for p in problems]


def only(problems: list[Problem], code: str) -> Problem:
    found = [p for p in problems if p.code == code]
    assert len(found) == 1, f"expected one {code}, got {codes(problems)}"
    return found[0]


# --- good datasets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extension", [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP"]
)
def test_good_dataset_in_every_accepted_extension_has_no_problems(tmp_path: Path, extension: str) -> None:
    make_good_dataset(tmp_path, extension=extension)
    summary, problems = check(tmp_path)
    assert problems == []
    assert [(s.folder, s.repeats, s.class_tokens, s.image_count) for s in summary.subsets] == [
        ("10_bluebot", 10, "bluebot", 3),
        ("5_bluebot night", 5, "bluebot night", 2),
    ]


def test_good_mixed_dataset_with_buckets_has_no_problems(tmp_path: Path) -> None:
    make_subset(tmp_path, "10_bluebot", 2, ".png")
    make_image(tmp_path / "10_bluebot" / "wide.jpg", (1536, 1024))
    write_caption(tmp_path / "10_bluebot" / "wide.caption", "bluebot on a beach\n")
    make_image(tmp_path / "3_bluebot" / "tall.webp", (832, 1216), mode="RGB")
    write_caption(tmp_path / "3_bluebot" / "tall.caption", "Bluebot, standing")
    summary, problems = check(tmp_path, enable_bucket=True, max_bucket_reso=2048)
    assert problems == []
    assert summary.total_images == 4
    assert summary.total_repeated_images == 3 * 10 + 3


def test_summary_counts_images_captions_bytes_and_buckets(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / "uncaptioned.png", (1024, 1024))
    make_image(tmp_path / "notes" / "x.png", (64, 64))
    summary, _ = check(tmp_path, enable_bucket=True)
    first = summary.subsets[0]
    assert (first.image_count, first.captioned_image_count) == (4, 3)
    assert first.image_bytes == sum(p.stat().st_size for p in (tmp_path / "10_bluebot").glob("*.png"))
    assert summary.total_images == 6
    assert summary.total_repeated_images == 4 * 10 + 2 * 5
    assert summary.total_bytes == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert summary.skipped_folders == ["notes/"]
    assert [(b.width, b.height, b.image_count) for b in summary.buckets] == [(1024, 1024, 50)]
    assert summary.batches_per_epoch(4) == 13


@pytest.mark.parametrize(
    ("enable_wildcard", "multiline_caption"),
    [(False, "bluebot, first"), (True, "bluebot, first\nsecond")],
)
def test_summary_lists_each_image_with_the_caption_it_trains_with(
    tmp_path: Path, enable_wildcard: bool, multiline_caption: str
) -> None:
    """DreamBoothDataset.read_caption: the first line stripped (every non-blank line with enable_wildcard);
    no caption file means the folder's class tokens; an empty caption file stops sd-scripts (None)."""
    folder = tmp_path / "3_bluebot"
    for name in ("a", "b", "c", "d"):
        make_image(folder / f"{name}.png", (1024, 1024))
    write_caption(folder / "a.caption", "  bluebot, first \r\n\n  second \n")
    write_caption(folder / "c.caption", b"")
    write_caption(folder / "d.caption", "\nafter a blank line")
    summary, _ = check(tmp_path, enable_wildcard=enable_wildcard)
    blank_first = "after a blank line" if enable_wildcard else ""
    assert [(i.file, i.caption) for i in summary.subsets[0].images] == [
        ("3_bluebot/a.png", multiline_caption),
        ("3_bluebot/b.png", "bluebot"),
        ("3_bluebot/c.png", None),
        ("3_bluebot/d.png", blank_first),
    ]


def test_only_headers_and_tails_are_read(tmp_path: Path) -> None:
    (tmp_path / "10_bluebot").mkdir()
    for index in range(4):
        (tmp_path / "10_bluebot" / f"big{index}.jpg").write_bytes(
            image_bytes("JPEG", (2048, 2048), noise=True)
        )
        write_caption(tmp_path / "10_bluebot" / f"big{index}.caption", "bluebot")
    read: list[int] = []

    class Counting(LocalFolder):
        def read_range(self, path: str, start: int, length: int) -> bytes:
            data = super().read_range(path, start, length)
            read.append(len(data))
            return data

    _, problems = check_dataset(Counting(tmp_path), DatasetRules(), decode=False)
    assert problems == []
    assert sum(read) == 4 * (HEAD_BLOCK + TAIL_BYTES)
    assert sum(read) * 10 < sum(p.stat().st_size for p in tmp_path.rglob("*.jpg"))


def test_s3_folder_placeholders_are_not_files(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    files = [*LocalFolder(tmp_path).list_files(), FileEntry("10_bluebot/", 0), FileEntry("empty/", 0)]
    _, problems = check_dataset(LocalFolder(tmp_path), DatasetRules(), files=files)
    assert problems == []


def test_files_given_by_the_caller_are_used_instead_of_a_new_listing(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)

    class NoListing(LocalFolder):
        def list_files(self) -> list[FileEntry]:
            raise AssertionError("listed twice")

    files = LocalFolder(tmp_path).list_files()
    summary, problems = check_dataset(NoListing(tmp_path), DatasetRules(), files=files, max_workers=1)
    assert summary.total_images == 5 and problems == []


# --- subset folders --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("10_bluebot", (10, "bluebot")),
        ("10_blue_bot", (10, "blue_bot")),  # only the first "_" separates: class tokens keep the rest
        ("1_000_bot", (1, "000_bot")),  # "1_000" is never seen by int(): the split comes first
        ("10", (10, "")),
        ("10_", (10, "")),
        (" 10_bluebot", (10, "bluebot")),  # int() strips whitespace
        ("+5_bluebot", (5, "bluebot")),  # and accepts a sign
        ("010_bluebot", (10, "bluebot")),  # and leading zeros
        ("１０_bluebot", (10, "bluebot")),  # and non-ASCII digits
        ("-1_bluebot", (-1, "bluebot")),
        ("0_bluebot", (0, "bluebot")),
        ("bluebot_10", None),
        ("_bluebot", None),
        ("1.5_bluebot", None),
        ("1e3_bluebot", None),
        ("10 bluebot", None),
        (".ipynb_checkpoints", None),
    ],
)
def test_subset_folder_names_parse_like_sd_scripts(name: str, expected: tuple[int, str] | None) -> None:
    assert parse_subset_folder(name) == expected


def test_folder_without_repeats_is_a_warning_when_other_subsets_remain(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_subset(tmp_path, "bluebot", 2)
    summary, problems = check(tmp_path)
    problem = only(problems, "SUBSET_NO_REPEATS")
    assert problem.severity is Severity.WARNING and problem.file == "bluebot/"
    assert "2 image(s) are not trained" in problem.message
    assert not has_errors(problems)
    assert summary.skipped_folders == ["bluebot/"]


def test_macos_zip_metadata_folder_gets_its_own_fix(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    (tmp_path / "__MACOSX" / "10_bluebot").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "10_bluebot" / "._img00.png").write_bytes(b"\x00\x05\x16\x07")
    problem = only(check(tmp_path)[1], "SUBSET_NO_REPEATS")
    assert problem.fix == "It is metadata that macOS adds to zip files: delete it."
    assert "image(s) are not trained" not in problem.message  # resource forks are not images


def test_zero_repeats_is_reported_although_sd_scripts_is_silent(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_subset(tmp_path, "0_bluebot", 1)
    make_subset(tmp_path, "-2_bluebot", 1)
    _, problems = check(tmp_path)
    assert codes(problems).count("SUBSET_ZERO_REPEATS") == 2
    assert not has_errors(problems)


def test_nothing_usable_is_an_error_naming_the_skipped_folders(tmp_path: Path) -> None:
    make_subset(tmp_path, "bluebot", 2)
    make_subset(tmp_path, "0_bluebot", 1)
    make_image(tmp_path / "loose.png")
    summary, problems = check(tmp_path)
    error = only(problems, "DATASET_NO_SUBSETS")
    assert error.severity is Severity.ERROR and error.file is None
    assert "No data found" in error.message and "0_bluebot/, bluebot/" in error.message
    assert "1 image(s) lie loose" in error.message
    assert summary.total_images == 0


def test_folder_wrapping_the_subsets_gets_a_move_up_fix(tmp_path: Path) -> None:
    make_good_dataset(tmp_path / "mydataset", settings=False)
    _, problems = check(tmp_path)
    problem = only(problems, "SUBSET_NO_REPEATS")
    assert (
        problem.fix is not None
        and "10_bluebot/, 5_bluebot night/" in problem.fix
        and "move them up" in problem.fix
    )


def test_subsets_without_images_are_an_error_when_no_images_remain(tmp_path: Path) -> None:
    write_caption(tmp_path / "10_bluebot" / "a.caption", "bluebot")
    _, problems = check(tmp_path)
    assert "DATASET_NO_IMAGES" in codes(problems)
    assert "SUBSET_NO_IMAGES" not in codes(problems)


def test_empty_subset_is_a_warning_next_to_good_ones(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    (tmp_path / "3_empty").mkdir()
    write_caption(tmp_path / "3_empty" / "notes.md", "todo")
    _, problems = check(tmp_path)
    assert only(problems, "SUBSET_NO_IMAGES").file == "3_empty/"
    assert not has_errors(problems)


def test_sub_folders_of_a_subset_are_reported_and_not_counted(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_subset(tmp_path / "10_bluebot", "extra", 2)
    make_subset(tmp_path / "10_bluebot", "4_closeups", 1)
    summary, problems = check(tmp_path)
    nested = [p for p in problems if p.code == "SUBSET_NESTED_FOLDER"]
    assert [p.file for p in nested] == ["10_bluebot/4_closeups/", "10_bluebot/extra/"]
    assert "2 image(s)" in nested[1].message
    assert nested[0].fix is not None and "move it up into the dataset root" in nested[0].fix
    assert summary.subsets[0].image_count == 3


# --- dataset root ----------------------------------------------------------------------------------------


def test_settings_files_in_the_root_are_left_to_their_modules(tmp_path: Path) -> None:
    make_good_dataset(tmp_path, settings=True)
    _, problems = check(tmp_path)
    assert problems == []


def test_loose_root_images_and_files_are_reported(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "cover.jpg")
    (tmp_path / "Config.toml").write_text("")
    (tmp_path / "README.md").write_text("")
    _, problems = check(tmp_path)
    assert only(problems, "ROOT_IMAGE").severity is Severity.WARNING
    ignored = {p.file: p for p in problems if p.code == "ROOT_FILE_IGNORED"}
    assert set(ignored) == {"Config.toml", "README.md"}
    assert all(p.severity is Severity.INFO for p in ignored.values())
    assert "only config.toml (Kohya settings) and pipeline.toml" in ignored["Config.toml"].message
    assert ignored["Config.toml"].fix is not None and "(lower case)" in ignored["Config.toml"].fix


# --- image names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x.Jpg", "x.jPEG", "x.Png", "x.WebP", "x.Bmp"])
def test_mixed_case_extensions_are_errors_with_the_rename(tmp_path: Path, name: str) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / name)
    summary, problems = check(tmp_path)
    problem = only(problems, "IMAGE_EXTENSION_CASE")
    assert problem.severity is Severity.ERROR and "skips" in problem.message
    assert problem.fix == f"Rename it to x{name[1:].lower()}."
    assert summary.subsets[0].image_count == 3


@pytest.mark.parametrize(("name", "data"), [("x.heic", heic_bytes()), ("x.HEIF", heic_bytes(b"heix"))])
def test_heic_is_an_unsupported_format(tmp_path: Path, name: str, data: bytes) -> None:
    make_good_dataset(tmp_path)
    (tmp_path / "10_bluebot" / name).write_bytes(data)
    problem = only(check(tmp_path)[1], "IMAGE_UNSUPPORTED_FORMAT")
    assert "skips" in problem.message and problem.fix is not None and "x.png" in problem.fix


def test_jfif_is_skipped_by_sd_scripts_and_only_needs_a_rename(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / "download.jfif", fmt="JPEG")
    problem = only(check(tmp_path)[1], "IMAGE_UNSUPPORTED_FORMAT")
    assert problem.fix == "Rename it to download.jpg (the content is already JPEG)."


@pytest.mark.parametrize("name", ["x.tif", "x.TIFF", "x.gif", "x.avif"])
def test_other_formats_sd_scripts_skips_are_errors(tmp_path: Path, name: str) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / name, (64, 64))
    assert only(check(tmp_path)[1], "IMAGE_UNSUPPORTED_FORMAT").severity is Severity.ERROR


def test_hidden_files_are_skipped_by_sd_scripts_and_said_so(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    (tmp_path / "10_bluebot" / "._img00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    summary, problems = check(tmp_path)
    problem = only(problems, "FILE_IGNORED")
    assert "resource fork" in problem.message and problem.severity is Severity.INFO
    assert summary.subsets[0].image_count == 3


def test_other_files_in_a_subset_are_info(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    write_caption(tmp_path / "10_bluebot" / "img00.npz", b"cache")
    assert only(check(tmp_path)[1], "FILE_IGNORED").severity is Severity.INFO


def test_same_name_in_two_formats_is_a_warning(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / "img00.jpg")
    problem = only(check(tmp_path)[1], "IMAGE_SAME_NAME")
    assert problem.file == "10_bluebot/img00.png" and "10_bluebot/img00.caption" in problem.message


# --- image content ---------------------------------------------------------------------------------------


def test_heic_content_behind_a_jpg_name_is_an_error(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    (tmp_path / "10_bluebot" / "phone.jpg").write_bytes(heic_bytes())
    problem = only(check(tmp_path)[1], "IMAGE_CONTENT_MISMATCH")
    assert problem.severity is Severity.ERROR and "is a HEIC file" in problem.message


def test_trainable_content_behind_another_extension_is_a_warning(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    (tmp_path / "10_bluebot" / "img00.png").write_bytes(image_bytes("JPEG"))
    _, problems = check(tmp_path)
    problem = only(problems, "IMAGE_EXTENSION_MISMATCH")
    assert problem.fix == "Rename it to img00.jpg."
    assert not has_errors(problems)


def test_zero_byte_image_is_an_error(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    (tmp_path / "10_bluebot" / "img01.png").write_bytes(b"")
    assert only(check(tmp_path)[1], "IMAGE_EMPTY").severity is Severity.ERROR


def test_garbage_with_an_image_name_is_unreadable(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    (tmp_path / "10_bluebot" / "img01.png").write_text("<html>403 Forbidden</html>")
    assert only(check(tmp_path)[1], "IMAGE_UNREADABLE").severity is Severity.ERROR


def test_storage_failure_is_reported_per_file_not_raised(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)

    class Denied(LocalFolder):
        def read_range(self, path: str, start: int, length: int) -> bytes:
            if path == "10_bluebot/img01.png":
                raise PermissionError("AccessDenied")
            return super().read_range(path, start, length)

        def read_all(self, path: str) -> bytes:
            if path == "10_bluebot/img01.png":
                raise PermissionError("AccessDenied")
            return super().read_all(path)

    _, problems = check_dataset(Denied(tmp_path), DatasetRules())
    problem = only(problems, "IMAGE_UNREADABLE")
    assert problem.file == "10_bluebot/img01.png" and "AccessDenied" in problem.message


@pytest.mark.parametrize("extension", [".png", ".jpg", ".webp", ".bmp"])
def test_truncated_images_are_errors(tmp_path: Path, extension: str) -> None:
    make_good_dataset(tmp_path)
    truncate(make_image(tmp_path / "10_bluebot" / f"cut{extension}", (256, 256)), drop=40)
    problem = only(check(tmp_path)[1], "IMAGE_TRUNCATED")
    assert problem.file == f"10_bluebot/cut{extension}" and problem.severity is Severity.ERROR


def test_decompression_bomb_is_an_error_with_numbers(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    (tmp_path / "10_bluebot" / "huge.png").write_bytes(png_bytes_with_size(10_000, 9_000))
    problem = only(check(tmp_path)[1], "IMAGE_TOO_MANY_PIXELS")
    assert "10000x9000 = 90,000,000 pixels" in problem.message and "89,478,485" in problem.message


def test_exif_rotation_is_a_warning_naming_the_orientation(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / "img00.jpg", (1536, 1024), exif_orientation=6)
    make_image(tmp_path / "10_bluebot" / "img00.png").unlink()
    problem = only(check(tmp_path)[1], "IMAGE_EXIF_ROTATED")
    assert "orientation 6 (rotated 90° clockwise)" in problem.message and "1536x1024" in problem.message


def test_16_bit_greyscale_png_is_an_error(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / "img00.png", mode="I;16")
    problem = only(check(tmp_path)[1], "IMAGE_16BIT_GREYSCALE")
    assert problem.severity is Severity.ERROR and "clips" in problem.message


def test_cmyk_is_a_warning(tmp_path: Path) -> None:
    make_good_dataset(tmp_path, extension=".jpg")
    make_image(tmp_path / "10_bluebot" / "img00.jpg", mode="CMYK")
    assert only(check(tmp_path)[1], "IMAGE_CMYK").severity is Severity.WARNING


@pytest.mark.parametrize(
    ("name", "mode"), [("img00.png", "RGBA"), ("img00.webp", "RGBA"), ("img01.png", "LA")]
)
def test_alpha_is_a_warning_unless_alpha_mask_uses_it(tmp_path: Path, name: str, mode: str) -> None:
    make_good_dataset(tmp_path)
    for existing in (tmp_path / "10_bluebot").glob(f"{Path(name).stem}.*"):
        if existing.suffix != ".caption":
            existing.unlink()
    make_image(tmp_path / "10_bluebot" / name, mode=mode)
    assert only(check(tmp_path)[1], "IMAGE_ALPHA").severity is Severity.WARNING
    assert "IMAGE_ALPHA" not in codes(check(tmp_path, alpha_mask=True)[1])


def test_small_image_is_a_warning_with_the_upscale_factor(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / "img00.png", (512, 512))
    problem = only(check(tmp_path)[1], "IMAGE_TOO_SMALL")
    assert "512x512" in problem.message and "upscales it 2.00x" in problem.message


def test_slightly_small_image_is_within_tolerance(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / "img00.png", (1000, 1000))
    assert "IMAGE_TOO_SMALL" not in codes(check(tmp_path)[1])


def test_image_below_min_bucket_reso_says_so(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / "img00.png", (200, 200))
    problem = only(check(tmp_path, enable_bucket=True)[1], "IMAGE_TOO_SMALL")
    assert "min_bucket_reso 256" in problem.message and "5.12x" in problem.message


def test_small_image_with_bucket_no_upscale_trains_small(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / "img00.png", (512, 512))
    problem = only(check(tmp_path, enable_bucket=True, bucket_no_upscale=True)[1], "IMAGE_TOO_SMALL")
    assert "bucket_no_upscale" in problem.message and "512x512 bucket" in problem.message


# --- captions --------------------------------------------------------------------------------------------


def test_txt_captions_with_the_default_extension_are_errors_with_the_fix(tmp_path: Path) -> None:
    make_subset(tmp_path, "10_bluebot", 2, caption_extension=".txt")
    summary, problems = check(tmp_path)
    wrong = [p for p in problems if p.code == "CAPTION_WRONG_EXTENSION"]
    assert [p.file for p in wrong] == ["10_bluebot/img00.txt", "10_bluebot/img01.txt"]
    assert wrong[0].severity is Severity.ERROR
    assert wrong[0].fix is not None and 'caption_extension = ".txt"' in wrong[0].fix
    assert summary.subsets[0].captioned_image_count == 0


def test_txt_captions_pass_when_configured(tmp_path: Path) -> None:
    make_subset(tmp_path, "10_bluebot", 2, caption_extension=".txt")
    summary, problems = check(tmp_path, caption_extension=".txt")
    assert problems == [] and summary.subsets[0].captioned_image_count == 2


def test_caption_files_when_txt_is_configured_are_errors(tmp_path: Path) -> None:
    make_subset(tmp_path, "10_bluebot", 1)
    problem = only(check(tmp_path, caption_extension=".txt")[1], "CAPTION_WRONG_EXTENSION")
    assert problem.fix is not None and 'caption_extension = ".caption"' in problem.fix


def test_txt_next_to_a_real_caption_is_only_ignored(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    write_caption(tmp_path / "10_bluebot" / "img00.txt", "bluebot")
    problem = only(check(tmp_path)[1], "FILE_IGNORED")
    assert "img00.caption" in problem.message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "is empty"),
        (b"   \n", "blank first line"),
        (b"\nbluebot on the second line", "blank first line"),
    ],
)
def test_empty_captions_are_errors(tmp_path: Path, content: bytes, needle: str) -> None:
    make_good_dataset(tmp_path)
    write_caption(tmp_path / "10_bluebot" / "img00.caption", content)
    problem = only(check(tmp_path)[1], "CAPTION_EMPTY")
    assert problem.severity is Severity.ERROR and needle in problem.message


def test_non_utf8_caption_is_an_error(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    write_caption(tmp_path / "10_bluebot" / "img00.caption", "bluebot in a café".encode("cp1252"))
    problem = only(check(tmp_path)[1], "CAPTION_NOT_UTF8")
    assert problem.severity is Severity.ERROR and "byte 16" in problem.message


def test_multi_line_caption_is_a_warning_unless_wildcards_are_on(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    write_caption(tmp_path / "10_bluebot" / "img00.caption", "bluebot, red\r\nbluebot, blue\n\n")
    problem = only(check(tmp_path)[1], "CAPTION_MULTILINE")
    assert "2 non-blank lines" in problem.message and "'bluebot, red'" in problem.message
    assert check(tmp_path, enable_wildcard=True)[1] == []


def test_old_mac_line_breaks_end_lines_too(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    write_caption(tmp_path / "10_bluebot" / "img00.caption", "bluebot, red\rbluebot, blue")
    assert "2 non-blank lines" in only(check(tmp_path)[1], "CAPTION_MULTILINE").message


def test_wildcard_captions_use_every_non_blank_line(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    write_caption(tmp_path / "10_bluebot" / "img00.caption", "\nbluebot, red\n\nbluebot, blue\n")
    assert "CAPTION_EMPTY" in codes(check(tmp_path)[1])
    assert check(tmp_path, enable_wildcard=True)[1] == []


def test_trailing_newlines_and_crlf_are_one_line(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    write_caption(tmp_path / "10_bluebot" / "img00.caption", "bluebot, red\r\n\r\n")
    assert check(tmp_path)[1] == []


def test_byte_order_mark_is_a_warning(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    write_caption(tmp_path / "10_bluebot" / "img00.caption", "\ufeffbluebot, a robot")
    assert only(check(tmp_path)[1], "CAPTION_BYTE_ORDER_MARK").severity is Severity.WARNING


@pytest.mark.parametrize(
    ("caption", "warns"),
    [
        ("a robot on a beach", True),
        ("bluebots on a beach", True),  # another word to the tokenizer
        ("BlueBot on a beach", False),  # CLIP lower-cases
        ("a photo of bluebot.", False),
    ],
)
def test_caption_without_the_trigger_is_a_warning(tmp_path: Path, caption: str, warns: bool) -> None:
    make_good_dataset(tmp_path)
    write_caption(tmp_path / "10_bluebot" / "img00.caption", caption)
    assert ("CAPTION_NO_TRIGGER" in codes(check(tmp_path)[1])) is warns


def test_folder_without_class_tokens_has_no_trigger_to_check(tmp_path: Path) -> None:
    make_subset(tmp_path, "10", 1, caption="a robot")
    assert check(tmp_path)[1] == []


def test_uncaptioned_image_is_a_warning_naming_what_it_trains_with(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / "new.png")
    make_subset(tmp_path, "2", 1, caption=None)
    _, problems = check(tmp_path)
    missing = [p for p in problems if p.code == "CAPTION_MISSING"]
    assert [p.file for p in missing] == ["10_bluebot/new.png", "2/img00.png"]
    assert "class tokens 'bluebot'" in missing[0].message
    assert "an empty caption" in missing[1].message
    assert not has_errors(problems)


def test_orphan_caption_is_info(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    write_caption(tmp_path / "10_bluebot" / "gone.caption", "bluebot")
    write_caption(tmp_path / "10_bluebot" / "gone2.txt", "bluebot")
    _, problems = check(tmp_path)
    assert [(p.code, p.file) for p in problems] == [
        ("CAPTION_ORPHAN", "10_bluebot/gone.caption"),
        ("CAPTION_ORPHAN", "10_bluebot/gone2.txt"),
    ]
    assert all(p.severity is Severity.INFO for p in problems)


def test_caption_of_a_skipped_image_is_not_called_an_orphan(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    make_image(tmp_path / "10_bluebot" / "x.Jpg")
    write_caption(tmp_path / "10_bluebot" / "x.caption", "bluebot")
    assert codes(check(tmp_path)[1]) == ["IMAGE_EXTENSION_CASE"]


def test_face_crop_names_fall_back_to_the_short_caption_name(tmp_path: Path) -> None:
    make_image(tmp_path / "10_bluebot" / "face_10_20_30_40.png")
    write_caption(tmp_path / "10_bluebot" / "face.caption", "bluebot face")
    assert caption_candidates("10_bluebot/face_10_20_30_40.png", ".caption") == [
        "10_bluebot/face_10_20_30_40.caption",
        "10_bluebot/face.caption",
    ]
    summary, problems = check(tmp_path)
    assert problems == [] and summary.subsets[0].captioned_image_count == 1


def test_face_crop_fallback_can_reach_a_caption_in_the_root(tmp_path: Path) -> None:
    # sd-scripts splits the whole path on "_": the subset folder's own "_" counts as one of the five parts.
    make_image(tmp_path / "10_bluebot" / "a_1_2_3.png")
    write_caption(tmp_path / "10.caption", "bluebot")
    summary, problems = check(tmp_path)
    assert problems == [] and summary.subsets[0].captioned_image_count == 1


# --- rules from the Kohya config -------------------------------------------------------------------------


def test_rules_from_an_effective_kohya_config() -> None:
    rules = DatasetRules.from_kohya_config(
        {
            "resolution": "1024,768",
            "caption_extension": ".txt",
            "enable_bucket": True,
            "min_bucket_reso": 320,
            "max_bucket_reso": 2048,
            "bucket_reso_steps": 32,
            "bucket_no_upscale": True,
            "alpha_mask": True,
            "enable_wildcard": True,
            "learning_rate": 1e-4,
        }
    )
    assert rules == DatasetRules(
        caption_extension=".txt",
        resolution=(1024, 768),
        enable_bucket=True,
        min_bucket_reso=320,
        max_bucket_reso=2048,
        bucket_reso_steps=32,
        bucket_no_upscale=True,
        alpha_mask=True,
        enable_wildcard=True,
    )
    assert DatasetRules.from_kohya_config({}) == DatasetRules()


def test_misspelt_caption_extention_wins_like_in_sd_scripts() -> None:
    rules = DatasetRules.from_kohya_config({"caption_extension": ".caption", "caption_extention": ".txt"})
    assert rules.caption_extension == ".txt"


@pytest.mark.parametrize(
    ("value", "expected"), [("1024", (1024, 1024)), ("1024,768", (1024, 768)), (" 896 , 1152", (896, 1152))]
)
def test_resolution_strings(value: str, expected: tuple[int, int]) -> None:
    assert parse_resolution(value) == expected


@pytest.mark.parametrize("value", ["1024x1024", "1024,768,512", "0", "", None, 1.5])
def test_bad_resolutions_raise(value: object) -> None:
    with pytest.raises(ValueError, match="resolution"):
        parse_resolution(value)


# --- buckets ---------------------------------------------------------------------------------------------


def test_bucket_resolutions_follow_sd_scripts() -> None:
    resolutions = bucket_resolutions(DatasetRules(enable_bucket=True).buckets)
    assert (1024, 1024) in resolutions and (256, 1024) in resolutions and (1024, 256) in resolutions
    assert all(w <= 1024 and h <= 1024 and w % 64 == 0 and h % 64 == 0 for w, h in resolutions)
    wide = bucket_resolutions(DatasetRules(enable_bucket=True, max_bucket_reso=2048).buckets)
    assert (1216, 832) in wide and (2048, 512) in wide


def test_select_bucket_picks_the_closest_aspect_and_scales_to_cover() -> None:
    rules = DatasetRules(enable_bucket=True)
    choice = select_bucket(rules.buckets, 1536, 1024, bucket_resolutions(rules.buckets))
    assert choice.bucket == (1024, 704) and choice.resized == (1056, 704)
    fixed = select_bucket(DatasetRules().buckets, 512, 256, [])
    assert fixed.bucket == (1024, 1024) and fixed.resized == (2048, 1024)
    no_upscale = DatasetRules(enable_bucket=True, bucket_no_upscale=True)
    assert select_bucket(no_upscale.buckets, 500, 300, []).bucket == (448, 256)
    large = select_bucket(no_upscale.buckets, 4000, 3000, [])
    assert large.resized == (1109, 832) and large.bucket == (1088, 832)


# --- reporting -------------------------------------------------------------------------------------------


def test_problems_are_ordered_by_file_with_dataset_level_first(tmp_path: Path) -> None:
    make_subset(tmp_path, "bluebot", 1)
    make_image(tmp_path / "a.png")
    _, problems = check(tmp_path)
    assert [p.file for p in problems] == [None, "a.png", "bluebot/"]


def test_every_emitted_code_is_in_the_catalogue_with_its_severity(tmp_path: Path) -> None:
    make_subset(tmp_path, "bluebot", 1)
    make_subset(tmp_path, "10_x", 1, caption="nothing")
    (tmp_path / "10_x" / "bad.png").write_bytes(b"")
    known = catalogue()
    for problem in check(tmp_path)[1]:
        assert known[problem.code].severity is problem.severity


# --- full decode -------------------------------------------------------------------------------------------


def _garbage_png_stream(path: Path) -> None:
    """Replace the first IDAT chunk's data with garbage and fix its CRC: header, CRCs and IEND stay valid."""
    raw = path.read_bytes()
    start = raw.index(b"IDAT") - 4
    length = int.from_bytes(raw[start : start + 4], "big")
    garbage = bytes((x * 53 + 7) & 0xFF for x in range(length))
    crc = zlib.crc32(b"IDAT" + garbage).to_bytes(4, "big")
    path.write_bytes(raw[: start + 8] + garbage + crc + raw[start + 12 + length :])


def test_pixel_data_pillow_cannot_decode_is_an_error_naming_the_file(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    _garbage_png_stream(make_image(tmp_path / "10_bluebot" / "broken.png", (256, 256)))
    write_caption(tmp_path / "10_bluebot" / "broken.caption", "bluebot")
    problem = only(check(tmp_path)[1], "IMAGE_UNDECODABLE")
    assert problem.file == "10_bluebot/broken.png" and problem.severity is Severity.ERROR
    assert "10_bluebot/broken.png" in problem.message
    # The header pass alone cannot see it.
    _, header_only = check_dataset(LocalFolder(tmp_path), DatasetRules(), decode=False)
    assert "IMAGE_UNDECODABLE" not in codes(header_only) and not has_errors(header_only)


def test_decoding_reads_each_image_once_and_nothing_by_range(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    whole: list[str] = []

    class Counting(LocalFolder):
        def read_range(self, path: str, start: int, length: int) -> bytes:
            raise AssertionError("the decode pass reads whole files")

        def read_all(self, path: str) -> bytes:
            whole.append(path)
            return super().read_all(path)

    summary, problems = check_dataset(Counting(tmp_path), DatasetRules())
    assert problems == []
    images = [p for p in whole if not p.endswith(".caption")]
    assert len(images) == len(set(images)) == summary.total_images


def _full_decode_fails(data: bytes) -> bool:
    """What sd-scripts does in train_util.py load_image: open, convert('RGB')."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.convert("RGB")
    except (OSError, ValueError, SyntaxError):
        return True
    return False


def _corruptions(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(12):
        at = rng.randrange(len(data) // 8, len(data) - 16)
        span = rng.choice([1, 16, 512, 4096])
        kind = rng.choice(["garbage", "zeros", "cut", "drop"])
        if kind == "garbage":
            out.append(data[:at] + bytes(rng.randrange(256) for _ in range(span)) + data[at + span :])
        elif kind == "zeros":
            out.append(data[:at] + bytes(span) + data[at + span :])
        elif kind == "cut":
            out.append(data[:at])
        else:
            out.append(data[:at] + data[at + span :])
    return out


@pytest.mark.parametrize(
    ("fmt", "mode", "options"),
    [
        ("JPEG", "RGB", {}),
        ("JPEG", "RGB", {"progressive": True}),
        ("JPEG", "L", {}),
        ("JPEG", "CMYK", {}),
        ("PNG", "RGB", {}),
        ("PNG", "RGBA", {}),
        ("WEBP", "RGB", {}),
        ("BMP", "RGB", {}),
    ],
)
def test_fast_decode_rejects_exactly_what_a_full_convert_rejects(
    fmt: str, mode: str, options: dict[str, object]
) -> None:
    # JPEG's draft decode must see every fault of the entropy stream that the full decode sees.
    original = image_bytes(fmt, (320, 240), mode, noise=True, **options)
    cases = _corruptions(original, seed=len(fmt) + len(mode) + len(options))
    assert decode_problem(original) is None
    verdicts = [(decode_problem(data) is not None, _full_decode_fails(data)) for data in cases]
    assert [fast for fast, _ in verdicts] == [full for _, full in verdicts]
    assert any(full for _, full in verdicts), "the corpus must hold faults a full decode catches"


def test_a_memory_budget_smaller_than_any_image_still_decodes_each_one_alone(tmp_path: Path) -> None:
    make_good_dataset(tmp_path)
    _garbage_png_stream(make_image(tmp_path / "10_bluebot" / "broken.png", (256, 256)))
    write_caption(tmp_path / "10_bluebot" / "broken.caption", "bluebot")
    _, problems = check_dataset(LocalFolder(tmp_path), DatasetRules(), max_workers=8, decode_memory_bytes=1)
    assert [p.file for p in problems if p.severity is Severity.ERROR] == ["10_bluebot/broken.png"]
    assert only(problems, "IMAGE_UNDECODABLE").file == "10_bluebot/broken.png"
