"""Recipient CSV import against real SQLite files."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mailctl.cli import run
from mailctl.errors import InputError, InvalidAddress, MailctlError
from mailctl.recipients.address import normalise_address
from mailctl.recipients.csv_import import import_csv
from mailctl.store.sqlite import SqliteStore


@pytest.fixture()
def store(tmp_path: Path):
    with SqliteStore.open(tmp_path / "m.db") as s:
        yield s


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Ada@Example.COM ", ("Ada@example.com", "example.com")),
        ("o'brien+tag@sub.example.org", ("o'brien+tag@sub.example.org", "sub.example.org")),
        ("user@bücher.example", ("user@xn--bcher-kva.example", "xn--bcher-kva.example")),
        ('"john doe"@example.com', ('"john doe"@example.com', "example.com")),
    ],
)
def test_addresses_normalise_to_their_canonical_form(raw: str, expected: tuple[str, str]) -> None:
    assert normalise_address(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "plain",
        "@example.com",
        "a@b",
        "a..b@example.com",
        "a@-x.com",
        "a@ex ample.com",
        "ü@example.com",
        "a@example.c0m",
        "x" * 65 + "@example.com",
    ],
)
def test_invalid_addresses_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidAddress):
        normalise_address(raw)


def test_invalid_address_is_a_value_error_in_the_family_and_names_the_address() -> None:
    with pytest.raises(InvalidAddress) as info:
        normalise_address("  alice.example.com ")
    error = info.value
    assert isinstance(error, MailctlError) and isinstance(error, ValueError)
    assert error.address == "alice.example.com"
    assert str(error) == "'alice.example.com' has no @"


def test_database_file_is_created_private(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path / "new.db").close()
    assert stat.S_IMODE(os.stat(tmp_path / "new.db").st_mode) == 0o600


def test_import_bom_fields_and_reimport(store: SqliteStore, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "a.csv",
        "\ufeffEmail,first_name,plan\nada@example.com,Ada,pro\nbob@example.net,Bob,free\n",
    )
    summary = import_csv(store, path, list_name="l")
    assert (summary.rows, summary.imported, summary.invalid) == (2, 2, 0)
    rows = list(store.iter_recipients("l"))
    assert rows[0]["fields"] == {"first_name": "Ada", "plan": "pro"}
    again = import_csv(store, path, list_name="l")
    assert (again.imported, again.updated, again.unchanged) == (0, 0, 2)


def test_latin1_with_encoding_and_decode_error_names_line(
    store: SqliteStore, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "l.csv", "email,name\na@example.com,Zoë\nb@example.com,José\n", "latin-1"
    )
    with pytest.raises(InputError, match=r"l\.csv:2: cannot decode as utf-8"):
        import_csv(store, path)
    assert store.count_recipients() == 0  # nothing half-imported
    summary = import_csv(store, path, encoding="latin-1")
    assert summary.imported == 2
    assert [r["fields"]["name"] for r in store.iter_recipients()] == ["Zoë", "José"]


def test_quoted_fields_bad_rows_and_rejects_file(store: SqliteStore, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "q.csv",
        "email,company,note\n"
        'a@example.com,"Acme, Inc.",fine\n'  # line 2: comma inside quotes
        'b@example.com,"Multi\nLine",x\n'  # line 3-4: newline in a field -> reject
        "not-an-address,Foo,x\n"  # line 5
        "c@example.com,too,many,columns\n"  # line 6
        'd@example.com,"Quote ""q""",ok\n',  # line 7
    )
    rejects_path = tmp_path / "rejects.csv"
    from mailctl.recipients.csv_import import RejectsWriter

    writer = RejectsWriter(rejects_path)
    summary = import_csv(store, path, on_reject=writer)
    writer.close()
    assert (summary.rows, summary.imported, summary.invalid) == (5, 2, 3)
    emails = [r["email"] for r in store.iter_recipients()]
    assert emails == ["a@example.com", "d@example.com"]
    assert store.suppression_for("a@example.com") is None
    fields = {r["email"]: r["fields"] for r in store.iter_recipients()}
    assert fields["a@example.com"]["company"] == "Acme, Inc."
    assert fields["d@example.com"]["company"] == 'Quote "q"'
    rejected = list(csv.reader(rejects_path.open(newline="")))
    assert rejected[0] == ["line", "reason", "email", "company", "note"]
    assert [(r[0], r[1].split(":")[0]) for r in rejected[1:]] == [
        ("3", "line break inside a field (possible header injection)"),
        ("5", "invalid address"),
        ("6", "expected 3 columns, found 4"),
    ]
    assert rejected[3][2:] == ["c@example.com", "too", "many", "columns"]  # nothing dropped


def test_duplicates_merge_latest_wins_and_skip_existing(store: SqliteStore, tmp_path: Path) -> None:
    first = write_csv(tmp_path / "1.csv", "email,plan\na@example.com,free\nA@EXAMPLE.com,pro\n")
    summary = import_csv(store, first)
    # One person whatever the case: the first spelling stays, the later row's fields win.
    assert (summary.imported, summary.duplicates) == (1, 1)
    assert [(r["email"], r["fields"]) for r in store.iter_recipients()] == [
        ("a@example.com", {"plan": "pro"})
    ]
    dup = write_csv(tmp_path / "2.csv", "email,plan\nb@example.com,free\nb@Example.com,team\n")
    summary = import_csv(store, dup)
    assert (summary.imported, summary.duplicates) == (1, 1)
    assert next(r for r in store.iter_recipients() if r["email"] == "b@example.com")["fields"] == {
        "plan": "team"
    }
    update = write_csv(tmp_path / "3.csv", "email,plan,city\nb@example.com,pro,Oslo\n")
    skipped = import_csv(store, update, skip_existing=True)
    assert (skipped.updated, skipped.unchanged) == (0, 1)
    merged = import_csv(store, update)
    assert merged.updated == 1
    b = next(r for r in store.iter_recipients() if r["email"] == "b@example.com")
    assert b["fields"] == {"plan": "pro", "city": "Oslo"}


def test_suppressed_addresses_counted(store: SqliteStore, tmp_path: Path) -> None:
    store.suppress("a@example.com", "hard_bounce")
    store.suppress("*@blocked.example", "manual")
    path = write_csv(
        tmp_path / "s.csv", "email\na@example.com\nz@blocked.example\nok@example.com\n"
    )
    summary = import_csv(store, path)
    assert (summary.imported, summary.suppressed) == (3, 2)


def test_sniffed_and_explicit_delimiters_and_email_column(
    store: SqliteStore, tmp_path: Path
) -> None:
    semi = write_csv(tmp_path / "semi.csv", "mail;name\na@example.com;A\n")
    assert import_csv(store, semi, email_column="mail").imported == 1
    tabs = write_csv(tmp_path / "tab.tsv", "email\tname\nb@example.com\tB\n")
    assert import_csv(store, tabs, delimiter="\\t").imported == 1
    with pytest.raises(InputError, match=r"no 'email' column"):
        import_csv(store, semi)


def test_empty_or_missing_csv_is_an_input_error(store: SqliteStore, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty"):
        import_csv(store, write_csv(tmp_path / "e.csv", ""))
    with pytest.raises(InputError, match="cannot open"):
        import_csv(store, tmp_path / "missing.csv")


def test_cli_import_json_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_csv(tmp_path / "c.csv", "email,name\na@example.com,A\nbad,B\n")
    db = str(tmp_path / "cli.db")
    assert run(["--db", db, "recipients", "import", str(path), "--list", "x", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {
        k: summary[k]
        for k in ("rows", "imported", "updated", "unchanged", "duplicates", "invalid", "suppressed")
    } == {
        "rows": 2,
        "imported": 1,
        "updated": 0,
        "unchanged": 0,
        "duplicates": 0,
        "invalid": 1,
        "suppressed": 0,
    }
    assert run(["--db", db, "recipients", "count", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"total": 1, "lists": {"x": 1}}
    assert run(["--db", db, "recipients", "list", "--list", "x", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "email": "a@example.com",
        "fields": {"name": "A"},
    }
    assert run(["--db", db, "recipients", "import", str(tmp_path / "nope.csv")]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("Error: ") and "nope.csv: cannot open" in err and len(err.splitlines()) == 1
    )
    assert run(["--db", db, "recipients", "import"]) == 2  # usage error
    assert run(["--db", db, "recipients", "list", "--list", "nope"]) == 1


def test_python_m_mailctl_and_env_db(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", "email\na@example.com\n")
    env = {**os.environ, "MAILCTL_DB": str(tmp_path / "env.db")}
    result = subprocess.run(
        [sys.executable, "-m", "mailctl", "recipients", "import", str(path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["imported"] == 1
    assert (tmp_path / "env.db").exists()
    version = subprocess.run(
        [sys.executable, "-m", "mailctl", "--version"], capture_output=True, text=True, check=False
    )
    assert version.returncode == 0 and version.stdout.startswith("mailctl ")
