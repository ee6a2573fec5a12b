"""Progress bars on stderr (rich), so that stdout stays clean for results."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

STDERR = Console(stderr=True)


@contextmanager
def bytes_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transfer bar; yields `advance(n_bytes)`, safe to call from the callback of any thread holding a lock."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=STDERR, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
