"""Files that hold recipient data, and the send lock: written safely.

Every file mailctl writes with addresses in it (rejects, exports, HTML reports, outbox
messages) is created mode 0600 under a temporary name in the target's directory and renamed
into place when complete, so a reader never sees half a file and no one else can read it.
An output that is the same file as one of the command's inputs is refused before anything
is written. CSV cells that a spreadsheet would run as a formula are escaped (OWASP).
The lock file is opened without following symlinks and is never truncated unless it is a
plain file of ours.

Standard library only: imports nothing of mailctl but errors.
"""

from __future__ import annotations

import contextlib
import csv
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from mailctl.errors import InputError, LockedError, UsageError

PRIVATE_MODE = 0o600

# OWASP "CSV injection": a cell starting with one of these is a formula to a spreadsheet.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a leading ', when it would start a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_safe_row(values: Iterable[Any]) -> list[Any]:
    return [csv_safe(value) for value in values]


def refuse_same_file(output: Path, inputs: Iterable[Path]) -> None:
    """An output that is one of the inputs (by inode, whatever the spelling) is an error."""
    for source in inputs:
        try:
            if output.exists() and source.exists() and os.path.samefile(output, source):
                raise UsageError(f"{output}: is the input file {source}; choose another output")
        except OSError:
            continue


@contextlib.contextmanager
def private_text_file(path: Path, *, inputs: Sequence[Path] = ()) -> Iterator[IO[str]]:
    """Write ``path`` atomically, mode 0600: a temporary file renamed into place on success,
    removed on failure (the old file, if any, stays as it was)."""
    refuse_same_file(path, inputs)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise InputError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        os.fchmod(fd, PRIVATE_MODE)
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def write_private_text(path: Path, text: str, *, inputs: Sequence[Path] = ()) -> None:
    with private_text_file(path, inputs=inputs) as handle:
        handle.write(text)


def write_private_bytes_into(
    directory: Path,
    final_name: str,
    data: bytes,
    *,
    temp_directory: Path | None = None,
    durable: bool = True,
) -> Path:
    """A new file ``final_name`` in ``directory`` (a Maildir's new/, say), mode 0600,
    written under a temporary name first: complete before it appears."""
    fd, temp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=temp_directory or directory)
    try:
        os.fchmod(fd, PRIVATE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        final = directory / final_name
        os.replace(temp, final)
        return final
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


class PrivateCsvWriter:
    """A CSV written atomically, mode 0600, every cell escaped against formulas."""

    def __init__(self, handle: IO[str]) -> None:
        self._writer = csv.writer(handle)

    def writerow(self, values: Iterable[Any]) -> None:
        self._writer.writerow(csv_safe_row(values))


def open_lock(path: Path) -> int:
    """Open (creating) the lock file without following a symlink; refuse anything that is
    not a plain file of its own (a hard link to another file would be truncated)."""
    flags = os.O_CREAT | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, PRIVATE_MODE)
    except OSError as exc:
        if path.is_symlink():
            raise LockedError(
                f"{path}: the lock file is a symlink; refusing to follow it"
            ) from None
        raise LockedError(f"{path}: cannot open the lock file: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise LockedError(
            f"{path}: the lock file is not a plain file of its own (a link?); remove it"
        )
    return fd
