"""Stream the LoRA out of SageMaker's `model.tar.gz` with bounded memory, checking everything on the way.

The archive is read once, front to back, from a non-seekable stream (an S3 GET body); the chosen
`.safetensors` member goes to a `ModelSink` in chunks while its sha256 is computed and the LoRA is judged
(`safetensors_lora.check_lora_stream`: header, SDXL identity, every tensor's numbers).
Memory stays at a few chunks whatever the archive size: gzip output is produced at most one chunk at a
time (tarfile's own gzip layer would inflate a whole 1 MB compressed read at once, up to ~1 GB of zeros).

Besides the LoRA, the training container leaves in the archive what is published with it (all optional):
the per-epoch LoRAs `epochs/<output_name>-<NNNNNN>.safetensors` (checked like the LoRA, written to the
epoch sink), sample images under `samples/` (written to the sample sink, and kept in memory for the run
report). They are made visible only when the whole archive was read without error.

Accepted: gzip-compressed or plain tar, and one level of archive inside the archive (SageMaker wraps what
the container left in /opt/ml/model, which may itself be a model.tar.gz). Refused with a
`ModelArchiveError` naming the member and the fix: absolute or `..` paths, links and device files,
members or totals above `UnpackLimits`, no `.safetensors`, several without `output_name` choosing one,
and a `.safetensors` that is not a trained SDXL LoRA (NaN/Inf weights, every lora_up zero).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from lora_pipeline.safetensors_lora import (
    Architecture,
    ByteReader,
    LoraCheck,
    LoraSummary,
    check_lora_stream,
    read_exact,
)

GIB = 1024**3
CHUNK_BYTES = 1024 * 1024
_EXTENDED_HEADER_LIMIT = 1024 * 1024
# A member needs at most a pax header, a GNU long name and a GNU long link name (plus a global pax header).
_MAX_EXTENDED_HEADERS = 4
_NESTED_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SAMPLES_FOLDER = "samples"
EPOCHS_FOLDER = "epochs"
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_OTHER_COMPRESSIONS = {b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


@dataclass(frozen=True)
class UnpackLimits:
    """Upper bounds that make a wrong or hostile archive fail fast instead of filling a Lambda.

    An SDXL LoRA is about 29 MB at rank 4 in fp16 and 3.5 GB at rank 256 in fp32, so 4 GiB per member
    admits every real LoRA; 8 GiB in total bounds the work a wrong archive can cause (the Lambda gives up
    after 15 minutes anyway). `max_nesting` is how deep archives inside the archive are opened.
    """

    max_member_bytes: int = 4 * GIB
    max_total_bytes: int = 8 * GIB
    max_members: int = 10_000
    max_nesting: int = 1
    max_sample_bytes: int = 256 * 1024 * 1024
    """Sample images are held in memory until the end (and embedded in the report); later ones are skipped."""


class ModelArchiveError(ValueError):
    """The archive cannot give a LoRA. `member` is the archive path at fault (None for the whole archive)."""

    def __init__(
        self, problem: str, fix: str, member: str | None = None, lora: LoraCheck | None = None
    ) -> None:
        self.problem = problem
        self.fix = fix
        self.member = member
        self.lora = lora
        """The verdict on the member when it was read as a LoRA and refused."""
        where = f"model archive member {member!r}" if member else "model archive"
        super().__init__(f"{where}: {problem}. {fix}")


class ModelWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Make the written file visible under its name."""
        ...

    def abort(self) -> None:
        """Discard everything written; the name stays as it was."""
        ...


class ModelSink(Protocol):
    def open(self, name: str) -> ModelWriter:
        """A writer for the plain file name `name` (no folders)."""
        ...


def check_file_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a plain file name")
    return name


class LocalFolderSink:
    """Writes into a folder; the file appears under its name only when the writer is closed."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    def open(self, name: str) -> _LocalFileWriter:
        return _LocalFileWriter(self.folder / check_file_name(name))


class DiscardSink:
    """Keeps nothing: for checking an archive without writing its LoRA anywhere (`lora-pipeline inspect`)."""

    def open(self, name: str) -> _DiscardWriter:
        return _DiscardWriter()


class _DiscardWriter:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _LocalFileWriter:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._partial = path.with_name(f".{path.name}.partial")
        self._file = open(self._partial, "wb")  # noqa: SIM115 - closed by close() or abort()

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def close(self) -> None:
        self._file.close()
        os.replace(self._partial, self._path)

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


class EpochLora(BaseModel):
    """A per-epoch LoRA published next to the final one."""

    model_config = ConfigDict(frozen=True)

    name: str
    epoch: int
    size: int
    sha256: str


class UnpackResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    """File name written to the sink."""
    size: int
    sha256: str
    member: str
    """Where it was in the archive; `outer.tar.gz!/inner` for a nested archive."""
    summary: LoraSummary
    metadata: dict[str, str]
    alphas: list[float] = []
    """The distinct `alpha` values stored in the modules."""
    epochs: list[EpochLora] = []
    """The per-epoch LoRAs written next to the LoRA, by epoch."""
    samples: dict[str, bytes] = {}
    """Sample image name -> its bytes, by name, as written to the sample sink."""
    samples_skipped: int = 0


def unpack_model_archive(
    source: ByteReader,
    sink: ModelSink,
    *,
    output_name: str | None = None,
    epoch_sink: ModelSink | None = None,
    sample_sink: ModelSink | None = None,
    limits: UnpackLimits | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    architecture: Architecture = Architecture.SDXL,
) -> UnpackResult:
    """Find the LoRA in the archive read from `source` and write it to `sink` as `<output_name>.safetensors`.

    With `output_name`, a member named `<output_name>.safetensors` is preferred over other `.safetensors`
    (sd-scripts' epoch saves are `<output_name>-000001.safetensors`); without it the single `.safetensors`
    keeps its own name. `architecture` is what the run trained (`Architecture.for_trainer`). Nothing is
    left in the sink when this raises.
    """
    if output_name is not None:
        check_file_name(output_name)
    unpacker = _Unpacker(
        sink, output_name, limits or UnpackLimits(), chunk_bytes, architecture, epoch_sink, sample_sink
    )
    try:
        unpacker.scan(source, "model archive", prefix="", depth=0)
        return unpacker.finish()
    except BaseException:
        unpacker.abort()
        raise


def read_member(
    source: ByteReader, name: str, max_bytes: int, chunk_bytes: int = CHUNK_BYTES
) -> bytes | None:
    """The bytes of the top-level member `name` of a (gzip'd) tar read once from `source`; None when it is
    missing or larger than `max_bytes`. Used for small files of SageMaker's output.tar.gz."""
    try:
        archive = _open_tar(source, chunk_bytes, "output archive")
        for member in archive:
            if member.isfile() and member.name.removeprefix("./") == name:
                reader = archive.extractfile(member)
                return reader.read() if reader is not None and member.size <= max_bytes else None
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise ModelArchiveError(f"the archive is truncated or corrupt ({error})", "Re-run the job") from error
    return None


def _open_tar(stream: ByteReader, chunk_bytes: int, what: str) -> _StreamedTar:
    magic = read_exact(stream, 4)
    if not magic:
        raise ModelArchiveError(f"{what} is empty", "The training job wrote nothing; see its logs")
    for prefix, name in _OTHER_COMPRESSIONS.items():
        if magic.startswith(prefix):
            raise ModelArchiveError(
                f"{what} is {name}-compressed",
                "SageMaker writes gzip: repack it with `tar czf model.tar.gz ...`",
            )
    plain: io.RawIOBase = _PrefixedStream(magic, stream)
    if magic.startswith(b"\x1f\x8b"):
        plain = _GunzipStream(plain, chunk_bytes)
    return _StreamedTar(plain, chunk_bytes)


class _StreamedTar:
    """A tar read once, front to back, through `_ExtendedHeaderGuard`, keeping no member it has returned."""

    def __init__(self, plain: io.RawIOBase, chunk_bytes: int) -> None:
        self._guard = _ExtendedHeaderGuard(plain)
        # Nothing to close: the stream belongs to the caller and a read-mode TarFile writes nothing.
        self._archive = tarfile.open(fileobj=self._guard, mode="r|", bufsize=chunk_bytes)  # noqa: SIM115

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        for member in self._archive:
            self._guard.member_read(member)
            yield member
            # A streamed TarFile still lists every member it has read in its `members` attribute (not in
            # typeshed, set by TarFile.__init__ since Python 2): drop them.
            self._archive.members.clear()  # type: ignore[attr-defined]

    def extractfile(self, member: tarfile.TarInfo) -> ByteReader | None:
        return self._archive.extractfile(member)


class _PrefixedStream(io.RawIOBase):
    """`prefix` followed by the rest of `stream` (puts back the bytes read to sniff the format)."""

    def __init__(self, prefix: bytes, stream: ByteReader) -> None:
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._prefix[: len(buffer)] or self._stream.read(len(buffer))
        self._prefix = self._prefix[len(data) :]
        buffer[: len(data)] = data
        return len(data)


class _GunzipStream(io.RawIOBase):
    """gzip decompression that never returns more than the caller asked for (multi-member gzip included)."""

    def __init__(self, source: io.RawIOBase, chunk_bytes: int) -> None:
        self._source = source
        self._chunk_bytes = chunk_bytes
        self._decompressor = zlib.decompressobj(wbits=31)
        self._input = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while True:
            if not self._input:
                self._input = self._source.read(self._chunk_bytes) or b""
                if not self._input:
                    if self._decompressor.eof:
                        return 0
                    raise EOFError("the gzip stream ends before its end marker: the archive is truncated")
            if self._decompressor.eof:
                # Another gzip member follows, or the zero padding some tools append.
                self._input = self._input.lstrip(b"\0")
                if not self._input:
                    continue
                self._decompressor = zlib.decompressobj(wbits=31)
            data = self._decompressor.decompress(self._input, len(buffer))
            self._input = (
                self._decompressor.unused_data
                if self._decompressor.eof
                else self._decompressor.unconsumed_tail
            )
            if data:
                buffer[: len(data)] = data
                return len(data)


# ustar typeflags (POSIX pax, GNU tar) of the headers that describe the member after them.
_EXTENDED_TYPES = frozenset(b"xgXLK")
_TAR_BLOCK = 512


def _tar_number(field: bytes) -> int | None:
    """A ustar numeric field: NUL/space-terminated octal, or GNU base-256 (first byte 0x80, or 0xff when
    negative); None when it is neither."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None


def _extended_header_size(block: bytes) -> int | None:
    """The data size of `block` when it is a well-formed extended header (pax, GNU long name), else None."""
    if len(block) != _TAR_BLOCK or block[156] not in _EXTENDED_TYPES:
        return None
    field = block[148:156]
    # The checksum counts its own field as spaces; old tars summed signed bytes, so both sums are valid.
    unsigned = sum(block) - sum(field) + 8 * ord(" ")
    signed = unsigned - 256 * sum(byte >= 128 for byte in block[:148] + block[156:])
    if _tar_number(field) not in (unsigned, signed):
        return None
    return _tar_number(block[124:136])


class _ExtendedHeaderGuard(io.RawIOBase):
    """The tar stream on its way to tarfile, with every extended header (pax, GNU long name) checked before
    tarfile reads it: at most `_EXTENDED_HEADER_LIMIT` bytes each, `_MAX_EXTENDED_HEADERS` before one member.

    tarfile reads each extended header whole and the next header recursively, holding them all (a chain of
    1,000 pax headers of 1 MiB costs 1 GB). The guard reads the header blocks itself (the ustar layout is
    POSIX's): it hands tarfile nothing past a header it has not checked. Where a member's data ends is
    tarfile's to say (pax `size`, sparse maps), so after a member header the guard waits for `member_read`
    with the member tarfile made of it; meanwhile tarfile may read at most `_EXTENDED_HEADER_LIMIT` bytes
    more (a GNU sparse map, refused as a member kind right after).
    """

    def __init__(self, source: io.RawIOBase) -> None:
        self._source = source
        self._position = 0
        self._next_header: int | None = 0
        """Where the next header to check starts; None while tarfile reads a member header."""
        self._unchecked = 0
        """Bytes handed to tarfile since the member header it has not returned yet."""
        self._extended_headers = 0
        self._ended = False

    def readable(self) -> bool:
        return True

    def member_read(self, member: tarfile.TarInfo) -> None:
        """tarfile returned `member`: its next header follows the member's data (none for a directory)."""
        extent = -(-member.size // _TAR_BLOCK) * _TAR_BLOCK if member.isfile() else 0
        self._next_header = max(member.offset_data + extent, self._position)
        self._unchecked = 0
        self._extended_headers = 0

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fills `buffer` as the source would (so gzip's end is reached as early as without the guard), but
        stops after a member header: the member's extent is tarfile's to say."""
        filled = 0
        while filled < len(buffer) and (self._next_header is not None or not filled):
            data = self._next_bytes(len(buffer) - filled)
            if not data:
                break
            buffer[filled : filled + len(data)] = data
            filled += len(data)
            self._position += len(data)
        return filled

    def _next_bytes(self, wanted: int) -> bytes:
        if self._next_header is None:
            data = self._source.read(min(wanted, _EXTENDED_HEADER_LIMIT + 1 - self._unchecked)) or b""
            self._unchecked += len(data)
            if self._unchecked > _EXTENDED_HEADER_LIMIT:
                raise _hostile(f"tar headers of more than {_EXTENDED_HEADER_LIMIT} bytes before one member")
            return data
        if self._ended or self._position < self._next_header:
            limit = wanted if self._ended else min(wanted, self._next_header - self._position)
            return self._source.read(limit) or b""
        block = read_exact(self._source, _TAR_BLOCK)
        size = _extended_header_size(block)
        if block == bytes(_TAR_BLOCK):
            # tarfile ends the archive at its first zero block and reads no header after it.
            self._ended = True
        elif size is None or size < 0:
            self._next_header = None  # a member, or garbage: tarfile decides
        else:
            self._check_extended_header(size)
            self._next_header += _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK
        return block

    def _check_extended_header(self, size: int) -> None:
        if size > _EXTENDED_HEADER_LIMIT:
            raise _hostile(
                f"an extended tar header claims {size} bytes (at most {_EXTENDED_HEADER_LIMIT} expected)"
            )
        self._extended_headers += 1
        if self._extended_headers > _MAX_EXTENDED_HEADERS:
            raise _hostile(
                f"more than {_MAX_EXTENDED_HEADERS} extended tar headers in a row before one member"
            )


def _hostile(problem: str) -> ModelArchiveError:
    return ModelArchiveError(problem, "The archive is corrupt or hostile; do not use it")


class _HashingReader:
    """Reads from a member, hashing and forwarding every byte read to a writer."""

    def __init__(self, source: ByteReader, writer: ModelWriter) -> None:
        self._source = source
        self._writer = writer
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, count: int = -1) -> bytes:
        data = self._source.read(count)
        self.sha256.update(data)
        self._writer.write(data)
        self.size += len(data)
        return data


@dataclass
class _Candidate:
    path: str
    preferred: bool
    writer: ModelWriter | None = None
    result: UnpackResult | None = None
    error: ModelArchiveError | None = None


@dataclass
class _Unpacker:
    sink: ModelSink
    output_name: str | None
    limits: UnpackLimits
    chunk_bytes: int
    architecture: Architecture
    epoch_sink: ModelSink | None = None
    sample_sink: ModelSink | None = None
    candidates: list[_Candidate] = field(default_factory=list)
    copied: _Candidate | None = None
    """The candidate read so far that can still be the answer (a preferred one replaces any other)."""
    members: int = 0
    total_bytes: int = 0
    current: str | None = None
    unopened: list[str] = field(default_factory=list)
    """Archives nested deeper than `max_nesting`."""
    epoch_writers: list[tuple[ModelWriter, EpochLora]] = field(default_factory=list)
    """Open writers of the epoch LoRAs, closed only once the archive was read whole (samples are held
    in `samples` and written then)."""
    samples: dict[str, bytes] = field(default_factory=dict)
    samples_skipped: int = 0

    def scan(self, stream: ByteReader, what: str, prefix: str, depth: int) -> None:
        try:
            archive = _open_tar(stream, self.chunk_bytes, what)
            for member in self._members(archive, prefix):
                path = prefix + member.name
                if member.isdir():
                    continue
                reader = archive.extractfile(member)
                assert reader is not None  # regular files only reach here
                name = PurePosixPath(member.name)
                if (epoch := self._epoch_of(name)) is not None:
                    self._take_epoch(name.name, epoch, member.size, reader)
                elif name.parent.name == SAMPLES_FOLDER and name.suffix.lower() in SAMPLE_SUFFIXES:
                    self._take_sample(name.name, member.size, reader)
                elif member.name.lower().endswith(".safetensors"):
                    self._take_candidate(member, path, reader)
                elif member.name.lower().endswith(_NESTED_SUFFIXES):
                    if depth < self.limits.max_nesting:
                        self.scan(reader, f"nested archive {path!r}", f"{path}!/", depth + 1)
                    else:
                        self.unopened.append(path)
        except (tarfile.TarError, EOFError, zlib.error) as error:
            raise ModelArchiveError(
                f"the archive is truncated or corrupt ({error})",
                "Re-run the job, or check its output: an upload cut short leaves a broken model.tar.gz",
                self.current,
            ) from error

    def _members(self, archive: _StreamedTar, prefix: str) -> Iterator[tarfile.TarInfo]:
        for member in archive:
            path = prefix + member.name
            self.current = path
            self.members += 1
            if self.members > self.limits.max_members:
                raise ModelArchiveError(
                    f"more than {self.limits.max_members} members",
                    "The model folder should hold the LoRA and a few small files; check what the job saves",
                )
            _check_member_kind(member, path)
            self.total_bytes += member.size
            if member.size > self.limits.max_member_bytes:
                raise ModelArchiveError(
                    f"claims {member.size:,} bytes, above the {self.limits.max_member_bytes:,}-byte limit per "
                    "member (an SDXL LoRA is at most a few GB)",
                    "The archive is corrupt or holds something else than a LoRA; raise "
                    "UnpackLimits.max_member_bytes only for a genuinely larger LoRA",
                    path,
                )
            if self.total_bytes > self.limits.max_total_bytes:
                raise ModelArchiveError(
                    f"the members add up to more than {self.limits.max_total_bytes:,} bytes",
                    "Save only the LoRA in the model folder (checkpoints belong in /opt/ml/checkpoints)",
                    path,
                )
            yield member

    def _epoch_of(self, name: PurePosixPath) -> int | None:
        if self.output_name is None or self.epoch_sink is None or name.parent.name != EPOCHS_FOLDER:
            return None
        match = re.fullmatch(rf"{re.escape(self.output_name)}-(\d{{6}})\.safetensors", name.name)
        return int(match[1]) if match else None

    def _take_epoch(self, name: str, epoch: int, size: int, reader: ByteReader) -> None:
        """An epoch LoRA is checked as the LoRA is (`check_lora_stream`, the run's architecture); one that
        fails is left out: only the final LoRA can fail the unpack."""
        assert self.epoch_sink is not None
        writer = self.epoch_sink.open(name)
        tee = _HashingReader(reader, writer)
        if not check_lora_stream(tee, size, self.architecture, self.chunk_bytes).accepted:
            writer.abort()
            return
        while tee.read(self.chunk_bytes):
            pass
        self.epoch_writers.append(
            (writer, EpochLora(name=name, epoch=epoch, size=tee.size, sha256=tee.sha256.hexdigest()))
        )

    def _take_sample(self, name: str, size: int, reader: ByteReader) -> None:
        held = sum(len(data) for data in self.samples.values())
        if self.sample_sink is None or held + size > self.limits.max_sample_bytes:
            self.samples_skipped += 1
            return
        self.samples[name] = (
            reader.read()
        )  # written at `finish`: an upload held open per sample costs threads

    def _take_candidate(self, member: tarfile.TarInfo, path: str, reader: ByteReader) -> None:
        preferred = PurePosixPath(member.name).name == f"{self.output_name}.safetensors"
        candidate = _Candidate(path, preferred)
        self.candidates.append(candidate)
        held = self.copied
        if held is not None and (held.preferred or not preferred):
            return  # cannot be the one: tarfile skips its data
        if held is not None and held.writer is not None:
            held.writer.abort()
            held.writer = None
        self.copied = candidate
        self._copy(candidate, member, reader)

    def _copy(self, candidate: _Candidate, member: tarfile.TarInfo, reader: ByteReader) -> None:
        name = f"{self.output_name}.safetensors" if self.output_name else PurePosixPath(member.name).name
        writer = self.sink.open(name)
        candidate.writer = writer
        tee = _HashingReader(reader, writer)
        check = check_lora_stream(tee, member.size, self.architecture, self.chunk_bytes)
        if check.problems or check.header is None or check.summary is None:
            writer.abort()
            candidate.writer = None
            candidate.error = ModelArchiveError(
                f"{'not an SDXL LoRA' if check.summary is None else 'not a usable LoRA'}: "
                + "; ".join(check.problems),
                "The job must save a trained network (sdxl_train_network.py, networks.lora) as .safetensors",
                candidate.path,
                lora=check,
            )
            if candidate.preferred:
                raise candidate.error
            return
        candidate.result = UnpackResult(
            name=name,
            size=tee.size,
            sha256=tee.sha256.hexdigest(),
            member=candidate.path,
            summary=check.summary,
            metadata=check.header.metadata,
            alphas=check.alphas,
        )

    def finish(self) -> UnpackResult:
        self.current = None
        preferred = [c for c in self.candidates if c.preferred]
        if len(preferred) > 1:
            raise ModelArchiveError(
                f"several members are named {self.output_name}.safetensors: {[c.path for c in preferred]}",
                "Leave one LoRA with that name in the model folder",
            )
        if not self.candidates:
            deeper = f" (archives nested too deep were not opened: {self.unopened})" if self.unopened else ""
            raise ModelArchiveError(
                f"no .safetensors file in the archive{deeper}",
                "Training saved no LoRA: check the job log for 'No data found' and that save_model_as is "
                "safetensors",
            )
        if not preferred and len(self.candidates) > 1:
            named = f" and none is {self.output_name}.safetensors" if self.output_name else ""
            raise ModelArchiveError(
                f"{len(self.candidates)} .safetensors files{named}: {[c.path for c in self.candidates]}",
                "Set output_name in pipeline.toml to the one to keep, or save only the final LoRA",
            )
        chosen = preferred[0] if preferred else self.candidates[0]
        assert chosen is self.copied
        if chosen.error is not None:
            raise chosen.error
        assert chosen.result is not None and chosen.writer is not None
        chosen.writer.close()
        chosen.writer = None
        for writer, _ in self.epoch_writers:
            writer.close()
        if self.sample_sink is not None:
            for name, data in self.samples.items():
                writer = self.sample_sink.open(name)
                try:
                    writer.write(data)
                except BaseException:
                    writer.abort()
                    raise
                writer.close()
        return chosen.result.model_copy(
            update={
                "epochs": sorted((e for _, e in self.epoch_writers), key=lambda e: e.epoch),
                "samples": dict(sorted(self.samples.items())),
                "samples_skipped": self.samples_skipped,
            }
        )

    def abort(self) -> None:
        for candidate in self.candidates:
            if candidate.writer is not None:
                candidate.writer.abort()
                candidate.writer = None
        for writer, _ in self.epoch_writers:
            writer.abort()
        self.epoch_writers = []


def _check_member_kind(member: tarfile.TarInfo, path: str) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or "\\" in member.name:
        raise ModelArchiveError(
            "the path is absolute, climbs out with '..' or uses backslashes",
            "Refusing a path-traversal member: the archive was not written by the training container",
            path,
        )
    if member.issym() or member.islnk():
        raise ModelArchiveError(
            f"is a {'symbolic' if member.issym() else 'hard'} link to {member.linkname!r}",
            "Save real files in /opt/ml/model (copy instead of linking)",
            path,
        )
    if not (member.isfile() or member.isdir()) or member.issparse():
        raise ModelArchiveError(
            "is a device, FIFO or sparse file", "Save only regular files in /opt/ml/model", path
        )
