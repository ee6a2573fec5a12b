"""A dataset given as a .zip: unpacked safely into a temporary folder that `validate` and `upload` then read.

The dataset may sit at the zip's root or under one top folder (what "Compress" on macOS and "Send to >
Compressed folder" on Windows make of a folder). macOS metadata (`__MACOSX/`, AppleDouble `._*` files) is
left out.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from lora_pipeline.dataset import SETTINGS_FILES
from lora_pipeline.dataset_source import LocalFolder
from lora_pipeline.kohya_contract import parse_subset_folder

_MACOS_METADATA_FOLDER = "__MACOSX"
_APPLEDOUBLE_PREFIX = "._"
_REZIP = "Zip the dataset folder itself (its files, not links to them) and try again."


class UnsafeZip(ValueError):
    """The zip cannot be used as a dataset; the message names the member (or the zip), the problem and the fix."""


class UnpackedZip(LocalFolder):
    """The unpacked dataset, located (in reports) as the zip it came from: `<zip>` or `<zip>:<top folder>/`."""

    def __init__(self, root: Path, archive: Path, top_folder: str | None) -> None:
        super().__init__(root)
        self._location = f"{archive}:{top_folder}/" if top_folder else str(archive)

    @property
    def location(self) -> str:
        return self._location


def is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip"


def _is_macos_metadata(parts: tuple[str, ...]) -> bool:
    return parts[0] == _MACOS_METADATA_FOLDER or parts[-1].startswith(_APPLEDOUBLE_PREFIX)


def _checked_parts(archive: Path, member: zipfile.ZipInfo) -> tuple[str, ...]:
    """The member's path parts; raises UnsafeZip for a path that would land outside the folder, or a link."""
    name = member.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeZip(f"{archive}: member {member.filename!r} has an absolute path. {_REZIP}")
    if ".." in path.parts:
        raise UnsafeZip(f"{archive}: member {member.filename!r} points outside the zip ('..'). {_REZIP}")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise UnsafeZip(f"{archive}: member {member.filename!r} is a symbolic link. {_REZIP}")
    return tuple(part for part in path.parts if part not in ("", "."))


def _dataset_root(folder: Path) -> Path:
    """`folder`, or its only entry when that is a folder that is not a subset (`<repeats>_<tokens>`) and
    nothing else (settings files included, hidden files aside) sits beside it."""
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        only = entries[0]
        if parse_subset_folder(only.name) is None and only.name not in SETTINGS_FILES:
            return only
    return folder


@contextmanager
def unpacked(archive: Path) -> Iterator[tuple[UnpackedZip, str]]:
    """Unpack `archive` into a temporary folder (removed afterwards); yields the dataset root in it and the
    dataset's name: the top folder's, or the zip's own name when the dataset sits at the zip's root.

    Raises UnsafeZip for a file that is no zip, an absolute or `..` member path, a link member, or a member
    that cannot be read (encrypted, damaged, unsupported compression).
    """
    try:
        zip_file = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise UnsafeZip(f"{archive} is not a readable zip file. Zip the dataset folder again.") from None
    with zip_file, tempfile.TemporaryDirectory(prefix="lora-pipeline-zip-") as temporary:
        target = Path(temporary)
        for member in zip_file.infolist():
            parts = _checked_parts(archive, member)
            if not parts or _is_macos_metadata(parts):
                continue
            destination = target.joinpath(*parts)
            if member.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zip_file.open(member) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
            except (RuntimeError, NotImplementedError, zipfile.BadZipFile, EOFError) as exc:
                raise UnsafeZip(
                    f"{archive}: member {member.filename!r} cannot be read ({exc}). "
                    "Zip the dataset folder again, without a password."
                ) from None
        root = _dataset_root(target)
        top_folder = None if root == target else root.name
        yield UnpackedZip(root, archive, top_folder), top_folder or archive.stem
