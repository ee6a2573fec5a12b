"""Header-only image facts: every answer is checked against what Pillow itself reads from the same bytes."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from lora_pipeline.images import (
    HEAD_BLOCK,
    MAX_IMAGE_PIXELS,
    TAIL_BYTES,
    ImageFormat,
    ImageFormatError,
    exif_orientation,
    identify,
    inspect_bytes,
    inspect_image,
)
from tests.corpus import (
    bmp_bytes_with_alpha,
    heic_bytes,
    image_bytes,
    jpeg_with_long_header,
    jpeg_with_xmp,
    jxl_bytes,
    png_bytes_with_size,
)

TRAINABLE_CASES = [
    ("PNG", "RGB", {}),
    ("PNG", "RGBA", {}),
    ("PNG", "L", {}),
    ("PNG", "LA", {}),
    ("PNG", "P", {}),
    ("PNG", "P", {"transparency": 0}),
    ("PNG", "1", {}),
    ("PNG", "I;16", {}),
    ("JPEG", "RGB", {}),
    ("JPEG", "L", {}),
    ("JPEG", "CMYK", {}),
    ("JPEG", "RGB", {"progressive": True}),
    ("WEBP", "RGB", {}),
    ("WEBP", "RGBA", {}),
    ("WEBP", "RGB", {"lossless": True}),
    ("WEBP", "RGBA", {"lossless": True}),
    ("BMP", "RGB", {}),
    ("BMP", "RGBA", {}),
    ("BMP", "L", {}),
]


@pytest.mark.parametrize(("fmt", "mode", "options"), TRAINABLE_CASES)
def test_header_matches_pillow(fmt: str, mode: str, options: dict[str, object]) -> None:
    data = image_bytes(fmt, (300, 200), mode, **options)
    header = inspect_bytes(data).header
    with Image.open(io.BytesIO(data)) as image:
        assert (header.width, header.height) == image.size == (300, 200)
        assert header.has_alpha == ("A" in image.mode or "transparency" in image.info)
        if fmt != "BMP":  # Pillow turns paletted BMPs into L or 1 depending on the palette
            assert header.mode == image.mode
    assert inspect_bytes(data).truncation is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (image_bytes("PNG", (8, 8)), ImageFormat.PNG),
        (image_bytes("JPEG", (8, 8)), ImageFormat.JPEG),
        (image_bytes("WEBP", (8, 8)), ImageFormat.WEBP),
        (image_bytes("BMP", (8, 8)), ImageFormat.BMP),
        (image_bytes("GIF", (8, 8)), ImageFormat.GIF),
        (image_bytes("TIFF", (8, 8)), ImageFormat.TIFF),
        (image_bytes("AVIF", (8, 8)), ImageFormat.AVIF),
        (heic_bytes(b"heic"), ImageFormat.HEIC),
        (heic_bytes(b"mif1"), ImageFormat.HEIC),
        (jxl_bytes(), ImageFormat.JPEG_XL),
        (b"just some text, not an image at all", None),
        (b"", None),
    ],
)
def test_identify_names_formats_by_signature(data: bytes, expected: ImageFormat | None) -> None:
    assert identify(data[:32]) == expected


@pytest.mark.parametrize("data", [image_bytes("GIF", (8, 8)), heic_bytes(), image_bytes("TIFF", (8, 8))])
def test_formats_sd_scripts_does_not_train_on_are_not_read(data: bytes) -> None:
    with pytest.raises(ImageFormatError, match="not read"):
        inspect_bytes(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_matches_pillow(fmt: str, orientation: int) -> None:
    data = image_bytes(fmt, (64, 48), exif_orientation=orientation)
    with Image.open(io.BytesIO(data)) as image:
        assert image.getexif().get(0x0112) == orientation
    assert inspect_bytes(data).header.orientation == orientation


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_no_exif_means_upright(fmt: str) -> None:
    assert inspect_bytes(image_bytes(fmt, (64, 48))).header.orientation == 1


def test_invalid_orientation_values_count_as_upright() -> None:
    assert inspect_bytes(image_bytes("JPEG", (64, 48), exif_orientation=9)).header.orientation == 1
    assert exif_orientation(b"not tiff data") == 1
    assert exif_orientation(b"II*\x00\xff\xff\x00\x00") == 1  # IFD offset past the end


def test_jpeg_header_longer_than_the_first_block_is_followed() -> None:
    jpeg = image_bytes("JPEG", (1024, 768), exif_orientation=6, noise=True, quality=95)
    data = jpeg_with_long_header(jpeg, padding=300_000)
    reads: list[tuple[int, int]] = []

    def read_range(start: int, length: int) -> bytes:
        reads.append((start, length))
        return data[start : start + length]

    inspection = inspect_image(read_range, len(data))
    assert (inspection.header.width, inspection.header.height, inspection.header.orientation) == (
        1024,
        768,
        6,
    )
    assert inspection.truncation is None
    # The header's blocks once each, then the tail: the image data in between is never fetched.
    assert len(reads) == len(set(reads)) == 300_000 // HEAD_BLOCK + 2
    assert reads[-1] == (len(data) - TAIL_BYTES, TAIL_BYTES)
    assert len(data) // HEAD_BLOCK > len(reads) + 5


def test_only_the_head_and_tail_blocks_of_a_large_image_are_read() -> None:
    data = image_bytes("JPEG", (2048, 2048), noise=True, quality=95)
    assert len(data) > 8 * HEAD_BLOCK
    fetched = 0

    def read_range(start: int, length: int) -> bytes:
        nonlocal fetched
        chunk = data[start : start + length]
        fetched += len(chunk)
        return chunk

    inspect_image(read_range, len(data))
    assert fetched == HEAD_BLOCK + TAIL_BYTES


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_cut_off_files_are_truncated(fmt: str) -> None:
    data = image_bytes(fmt, (256, 256), noise=True)
    cut = inspect_bytes(data[:-50]).truncation
    assert cut is not None
    with pytest.raises(OSError), Image.open(io.BytesIO(data[:-50])) as image:
        image.load()  # the check agrees with Pillow: these files cannot be decoded


def test_truncation_message_gives_the_numbers_for_riff() -> None:
    data = image_bytes("WEBP", (256, 256), noise=True)
    message = inspect_bytes(data[:-50]).truncation
    assert message is not None and f"{len(data):,} bytes" in message and "50 missing" in message


def test_jpeg_padding_after_the_end_marker_is_not_truncation() -> None:
    data = image_bytes("JPEG", (64, 64)) + b"\x00" * 300
    assert inspect_bytes(data).truncation is None


def test_jpeg_with_unexplained_bytes_after_the_end_marker_is_reported() -> None:
    data = image_bytes("JPEG", (64, 64)) + b"trailing junk"
    assert "FFD9" in (inspect_bytes(data).truncation or "")


def test_samsung_trailer_after_the_end_marker_is_complete() -> None:
    data = image_bytes("JPEG", (64, 64)) + b"\x00" * 20 + b"Image_UTC_Data1700000000000SEFHSEFT"
    assert inspect_bytes(data).truncation is None


def test_motion_photo_with_appended_video_is_complete() -> None:
    jpeg = jpeg_with_xmp(image_bytes("JPEG", (64, 64)), b'<x:xmpmeta GCamera:MotionPhoto="1"/>')
    inspection = inspect_bytes(jpeg + b"\x00\x00\x00\x18ftypmp42 ...video data...")
    assert inspection.header.has_appended_video
    assert inspection.truncation is None


def test_pixel_limit_is_pillows_default() -> None:
    assert MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485


def test_decompression_bomb_is_detected_from_the_header() -> None:
    bomb = png_bytes_with_size(10_000, 9_000)
    assert len(bomb) < 200_000  # 90 megapixels in a small file: only the header tells
    inspection = inspect_bytes(bomb)
    assert inspection.header.pixels == 90_000_000
    assert inspection.is_decompression_bomb
    assert not inspect_bytes(png_bytes_with_size(9_000, 9_000)).is_decompression_bomb


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,  # no IHDR
        image_bytes("JPEG", (64, 64))[:120],  # header cut before the frame header
        b"RIFF\x10\x00\x00\x00WEBPXXXX\x00\x00\x00\x00" + b"\x00" * 16,  # unknown first chunk
        b"BM" + b"\x00" * 12 + b"\x07\x00\x00\x00" + b"\x00" * 40,  # unknown BMP header size
        b"nothing recognisable here",
    ],
)
def test_corrupt_headers_raise_format_errors(data: bytes) -> None:
    with pytest.raises(ImageFormatError):
        inspect_bytes(data)


def test_zero_sized_dimensions_are_rejected() -> None:
    data = bytearray(image_bytes("PNG", (8, 8)))
    data[16:20] = b"\x00\x00\x00\x00"  # IHDR width = 0
    with pytest.raises(ImageFormatError, match="impossible size"):
        inspect_bytes(bytes(data))


@pytest.mark.parametrize("top_down", [False, True])
def test_bmp_alpha_bit_mask_and_row_order_match_pillow(top_down: bool) -> None:
    data = bmp_bytes_with_alpha(5, 3, top_down)
    inspection = inspect_bytes(data)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGBA" == inspection.header.mode
        assert image.size == (inspection.header.width, inspection.header.height) == (5, 3)
    assert inspection.header.has_alpha and inspection.truncation is None


def test_endless_jpeg_segments_stop_with_an_error() -> None:
    comments = b"\xff\xfe\x00\x02" * 10_001
    with pytest.raises(ImageFormatError, match="10000 JPEG segments"):
        inspect_bytes(b"\xff\xd8" + comments + image_bytes("JPEG", (8, 8))[2:])


def test_endless_png_chunks_stop_with_an_error() -> None:
    png = image_bytes("PNG", (8, 8))
    text_chunks = b"\x00\x00\x00\x00tEXt\x00\x00\x00\x00" * 10_001
    with pytest.raises(ImageFormatError, match="10000 PNG chunks"):
        inspect_bytes(png[:33] + text_chunks + png[33:])
