"""Bounce mailboxes: mbox files, Maildirs, single .eml files, folders of saved messages and
stdin, read as a stream of (source, raw bytes), one message at a time; and the digest that
identifies a raw message, so that a re-import counts nothing twice.

Reads bytes only: parsing a message is `parse`'s job. Must not import the parser, the
store or anything that prints.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mailctl.errors import BounceParseError

__all__ = ["iter_messages", "message_digest", "raw_digest"]


# Headers a mailbox store or a mail client adds to a message it holds (mbox status flags,
# IMAP bookkeeping, lengths): the same report saved elsewhere lacks or differs in them.
_STORE_HEADERS = (
    b"status:",
    b"x-status:",
    b"x-keywords:",
    b"x-uid:",
    b"x-imap:",
    b"x-imapbase:",
    b"content-length:",
    b"lines:",
    b"x-mozilla-status:",
    b"x-mozilla-status2:",
    b"x-mozilla-keys:",
)


def message_digest(raw: bytes) -> str:
    """The identity of a message, whatever container held it: ``bounce_events`` keeps one
    row per digest.

    Taken over the normalised message, so that one report saved as an .eml and delivered
    into an mbox counts once: no mbox "From " line, LF line ends, no trailing white space at
    line ends or blank lines at the end, and none of the headers a mailbox store adds.
    """
    text = raw.replace(b"\r\n", b"\n")
    if text.startswith(b"From "):
        text = text.partition(b"\n")[2]
    head, sep, body = text.partition(b"\n\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line.rstrip())
            continue
        skipping = line.lower().startswith(_STORE_HEADERS)
        if not skipping:
            kept.append(line.rstrip())
    normalised = (
        b"\n".join(kept)
        + sep
        + b"\n".join(line.rstrip() for line in body.split(b"\n")).rstrip(b"\n")
    )
    return hashlib.sha256(normalised).hexdigest()


def raw_digest(raw: bytes) -> str:
    """The digest of the raw bytes, as earlier versions stored it (still honoured, so a
    report imported then is not counted again)."""
    return hashlib.sha256(raw).hexdigest()


def _split_mbox(stream: BinaryIO, name: str) -> Iterator[tuple[str, bytes]]:
    """Stream an mbox: a message starts at a "From " line at the top or after a blank line.

    Reads line by line so memory stays flat on a multi-GB mailbox; the "From " line itself is
    kept (it carries the envelope sender). ">From " quoting is undone (mboxrd).
    """
    index = 0
    lines: list[bytes] = []
    previous_blank = True
    for line in stream:
        if line.startswith(b"From ") and previous_blank:
            if lines and any(chunk.strip() for chunk in lines):
                index += 1
                yield f"{name}#{index}", b"".join(lines)
            lines = [line]
            previous_blank = False
            continue
        if line.startswith(b">") and line.lstrip(b">").startswith(b"From "):
            line = line[1:]
        lines.append(line)
        previous_blank = not line.strip(b"\r\n")
    if lines and any(chunk.strip() for chunk in lines):
        index += 1
        yield f"{name}#{index}", b"".join(lines)


def iter_messages(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(source, raw bytes) for every message in an mbox file, a Maildir, a .eml file or "-"."""
    if str(path) == "-":
        stdin = sys.stdin.buffer
        head = stdin.peek(5)[:5] if hasattr(stdin, "peek") else b""
        if head.startswith(b"From "):
            yield from _split_mbox(stdin, "-")
        else:
            yield "-", stdin.read()
        return
    target = Path(path)
    if target.is_dir():
        folders = [target / "cur", target / "new"]
        if not any(folder.is_dir() for folder in folders):
            # A plain folder of saved messages (.eml files, or mbox files): each file in turn.
            for entry in sorted(target.iterdir()):
                if entry.is_file() and not entry.name.startswith("."):
                    yield from iter_messages(entry)
            return
        for folder in folders:
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                if entry.is_file() and not entry.name.startswith("."):
                    yield str(entry), entry.read_bytes()
        return
    try:
        stream = target.open("rb")
    except OSError as error:
        raise BounceParseError(f"{target}: {error.strerror or error}") from error
    with stream:
        head = stream.read(5)
        stream.seek(0)
        if head == b"From " and target.suffix.lower() != ".eml":
            yield from _split_mbox(stream, str(target))
        else:
            yield str(target), stream.read()
