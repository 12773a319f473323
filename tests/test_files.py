"""Files are safe: the lock follows no link and truncates nothing else; an output that is an
input is refused; files with recipient data are 0600 and written atomically; CSV exports
escape cells a spreadsheet would run as formulas."""

from __future__ import annotations

import csv
import os
import stat
import textwrap
from pathlib import Path

import pytest

from mailctl.errors import UsageError
from mailctl.files import csv_safe, private_text_file
from mailctl.recipients.csv_import import RejectsWriter
from tests.helpers.workspace import cli, make_workspace

FORMULA = "=cmd|'/Ccalc'!A0@example.com"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_the_lock_never_truncates_the_file_a_link_points_to(
    tmp_path: Path, capsys, link: str
) -> None:
    ws = make_workspace(tmp_path, 2525, rows=1)
    victim = tmp_path / "precious.txt"
    victim.write_text("do not truncate me\n")
    lock = ws / "m.db.lock"
    if link == "symlink":
        lock.symlink_to(victim)
    else:
        os.link(victim, lock)
    code = cli(ws, "send", str(ws / "c.yaml"), "--json")
    err = capsys.readouterr().err
    assert code == 75  # LockedError: EX_TEMPFAIL, as when another run holds the lock
    assert victim.read_text() == "do not truncate me\n"
    expected = (
        "the lock file is a symlink; refusing to follow it"
        if link == "symlink"
        else "the lock file is not a plain file of its own (a link?); remove it"
    )
    assert err == f"Error: {lock}: {expected}\n"


def test_rejects_naming_the_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    source = tmp_path / "list.csv"
    source.write_text("email\nnot-an-address\n" + "a@example.com\n" * 20_000)
    before = source.read_bytes()
    with pytest.raises(UsageError) as raised:
        RejectsWriter(tmp_path / "." / "list.csv", inputs=(source,))
    assert str(raised.value) == (
        f"{tmp_path / '.' / 'list.csv'}: is the input file {source}; choose another output"
    )
    assert source.read_bytes() == before


def test_rejects_are_private_escaped_and_appear_only_when_complete(tmp_path: Path, capsys) -> None:
    ws = make_workspace(tmp_path, 2525, rows=2)
    with (ws / "list.csv").open("a") as handle:
        handle.write("=HYPERLINK(evil),Mallory\n")
    rejects = ws / "bad.csv"
    code = cli(ws, "recipients", "import", str(ws / "list.csv"), "--rejects", str(rejects), "-q")
    assert code == 0, capsys.readouterr().err
    assert mode(rejects) == 0o600
    rows = list(csv.reader(rejects.open()))
    assert rows[0] == ["line", "reason", "email", "first_name"]
    assert rows[1][2:] == ["'=HYPERLINK(evil)", "Mallory"]
    assert [p.name for p in ws.iterdir() if p.name.endswith(".tmp")] == []


def test_suppress_export_is_private_and_escapes_formulas(tmp_path: Path, capsys) -> None:
    ws = make_workspace(tmp_path, 2525, rows=1)
    assert cli(ws, "suppress", "add", FORMULA) == 0
    assert cli(ws, "suppress", "add", "--", "-leading@example.com") == 0
    out = ws / "suppressed.csv"
    out.write_text("old\n")
    os.chmod(out, 0o644)
    assert cli(ws, "suppress", "export", str(out)) == 0, capsys.readouterr().err
    assert mode(out) == 0o600
    addresses = sorted(row[0] for row in list(csv.reader(out.open()))[1:])
    # Suppression keys are lower-cased (one canonical key per address).
    assert addresses == ["'-leading@example.com", "'" + FORMULA.lower()]


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=b", "a=b"),
        (3, 3),
        ("", ""),
    ],
)
def test_csv_cells_that_start_a_formula_are_escaped(cell: object, safe: object) -> None:
    assert csv_safe(cell) == safe


def test_a_failed_private_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("previous\n")
    with pytest.raises(RuntimeError), private_text_file(target) as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_sandbox_outbox_messages_are_private(tmp_path: Path, capsys) -> None:
    ws = make_workspace(tmp_path, 2525, rows=2)
    (ws / "profiles.yaml").write_text(
        textwrap.dedent(f"""\
        default_profile: sandbox
        profiles:
          sandbox:
            transport: sandbox
            outbox: {ws / "outbox"}
            dns: false
        """)
    )
    assert cli(ws, "send", str(ws / "c.yaml"), "--json") == 0, capsys.readouterr().err
    delivered = sorted((ws / "outbox" / "new").iterdir())
    assert len(delivered) == 2
    assert {mode(path) for path in delivered} == {0o600}
    assert list((ws / "outbox" / "tmp").iterdir()) == []
    assert b"To: user0@example.com" in b"".join(path.read_bytes() for path in delivered)


def test_recipients_import_refuses_rejects_naming_its_input(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    ws = make_workspace(tmp_path, 2525, rows=20_000)
    monkeypatch.chdir(ws)
    with (ws / "list.csv").open("a") as handle:
        handle.write("not-an-address,x\nalso bad,y\n")
    before = (ws / "list.csv").read_bytes()
    code = cli(ws, "recipients", "import", str(ws / "list.csv"), "--rejects", "list.csv")
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == (
        f"Error: list.csv: is the input file {ws / 'list.csv'}; choose another output\n"
    )
    assert (ws / "list.csv").read_bytes() == before


def test_the_html_report_is_private(tmp_path: Path, capsys, monkeypatch) -> None:
    ws = make_workspace(tmp_path, 2525, rows=1)
    monkeypatch.chdir(ws)
    assert cli(ws, "recipients", "import", "list.csv", "--list", "l", "-q") == 0
    page = ws / "report.html"
    assert cli(ws, "report", "--html", str(page)) == 0, capsys.readouterr().err
    assert mode(page) == 0o600
    assert page.read_text().lstrip().lower().startswith("<!doctype html>")
