"""Streaming recipient CSV import: decoding, normalisation, validation, dedup, suppression.

Memory stays flat: rows go to a staging table in batches and are merged at the end.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mailctl import __version__
from mailctl.errors import InputError, InvalidAddress
from mailctl.files import PrivateCsvWriter, private_text_file, refuse_same_file
from mailctl.recipients.address import address_key, normalise_address
from mailctl.store.base import Store
from mailctl.untrusted import printable

BATCH = 5000


@dataclass
class ImportSummary:
    file: str
    list_name: str | None
    rows: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    invalid: int = 0
    suppressed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "list": self.list_name,
            "rows": self.rows,
            "imported": self.imported,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "suppressed": self.suppressed,
        }


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    row: list[str]


class _DecodedLines:
    """Decodes a binary file line by line so a decoding error names its line."""

    def __init__(self, stream: IO[bytes], encoding: str, name: str, digest: Any = None) -> None:
        try:
            self._decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        except LookupError:
            raise InputError(f"{name}: unknown encoding '{encoding}'") from None
        self._stream = stream
        self._name = name
        self._encoding = encoding
        self.line = 0
        self.bytes_read = 0
        self._digest = digest  # a hashlib object fed every byte read, if given

    def __iter__(self) -> Iterator[str]:
        decode = self._decoder.decode
        for raw in self._stream:
            self.line += 1
            self.bytes_read += len(raw)
            if self._digest is not None:
                self._digest.update(raw)
            try:
                yield decode(raw)
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{self._name}:{self.line}: cannot decode as {self._encoding} "
                    f"(byte {raw[exc.start : exc.start + 1]!r} at column {exc.start + 1}); "
                    "use --encoding, e.g. --encoding latin-1"
                ) from None
        try:
            tail = decode(b"", final=True)
        except UnicodeDecodeError:  # the file ends inside a multi-byte character
            raise InputError(
                f"{self._name}:{max(self.line, 1)}: cannot decode as {self._encoding} "
                "(the file ends inside a character); use --encoding, e.g. --encoding latin-1"
            ) from None
        if tail:
            yield tail


def _source_digest(email_column: str | None, delimiter: str | None, encoding: str) -> Any:
    """A hash to feed a file's bytes into: what an import takes from a file depends on the
    bytes, how they are read and the validation rules of this mailctl version."""
    digest = hashlib.sha256()
    how = [__version__, email_column, delimiter, encoding.lower().replace("_", "-")]
    digest.update(json.dumps(how).encode() + b"\n")
    return digest


def source_version(
    path: Path, *, email_column: str | None, delimiter: str | None, encoding: str
) -> str | None:
    """The version of ``path`` an import would record, or None if it cannot be read."""
    digest = _source_digest(email_column, delimiter, encoding)
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return "sha256:" + digest.hexdigest()


def _sniff_delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def import_csv(
    store: Store,
    path: Path,
    *,
    list_name: str | None = None,
    email_column: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8-sig",
    skip_existing: bool = False,
    on_reject: Callable[[Reject, list[str]], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Import a recipient CSV into the store. Rejected rows are reported, never fatal.

    `on_reject(reject, header)` receives each rejected row; `on_progress(bytes, rows)` is
    called every batch.
    """
    name = str(path)
    summary = ImportSummary(file=name, list_name=list_name)
    digest = _source_digest(email_column, delimiter, encoding)
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # accept a BOM whether or not the user said so
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise InputError(f"{name}: cannot open: {exc.strerror}") from None
    with stream:
        lines = _DecodedLines(stream, encoding, name, digest)
        line_iter = iter(lines)
        first = next(line_iter, None)
        while first is not None and not first.strip():
            first = next(line_iter, None)
        if first is None:
            raise InputError(f"{name}: the file is empty (a header row is required)")
        header_line_no = lines.line
        if delimiter is None:
            delimiter = _sniff_delimiter(first)
        elif delimiter in ("\\t", "tab", "TAB"):
            delimiter = "\t"
        if len(delimiter) != 1:
            raise InputError(f"delimiter must be one character, got '{delimiter}'")

        def chained() -> Iterator[str]:
            yield first
            yield from line_iter

        reader = csv.reader(chained(), delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except csv.Error as exc:
            raise InputError(
                f"{name}:{header_line_no}: cannot read the header row: {exc}"
            ) from None
        header = [column.strip() for column in header]
        wanted = (email_column or "email").lower()
        matches = [i for i, column in enumerate(header) if column.lower() == wanted]
        if not matches:
            raise InputError(
                f"{name}:{header_line_no}: no '{email_column or 'email'}' column in the header "
                f"({printable(', '.join(header))}); use --email-column"
            )
        if len(matches) > 1:
            raise InputError(f"{name}:{header_line_no}: the column '{wanted}' appears twice")
        for column in header:
            if not column:
                raise InputError(f"{name}:{header_line_no}: a header column has no name")
        if len(set(c.lower() for c in header)) != len(header):
            raise InputError(f"{name}:{header_line_no}: duplicate column names in the header")
        email_index = matches[0]
        field_names = [c for i, c in enumerate(header) if i != email_index]
        width = len(header)

        store.begin_import()
        try:
            batch: list[tuple[str, str, str, str]] = []
            valid = 0
            dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
            row_start = lines.line + 1
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    summary.rows += 1
                    summary.invalid += 1
                    if on_reject:
                        on_reject(Reject(row_start, f"malformed CSV: {exc}", []), header)
                    row_start = lines.line + 1
                    continue
                line_no = row_start
                row_start = lines.line + 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                summary.rows += 1
                reason = None
                if len(row) != width:
                    reason = f"expected {width} columns, found {len(row)}"
                elif "\n" in (joined := "\x00".join(row)) or "\r" in joined:
                    reason = "line break inside a field (possible header injection)"
                else:
                    try:
                        address, domain = normalise_address(row[email_index])
                    except InvalidAddress as exc:
                        reason = f"invalid address: {exc}"
                if reason is not None:
                    summary.invalid += 1
                    if on_reject:
                        on_reject(Reject(line_no, reason, row), header)
                    continue
                fields = dict(
                    zip(field_names, row[:email_index] + row[email_index + 1 :], strict=True)
                )
                batch.append((address, address_key(address), domain, dumps(fields)))
                valid += 1
                if len(batch) >= BATCH:
                    store.stage_recipients(batch)
                    batch = []
                    if on_progress:
                        on_progress(lines.bytes_read, summary.rows)
            if batch:
                store.stage_recipients(batch)
            summary.duplicates = valid - store.staged_count()
            # The reader ran to the end of the file: the version is that of every byte.
            counts = store.finish_import(
                list_name, skip_existing=skip_existing, source="sha256:" + digest.hexdigest()
            )
        except BaseException:
            store.abort_import()
            raise
        if on_progress:
            on_progress(lines.bytes_read, summary.rows)
    summary.imported = counts.imported
    summary.updated = counts.updated
    summary.unchanged = counts.unchanged
    summary.suppressed = counts.suppressed
    return summary


def import_csv_if_changed(
    store: Store,
    path: Path,
    *,
    list_name: str,
    email_column: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8-sig",
    on_progress: Callable[[int, int], None] | None = None,
) -> ImportSummary | None:
    """`import_csv`, unless the list's last import was this very file version (same bytes,
    read the same way): then None, and nothing is read twice. A cron `send` repeats the
    campaign's import every run; an unchanged 100,000-row list costs a hash, not a merge."""
    known = store.list_source(list_name)
    if known is not None and known == source_version(
        path, email_column=email_column, delimiter=delimiter, encoding=encoding
    ):
        return None
    return import_csv(
        store,
        path,
        list_name=list_name,
        email_column=email_column,
        delimiter=delimiter,
        encoding=encoding,
        on_progress=on_progress,
    )


class RejectsWriter:
    """Writes rejected rows to a CSV with their line number and reason: mode 0600, renamed
    into place when closed, cells escaped against spreadsheet formulas. A rejects file that
    is one of ``inputs`` (the CSV being read) is refused at once."""

    def __init__(self, path: Path, *, inputs: Sequence[Path] = ()) -> None:
        refuse_same_file(path, inputs)
        self.path = path
        self.inputs = tuple(inputs)
        self._stack = contextlib.ExitStack()
        self._writer: PrivateCsvWriter | None = None

    def __call__(self, reject: Reject, header: list[str]) -> None:
        if self._writer is None:
            handle = self._stack.enter_context(private_text_file(self.path, inputs=self.inputs))
            self._writer = PrivateCsvWriter(handle)
            self._writer.writerow(["line", "reason", *header])
        # Line and reason first, so a row with too many columns keeps every value.
        self._writer.writerow([reject.line, reject.reason, *reject.row])

    def close(self) -> None:
        self._stack.close()
