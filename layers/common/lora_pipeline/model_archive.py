"""Stream the LoRA out of SageMaker's `model.tar.gz` with bounded memory, checking everything on the way.

The archive is read once, front to back, from a non-seekable stream (an S3 GET body); the chosen
`.safetensors` member goes to a `ModelSink` in chunks while its sha256 is computed and the LoRA is judged
(`safetensors_lora.check_lora_stream`: header, SDXL identity, every tensor's numbers).
Memory stays at a few chunks whatever the archive size: gzip output is produced at most one chunk at a
time (tarfile's own gzip layer would inflate a whole 1 MB compressed read at once, up to ~1 GB of zeros).

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
_EXTENDED_HEADER_CHAIN = 5
_CHAIN_ATTRIBUTE = "_lora_pipeline_header_chain"
_NESTED_SUFFIXES = (".tar.gz", ".tgz", ".tar")
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


def unpack_model_archive(
    source: ByteReader,
    sink: ModelSink,
    *,
    output_name: str | None = None,
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
    unpacker = _Unpacker(sink, output_name, limits or UnpackLimits(), chunk_bytes, architecture)
    try:
        unpacker.scan(source, "model archive", prefix="", depth=0)
        return unpacker.finish()
    except BaseException:
        unpacker.abort()
        raise


def _open_tar(stream: ByteReader, chunk_bytes: int, what: str) -> tarfile.TarFile:
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
    return tarfile.open(fileobj=plain, mode="r|", bufsize=chunk_bytes, tarinfo=_BoundedTarInfo)


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


_EXTENDED_TYPES = frozenset(
    (
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    )
)


class _BoundedTarInfo(tarfile.TarInfo):
    """Bounds the extended headers (pax, GNU long names) tarfile reads into memory before a member.

    tarfile reads each one whole and then reads the next header recursively, holding them all: a chain of
    1,000 pax headers of 1 MiB costs 1 GB. So each is capped at `_EXTENDED_HEADER_LIMIT` bytes (checked in
    the public `frombuf`, before its data is read) and a chain at `_EXTENDED_HEADER_CHAIN` headers (counted
    in the public `fromtarfile`, which tarfile calls once per header of the chain).
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _BoundedTarInfo:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _EXTENDED_TYPES and info.size > _EXTENDED_HEADER_LIMIT:
            raise ModelArchiveError(
                f"an extended tar header claims {info.size} bytes (at most {_EXTENDED_HEADER_LIMIT} expected)",
                "The archive is corrupt or hostile; do not use it",
            )
        return info

    @classmethod
    def fromtarfile(cls, tarfile: tarfile.TarFile) -> _BoundedTarInfo:
        depth: int = getattr(tarfile, _CHAIN_ATTRIBUTE, 0)
        if depth >= _EXTENDED_HEADER_CHAIN:
            raise ModelArchiveError(
                f"more than {_EXTENDED_HEADER_CHAIN - 1} extended tar headers in a row before one member",
                "The archive is corrupt or hostile; do not use it",
            )
        setattr(tarfile, _CHAIN_ATTRIBUTE, depth + 1)
        try:
            return super().fromtarfile(tarfile)
        finally:
            setattr(tarfile, _CHAIN_ATTRIBUTE, depth)


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
    candidates: list[_Candidate] = field(default_factory=list)
    copied: _Candidate | None = None
    """The candidate read so far that can still be the answer (a preferred one replaces any other)."""
    members: int = 0
    total_bytes: int = 0
    current: str | None = None
    unopened: list[str] = field(default_factory=list)
    """Archives nested deeper than `max_nesting`."""

    def scan(self, stream: ByteReader, what: str, prefix: str, depth: int) -> None:
        try:
            archive = _open_tar(stream, self.chunk_bytes, what)
            for member in self._members(archive, prefix):
                path = prefix + member.name
                if member.isdir():
                    continue
                reader = archive.extractfile(member)
                assert reader is not None  # regular files only reach here
                if member.name.lower().endswith(".safetensors"):
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

    def _members(self, archive: tarfile.TarFile, prefix: str) -> Iterator[tarfile.TarInfo]:
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
            # A streamed TarFile still lists every member it has read (pax headers included) in its
            # `members` attribute (not in typeshed, set by TarFile.__init__ since Python 2): drop them.
            archive.members.clear()  # type: ignore[attr-defined]

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
        return chosen.result

    def abort(self) -> None:
        for candidate in self.candidates:
            if candidate.writer is not None:
                candidate.writer.abort()
                candidate.writer = None


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
