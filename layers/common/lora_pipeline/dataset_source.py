"""Where a dataset's files (`DatasetSource`) and other objects the rules read, such as a base model in S3
(`ObjectReader`), come from. The rules only see these interfaces.

`LocalFolder` reads a folder on disk; the S3 implementation lives in `lora_pipeline.aws.s3_source`.
Paths are POSIX paths relative to the dataset root (`10_bluebot/img01.png`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int


class DatasetSource(Protocol):
    @property
    def location(self) -> str:
        """Human-readable location of the dataset root (a folder path or an s3:// URI)."""
        ...

    @property
    def parallel_reads(self) -> int:
        """How many reads may run at once to good effect (the validator's thread count)."""
        ...

    def list_files(self) -> list[FileEntry]:
        """Every file below the dataset root, recursively, sorted by path."""
        ...

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """Up to `length` bytes from offset `start` (fewer at the end of the file). Must be thread-safe."""
        ...

    def read_small(self, path: str, limit: int) -> bytes | None:
        """A whole small file (captions, TOML settings), or None when it is longer than `limit` bytes.
        Reads at most `limit + 1` bytes, so a huge file costs no more than a small one."""
        ...

    def read_all(self, path: str) -> bytes:
        """A whole image for the decode pass (the images' sizes are known from the listing). Must be
        thread-safe."""
        ...


class LocalFolder:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def parallel_reads(self) -> int:
        return 16

    def list_files(self) -> list[FileEntry]:
        entries = [
            FileEntry(p.relative_to(self.root).as_posix(), p.stat().st_size)
            for p in self.root.rglob("*")
            if p.is_file()
        ]
        return sorted(entries, key=lambda e: e.path)

    def read_range(self, path: str, start: int, length: int) -> bytes:
        with open(self.root / path, "rb") as f:
            f.seek(start)
            return f.read(length)

    def read_small(self, path: str, limit: int) -> bytes | None:
        with open(self.root / path, "rb") as f:
            data = f.read(limit + 1)
        return data if len(data) <= limit else None

    def read_all(self, path: str) -> bytes:
        return (self.root / path).read_bytes()


class ObjectUnreadable(Exception):
    """An object outside the dataset could not be read; `missing` is True when it does not exist."""

    def __init__(self, message: str, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


class ObjectReader(Protocol):
    """Reads byte ranges of objects named by URI (the base model checkpoint); raises ObjectUnreadable."""

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """Up to `length` bytes from offset `start` (fewer at the end of the object)."""
        ...
