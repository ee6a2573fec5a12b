"""Builders for test datasets: Pillow-made images, captions and folders written into a tmp_path.

Nothing here is a stored binary: every image is generated when a test runs. The few formats Pillow
cannot write (HEIC, JPEG XL) and the structural oddities Pillow never produces (a 90-megapixel PNG that
compresses to kilobytes, a JPEG header longer than 64 KiB) are assembled byte by byte below.

    make_image(path, size=(1024, 1024), mode="RGB", exif_orientation=None)   # format from the extension
    write_caption(path, "bluebot, a robot")                                   # str (UTF-8) or raw bytes
    make_good_dataset(root)                                                   # two captioned subsets + settings
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

EXTENSION_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".avif": "AVIF",
}
_FILL = {
    "RGB": (90, 140, 200),
    "RGBA": (90, 140, 200, 128),
    "L": 128,
    "LA": (128, 100),
    "CMYK": (10, 20, 30, 0),
}


def image_bytes(
    fmt: str,
    size: tuple[int, int] = (1024, 1024),
    mode: str = "RGB",
    exif_orientation: int | None = None,
    noise: bool = False,
    **save_options: object,
) -> bytes:
    """An image encoded by Pillow. `noise` gives realistic (poorly compressible) file sizes."""
    return _encoded(fmt, size, mode, exif_orientation, noise, tuple(sorted(save_options.items())))


@functools.cache
def _encoded(
    fmt: str,
    size: tuple[int, int],
    mode: str,
    exif_orientation: int | None,
    noise: bool,
    options: tuple[tuple[str, object], ...],
) -> bytes:
    # Cached: the same 1024px image is written hundreds of times across the tests.
    save_options = dict(options)
    if noise:
        image = Image.frombytes("RGB", size, _noise_bytes(size[0] * size[1] * 3)).convert(mode)
    else:
        image = Image.new(mode, size, _FILL.get(mode, 0))
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        save_options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_options)
    return buffer.getvalue()


def _noise_bytes(length: int) -> bytes:
    # Deterministic and fast: a repeated pseudo-random block of prime length, so rows do not line up.
    block = bytes((i * 2654435761 >> 13) & 0xFF for i in range(65_521))
    return (block * (length // len(block) + 1))[:length]


def make_image(
    path: Path,
    size: tuple[int, int] = (1024, 1024),
    fmt: str | None = None,
    mode: str = "RGB",
    exif_orientation: int | None = None,
    **save_options: object,
) -> Path:
    """Write an image; `fmt` defaults to the format its extension names (any case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or EXTENSION_FORMATS[path.suffix.lower()]
    path.write_bytes(image_bytes(fmt, size, mode, exif_orientation, **save_options))
    return path


def write_caption(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def make_subset(
    root: Path,
    folder: str,
    count: int = 3,
    extension: str = ".png",
    size: tuple[int, int] = (1024, 1024),
    caption: str | None = "{tokens}, a photo",
    caption_extension: str = ".caption",
) -> list[Path]:
    """`count` images named img00<extension>..., each with a caption (`{tokens}` = the folder's class tokens)."""
    tokens = folder.split("_", 1)[1] if "_" in folder else ""
    images = []
    for index in range(count):
        image = make_image(root / folder / f"img{index:02d}{extension}", size)
        if caption is not None:
            write_caption(image.with_suffix(caption_extension), caption.format(tokens=tokens))
        images.append(image)
    return images


def make_good_dataset(
    root: Path,
    subsets: Mapping[str, int] | None = None,
    extension: str = ".png",
    size: tuple[int, int] = (1024, 1024),
    settings: bool = True,
) -> Path:
    """A dataset sd-scripts trains without surprises: captioned subsets with the trigger in every caption,
    plus the settings files the pipeline reads (`config.toml`, `pipeline.toml`, `_READY`)."""
    for folder, count in (subsets or {"10_bluebot": 3, "5_bluebot night": 2}).items():
        make_subset(root, folder, count, extension, size)
    if settings:
        (root / "config.toml").write_text('resolution = "1024,1024"\n')
        (root / "pipeline.toml").write_text("spot = true\n")
        (root / "_READY").write_text("")
    return root


def truncate(path: Path, drop: int = 100) -> Path:
    """Cut the last `drop` bytes, as an interrupted upload would."""
    data = path.read_bytes()
    path.write_bytes(data[:-drop])
    return path


def heic_bytes(brand: bytes = b"heic") -> bytes:
    """The start of an ISO-BMFF HEIF file (an `ftyp` box and a few padding bytes): enough to be identified."""
    ftyp = b"ftyp" + brand + b"\x00\x00\x00\x00" + b"mif1" + brand
    return struct.pack(">I", len(ftyp) + 4) + ftyp + b"\x00" * 64


def jxl_bytes() -> bytes:
    """A bare JPEG XL codestream signature followed by padding."""
    return b"\xff\x0a" + b"\x00" * 64


def png_bytes_with_size(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of any size, compressed to kilobytes: a decompression bomb when large."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    compressed = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", compressed) + chunk(b"IEND", b"")


def jpeg_with_long_header(jpeg: bytes, padding: int) -> bytes:
    """Insert APP15 segments worth `padding` bytes right after SOI, pushing EXIF and SOF past the first
    64 KiB, as a large embedded ICC profile or XMP packet does."""
    segments = []
    while padding > 0:
        length = min(padding, 65_533)
        segments.append(b"\xff\xef" + struct.pack(">H", length + 2) + b"\x00" * length)
        padding -= length
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def jpeg_with_xmp(jpeg: bytes, xmp: bytes) -> bytes:
    """Insert an XMP APP1 segment after SOI."""
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def bmp_bytes_with_alpha(width: int, height: int, top_down: bool = False) -> bytes:
    """A 32-bit BMP v5 with an alpha bit mask (Pillow reads it as RGBA but only writes alpha-less BMPs);
    `top_down` stores the rows first to last, which a BMP says with a negative height."""
    pixels = b"\x40\x80\xc0\x80" * width * height
    stored_height = -height if top_down else height
    dib = struct.pack("<IiiHHIIiiII", 124, width, stored_height, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
    dib += struct.pack("<IIIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000, 0x73524742)
    dib += b"\x00" * (124 - len(dib))
    offset = 14 + len(dib)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + dib + pixels


def zip_of(folder: Path, archive: Path, top: str | None) -> Path:
    """`folder` zipped as macOS's Finder does: under a top folder (or at the root), with __MACOSX and
    AppleDouble `._` companions."""
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder).as_posix()
            inside = f"{top}/{name}" if top else name
            if path.is_dir():
                zipped.writestr(inside + "/", b"")
                continue
            zipped.write(path, inside)
            companion = Path(inside).with_name("._" + path.name).as_posix()
            zipped.writestr(f"__MACOSX/{companion}", b"\x00\x05\x16\x07 AppleDouble")
            zipped.writestr(companion, b"\x00\x05\x16\x07 AppleDouble")
    return archive
