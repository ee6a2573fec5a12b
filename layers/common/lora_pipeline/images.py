"""Image facts from headers and tails, and the full decode that proves sd-scripts can read the pixels.

The header pass reads a few bytes at known offsets through a `ReadRange` callable: one 64 KiB block at the start of the file
covers almost every header, and a JPEG whose EXIF or ICC profile is longer gets further blocks only
where its segment headers are. The tail check reads the last few KiB.

What is read, per format:
- PNG: IHDR (size, bit depth, colour type), the chunks before IDAT (tRNS transparency, eXIf orientation),
  the IEND chunk in the tail.
- JPEG: the segments up to SOS (SOF size and components, APP1 EXIF orientation, XMP motion-photo hint),
  the end-of-image marker FFD9 in the tail.
- WebP: the RIFF size against the file size, the VP8/VP8L/VP8X header, the EXIF chunk when VP8X says
  there is one.
- BMP: the DIB header and the pixel array size it implies.
- GIF, TIFF, HEIC, AVIF, JPEG XL: recognised by signature so messages can name them; not read further,
  because sd-scripts does not train on them.

`mode` uses Pillow's mode names, because sd-scripts opens every image with Pillow and calls
`convert("RGB")`: that conversion is what drops alpha and mis-converts CMYK.

A valid header says nothing about the compressed pixel data after it: `decode_problem` decodes every
pixel with Pillow, as sd-scripts does when it caches latents (`train_util.py` `load_image`). A JPEG is
decoded in Pillow's draft mode at 1/8 scale: libjpeg still reads and Huffman-decodes the whole entropy
stream (every corrupt or missing byte fails the same way), it only skips most of the inverse DCT and the
colour conversion, which cannot fail. Pillow releases the GIL while it decodes, so threads decode in
parallel.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image

# Pillow's own default `Image.MAX_IMAGE_PIXELS` (1024 * 1024 * 1024 // 4 // 3). sd-scripts decodes every
# image with Pillow: above this Pillow warns of a decompression bomb, above twice this it refuses to open
# the file and training crashes mid-run. Such an image also decodes to over 256 MB of RGB, and SDXL
# trains on buckets of about one megapixel, so it carries nothing a 1-megapixel copy would not.
MAX_IMAGE_PIXELS = 89_478_485

HEAD_BLOCK = 64 * 1024
# A file this small is read whole with its first read: its header and its tail then cost one request, not
# two (over S3 a request costs a ~20 ms round trip, 64 KiB more costs ~1 ms of transfer).
WHOLE_READ_BYTES = 2 * HEAD_BLOCK
# JPEG writers may pad after FFD9 (zero bytes), so the tail window is larger than the end marker.
TAIL_BYTES = 4096

ReadRange = Callable[[int, int], bytes]
"""`read_range(start, length)` returns up to `length` bytes from `start` (fewer at the end of the file)."""


class ImageFormat(StrEnum):
    PNG = "PNG"
    JPEG = "JPEG"
    WEBP = "WebP"
    BMP = "BMP"
    GIF = "GIF"
    TIFF = "TIFF"
    HEIC = "HEIC"
    AVIF = "AVIF"
    JPEG_XL = "JPEG XL"


TRAINABLE_FORMATS = frozenset({ImageFormat.PNG, ImageFormat.JPEG, ImageFormat.WEBP, ImageFormat.BMP})


class ImageFormatError(ValueError):
    """The bytes are not a readable image of the format they claim to be."""


@dataclass(frozen=True)
class ImageHeader:
    format: ImageFormat
    width: int
    height: int
    mode: str
    """Pillow's mode after `Image.open`: RGB, RGBA, L, LA, P, 1, I;16, CMYK."""
    has_alpha: bool
    """An alpha channel or a transparency chunk: `convert("RGB")` drops it."""
    orientation: int = 1
    """EXIF orientation 1..8 (1 = stored upright; invalid values count as 1, as viewers treat them)."""
    expected_size: int | None = None
    """The file size the header implies (WebP RIFF, BMP pixel array); None when the format does not say."""
    has_appended_video: bool = False
    """JPEG motion photo (XMP `MotionPhoto`/`MicroVideo`): a video follows FFD9, the file is still complete."""

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def is_cmyk(self) -> bool:
        return self.mode == "CMYK"


@dataclass(frozen=True)
class ImageInspection:
    header: ImageHeader
    truncation: str | None
    """Why the file looks cut off (missing end marker, shorter than its header says), or None."""

    @property
    def is_decompression_bomb(self) -> bool:
        return is_decompression_bomb(self.header)


def is_decompression_bomb(header: ImageHeader, max_pixels: int = MAX_IMAGE_PIXELS) -> bool:
    return header.pixels > max_pixels


ORIENTATION_MEANING = {
    2: "mirrored horizontally",
    3: "rotated 180°",
    4: "mirrored vertically",
    5: "mirrored and rotated 90° counter-clockwise",
    6: "rotated 90° clockwise",
    7: "mirrored and rotated 90° clockwise",
    8: "rotated 90° counter-clockwise",
}


def identify(head: bytes) -> ImageFormat | None:
    """The format named by the file's first bytes (32 are enough), or None when no signature matches."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ImageFormat.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return ImageFormat.JPEG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ImageFormat.WEBP
    if head.startswith(b"BM"):
        return ImageFormat.BMP
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return ImageFormat.GIF
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ImageFormat.TIFF
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return ImageFormat.JPEG_XL
    if head[4:8] == b"ftyp":
        return _identify_isobmff(head)
    return None


_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}


def _identify_isobmff(head: bytes) -> ImageFormat | None:
    box_size = int.from_bytes(head[0:4], "big")
    brands = {head[8:12]}
    brands.update(head[i : i + 4] for i in range(16, min(box_size, len(head)) - 3, 4))
    if brands & _AVIF_BRANDS:
        return ImageFormat.AVIF
    if brands & _HEIF_BRANDS:
        return ImageFormat.HEIC
    return None


def bytes_reader(data: bytes) -> ReadRange:
    """A `ReadRange` over bytes already in memory (tests, small files)."""
    return lambda start, length: data[start : start + length]


def inspect_image(read_range: ReadRange, size: int) -> ImageInspection:
    """Header facts and the end-marker check of a PNG, JPEG, WebP or BMP file of `size` bytes.

    Raises ImageFormatError when the header is unreadable or the format is not one sd-scripts trains on
    (call `identify` first to name those).
    """
    reader = BlockReader(read_range, size)
    header = read_header(reader)
    return ImageInspection(header=header, truncation=truncation(header, reader.tail(TAIL_BYTES), size))


def inspect_bytes(data: bytes) -> ImageInspection:
    return inspect_image(bytes_reader(data), len(data))


def read_header(reader: BlockReader) -> ImageHeader:
    head = reader.read(0, min(reader.size, 32))
    found = identify(head)
    if found is None:
        raise ImageFormatError("no known image signature in the first bytes")
    parse = _HEADER_PARSERS.get(found)
    if parse is None:
        raise ImageFormatError(
            f"{found} images are recognised but not read (sd-scripts does not train on them)"
        )
    return parse(reader)


def truncation(header: ImageHeader, tail: bytes, size: int) -> str | None:
    """Why a file whose last bytes are `tail` looks incomplete, or None when its end is intact."""
    if header.expected_size is not None and size < header.expected_size:
        return (
            f"the {header.format} header says the file has {header.expected_size:,} bytes "
            f"but it has {size:,} ({header.expected_size - size:,} missing)"
        )
    if header.format is ImageFormat.PNG and _PNG_IEND not in tail:
        return "the PNG does not end with an IEND chunk"
    if header.format is ImageFormat.JPEG and not _jpeg_end_is_intact(header, tail):
        return "the JPEG does not end with the end-of-image marker FFD9"
    return None


# The whole IEND chunk: zero length, type, CRC.
_PNG_IEND = b"\x00\x00\x00\x00IEND\xae\x42\x60\x82"


def _jpeg_end_is_intact(header: ImageHeader, tail: bytes) -> bool:
    if header.has_appended_video or tail.endswith(b"SEFT"):  # Samsung appends a trailer ending in SEFT
        return True
    return tail.rstrip(b"\x00").endswith(b"\xff\xd9")


class BlockReader:
    """Random access to a file through `ReadRange`, fetching and caching HEAD_BLOCK-sized blocks."""

    def __init__(self, read_range: ReadRange, size: int) -> None:
        self._read_range = read_range
        self.size = size
        self._blocks: dict[int, bytes] = {}

    def read(self, start: int, length: int) -> bytes:
        """Exactly `length` bytes from `start`; ImageFormatError when the file ends first."""
        if start < 0 or start + length > self.size:
            raise ImageFormatError(f"the header runs past the end of the file (byte {start + length:,})")
        chunks = []
        position = start
        while position < start + length:
            index, offset = divmod(position, HEAD_BLOCK)
            block = self._block(index)
            piece = block[offset : offset + start + length - position]
            if not piece:
                raise ImageFormatError(f"the file is shorter than its listed size ({self.size:,} bytes)")
            chunks.append(piece)
            position += len(piece)
        return b"".join(chunks)

    def tail(self, length: int) -> bytes:
        """The last `length` bytes (all of a shorter file): from the cached blocks when they hold them,
        otherwise with one exact read rather than a whole block."""
        start = max(0, self.size - length)
        if all(
            index in self._blocks for index in range(start // HEAD_BLOCK, (self.size - 1) // HEAD_BLOCK + 1)
        ):
            return self.read(start, self.size - start)
        data = self._read_range(start, self.size - start)
        if len(data) != self.size - start:
            raise ImageFormatError(f"the file is shorter than its listed size ({self.size:,} bytes)")
        return data

    def _block(self, index: int) -> bytes:
        if index not in self._blocks:
            if self.size <= WHOLE_READ_BYTES:
                data = self._read_range(0, self.size)
                for start in range(0, max(len(data), 1), HEAD_BLOCK):
                    self._blocks[start // HEAD_BLOCK] = data[start : start + HEAD_BLOCK]
            else:
                self._blocks[index] = self._read_range(index * HEAD_BLOCK, HEAD_BLOCK)
        return self._blocks.get(index, b"")


def _u16be(data: bytes, at: int = 0) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def _u32be(data: bytes, at: int = 0) -> int:
    return int.from_bytes(data[at : at + 4], "big")


def _u16le(data: bytes, at: int = 0) -> int:
    return int.from_bytes(data[at : at + 2], "little")


def _u24le(data: bytes, at: int = 0) -> int:
    return int.from_bytes(data[at : at + 3], "little")


def _u32le(data: bytes, at: int = 0) -> int:
    return int.from_bytes(data[at : at + 4], "little")


def exif_orientation(tiff: bytes) -> int:
    """Orientation tag (0x0112) of IFD0 in TIFF-structured EXIF data; 1 when absent or invalid."""
    if tiff[:4] == b"II*\x00":
        endian = "<"
    elif tiff[:4] == b"MM\x00*":
        endian = ">"
    else:
        return 1
    if len(tiff) < 8:
        return 1
    (ifd,) = struct.unpack_from(endian + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(endian + "H", tiff, ifd)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind = struct.unpack_from(endian + "HH", tiff, entry)
        if tag != 0x0112:
            continue
        if kind == 3:  # SHORT
            (value,) = struct.unpack_from(endian + "H", tiff, entry + 8)
        elif kind == 4:  # LONG
            (value,) = struct.unpack_from(endian + "I", tiff, entry + 8)
        else:
            return 1
        return value if 1 <= value <= 8 else 1
    return 1


def _checked_size(fmt: ImageFormat, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageFormatError(f"the {fmt} header gives an impossible size {width}x{height}")


# --- PNG -----------------------------------------------------------------------------------------------

_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
_MAX_CHUNKS = 10_000


def _png_header(reader: BlockReader) -> ImageHeader:
    ihdr = reader.read(8, 8 + 13)
    if ihdr[4:8] != b"IHDR":
        raise ImageFormatError("the PNG does not start with an IHDR chunk")
    width, height = _u32be(ihdr, 8), _u32be(ihdr, 12)
    bit_depth, colour_type = ihdr[16], ihdr[17]
    if colour_type not in _PNG_MODES:
        raise ImageFormatError(f"the PNG has an invalid colour type {colour_type}")
    _checked_size(ImageFormat.PNG, width, height)
    mode = _PNG_MODES[colour_type]
    if colour_type == 0 and bit_depth == 1:
        mode = "1"
    elif colour_type == 0 and bit_depth == 16:
        mode = "I;16"
    has_alpha = colour_type in (4, 6)
    orientation = 1
    position = 8 + 8 + 13 + 4
    for _ in range(_MAX_CHUNKS):
        chunk = reader.read(position, 8)
        length, kind = _u32be(chunk), chunk[4:8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"tRNS":
            has_alpha = True
        elif kind == b"eXIf":
            orientation = exif_orientation(reader.read(position + 8, length))
        position += 12 + length
    else:
        raise ImageFormatError(f"no image data within the first {_MAX_CHUNKS} PNG chunks")
    if kind != b"IDAT":
        raise ImageFormatError("the PNG has no image data (IEND before any IDAT chunk)")
    return ImageHeader(ImageFormat.PNG, width, height, mode, has_alpha, orientation)


# --- JPEG ----------------------------------------------------------------------------------------------

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
_XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
_MAX_SEGMENTS = 10_000


def _jpeg_header(reader: BlockReader) -> ImageHeader:
    size: tuple[int, int, str] | None = None
    orientation: int | None = None
    motion_photo = False
    position = 2
    for _ in range(_MAX_SEGMENTS):
        if reader.read(position, 1) != b"\xff":
            raise ImageFormatError(f"the JPEG has no segment marker at byte {position:,}")
        while reader.read(position + 1, 1) == b"\xff":  # fill bytes
            position += 1
        marker = reader.read(position + 1, 1)[0]
        position += 2
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: the header is over
            break
        length = _u16be(reader.read(position, 2))
        if length < 2:
            raise ImageFormatError(
                f"the JPEG has a segment of impossible length {length} at byte {position:,}"
            )
        if marker in _JPEG_SOF:
            frame = reader.read(position + 2, 6)
            components = frame[5]
            if components not in _JPEG_MODES:
                raise ImageFormatError(
                    f"the JPEG has {components} colour components (Pillow reads 1, 3 or 4)"
                )
            size = (_u16be(frame, 3), _u16be(frame, 1), _JPEG_MODES[components])
        elif marker == 0xE1:
            data = reader.read(position + 2, length - 2)
            if data.startswith(b"Exif\x00\x00") and orientation is None:
                orientation = exif_orientation(data[6:])
            elif data.startswith(_XMP_PREFIX):
                motion_photo = motion_photo or b"MotionPhoto" in data or b"MicroVideo" in data
        position += length
    else:
        raise ImageFormatError(f"no image data within the first {_MAX_SEGMENTS} JPEG segments")
    if size is None:
        raise ImageFormatError("the JPEG has no frame header (SOF) before its image data")
    width, height, mode = size
    _checked_size(ImageFormat.JPEG, width, height)
    return ImageHeader(
        ImageFormat.JPEG,
        width,
        height,
        mode,
        has_alpha=False,
        orientation=orientation or 1,
        has_appended_video=motion_photo,
    )


# --- WebP ----------------------------------------------------------------------------------------------

_VP8X_ALPHA = 0x10
_VP8X_EXIF = 0x08


def _webp_header(reader: BlockReader) -> ImageHeader:
    expected_size = _u32le(reader.read(4, 4)) + 8
    first = reader.read(12, 8)
    kind = first[:4]
    orientation = 1
    if kind == b"VP8 ":
        frame = reader.read(20, 10)
        if frame[3:6] != b"\x9d\x01\x2a":
            raise ImageFormatError("the WebP VP8 frame has no start code")
        width, height = _u16le(frame, 6) & 0x3FFF, _u16le(frame, 8) & 0x3FFF
        has_alpha = False
    elif kind == b"VP8L":
        data = reader.read(20, 5)
        if data[0] != 0x2F:
            raise ImageFormatError("the WebP VP8L stream has no signature byte")
        bits = _u32le(data, 1)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        has_alpha = bool((bits >> 28) & 1)
    elif kind == b"VP8X":
        data = reader.read(20, 10)
        flags = data[0]
        width, height = _u24le(data, 4) + 1, _u24le(data, 7) + 1
        has_alpha = bool(flags & _VP8X_ALPHA)
        if flags & _VP8X_EXIF:
            orientation = _webp_exif_orientation(reader, min(expected_size, reader.size))
    else:
        raise ImageFormatError(f"the WebP starts with an unknown chunk {kind!r}")
    _checked_size(ImageFormat.WEBP, width, height)
    mode = "RGBA" if has_alpha else "RGB"
    return ImageHeader(ImageFormat.WEBP, width, height, mode, has_alpha, orientation, expected_size)


def _webp_exif_orientation(reader: BlockReader, end: int) -> int:
    # The EXIF chunk usually follows the image data: hop from chunk header to chunk header.
    position = 12
    while position + 8 <= end:
        chunk = reader.read(position, 8)
        length = _u32le(chunk, 4)
        if chunk[:4] == b"EXIF":
            data = reader.read(position + 8, min(length, end - position - 8))
            return exif_orientation(data[6:] if data.startswith(b"Exif\x00\x00") else data)
        position += 8 + length + (length & 1)
    return 1


# --- BMP -----------------------------------------------------------------------------------------------

_BI_RGB, _BI_RLE8, _BI_RLE4, _BI_BITFIELDS, _BI_JPEG, _BI_PNG, _BI_ALPHABITFIELDS = range(7)


def _bmp_header(reader: BlockReader) -> ImageHeader:
    file_header = reader.read(0, 18)
    pixel_offset, dib_size = _u32le(file_header, 10), _u32le(file_header, 14)
    if dib_size == 12:
        core = reader.read(18, 8)
        width, height, bits = _u16le(core, 0), _u16le(core, 2), _u16le(core, 6)
        compression, image_size, alpha_mask = _BI_RGB, 0, 0
    elif dib_size >= 40:
        info = reader.read(18, min(dib_size, 56) - 4)
        width, height = struct.unpack_from("<ii", info, 0)
        bits, compression, image_size = _u16le(info, 10), _u32le(info, 12), _u32le(info, 16)
        alpha_mask = _u32le(info, 48) if dib_size >= 56 else 0
    else:
        raise ImageFormatError(f"the BMP has an unknown header size {dib_size}")
    height = abs(height)  # negative height: rows stored top-down
    _checked_size(ImageFormat.BMP, width, height)
    if compression in (_BI_JPEG, _BI_PNG):
        raise ImageFormatError("the BMP embeds JPEG/PNG data, which Pillow cannot read")
    if compression in (_BI_RGB, _BI_BITFIELDS, _BI_ALPHABITFIELDS):
        expected_size: int | None = pixel_offset + (width * bits + 31) // 32 * 4 * height
    else:
        expected_size = pixel_offset + image_size if image_size else None
    has_alpha = bits == 32 and compression in (_BI_BITFIELDS, _BI_ALPHABITFIELDS) and alpha_mask != 0
    mode = "RGBA" if has_alpha else ("RGB" if bits > 8 else "P")
    return ImageHeader(ImageFormat.BMP, width, height, mode, has_alpha, expected_size=expected_size)


_HEADER_PARSERS: dict[ImageFormat, Callable[[BlockReader], ImageHeader]] = {
    ImageFormat.PNG: _png_header,
    ImageFormat.JPEG: _jpeg_header,
    ImageFormat.WEBP: _webp_header,
    ImageFormat.BMP: _bmp_header,
}


# --- full decode -----------------------------------------------------------------------------------------

# 1/8 is the smallest scale libjpeg's DCT scaling offers.
_JPEG_DRAFT_SCALE = 8


def decode_problem(data: bytes) -> str | None:
    """Why Pillow cannot decode every pixel of the image file `data` the way sd-scripts does
    (`train_util.py` `load_image`: `Image.open`, then `convert("RGB")` unless the mode is RGB), or None.

    Call it only for files whose header pass found nothing and whose size is below MAX_IMAGE_PIXELS:
    Pillow refuses to open larger ones. Decoding needs about width x height x 4 bytes (a JPEG 1/64 of that).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format == "JPEG":
                    width, height = image.size
                    image.draft(image.mode, (-(-width // _JPEG_DRAFT_SCALE), -(-height // _JPEG_DRAFT_SCALE)))
                    image.load()
                elif image.mode == "RGB":
                    image.load()
                else:
                    image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # Pillow raises OSError for broken data ("broken data stream", "image file is truncated"),
        # ValueError/SyntaxError from some format plugins.
        return f"{type(error).__name__}: {error}"
    return None
