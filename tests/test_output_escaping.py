"""Output is never markup: untrusted text (CSV fields, addresses, reply texts, file paths)
prints as it is through Rich, with no markup error and no ANSI escape reaching the screen."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.workspace import cli, make_workspace
from tests.hostile_smtp import HostileServer, Script

MARKUP = "[/] [bold]x[/bold]"
ANSI = "\x1b[31mred\x1b[0m"
HOSTILE_LOCAL = '"[/][bold]"@example.com'


def squeezed(text: str) -> str:
    """Output without whitespace: table cells wrap long values at any character."""
    return "".join(text.split()).replace("│", "").replace("┃", "")


def hostile_workspace(tmp_path: Path, port: int) -> tuple[Path, Path]:
    ws = make_workspace(tmp_path, port, rows=0)
    (ws / "[bold]a[").mkdir()
    csv = ws / "[bold]a[" / "]list.csv"  # the path holds "[bold]a[/]list.csv"
    csv.write_text(
        "email,first_name\n"
        f'"{HOSTILE_LOCAL.replace(chr(34), chr(34) * 2)}","{MARKUP}"\n'
        f"ansi@example.com,{ANSI}\n"
    )
    campaign = (ws / "c.yaml").read_text().replace("recipients: list.csv", f"recipients: '{csv}'")
    # The campaign file's path holds "[bold]a[/]c.yaml".
    (csv.parent / "]c.yaml").write_text(campaign)
    return ws, csv


def run(ws: Path, capsys, *args: str) -> str:
    code = cli(ws, *args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    text = captured.out + captured.err
    assert "MarkupError" not in text and "internal error" not in text
    assert "\x1b" not in text
    return text


def test_recipients_import_and_list_print_fields_and_paths_as_they_are(
    tmp_path: Path, capsys
) -> None:
    ws, csv = hostile_workspace(tmp_path, 2525)
    imported = run(ws, capsys, "recipients", "import", str(csv), "--list", "l")
    assert "[bold]a[/]list.csv" in squeezed(imported)
    listed = run(ws, capsys, "recipients", "list", "--list", "l")
    assert squeezed(HOSTILE_LOCAL) in squeezed(listed)
    assert squeezed(MARKUP) in squeezed(listed)
    assert "?[31mred?[0m" in squeezed(listed)


def test_a_rejected_row_and_its_path_print_as_they_are(tmp_path: Path, capsys) -> None:
    ws, csv = hostile_workspace(tmp_path, 2525)
    with csv.open("a") as handle:
        handle.write(f"[/]{ANSI}@,x\n")
    text = run(ws, capsys, "recipients", "import", str(csv))
    assert squeezed(f"{csv}:4: rejected: invalid address: '[/]?[31mred?[0m@'") in squeezed(text)


def test_suppress_list_prints_addresses_and_sources_as_they_are(tmp_path: Path, capsys) -> None:
    ws = make_workspace(tmp_path, 2525, rows=0)
    run(ws, capsys, "suppress", "add", HOSTILE_LOCAL)
    (ws / "x[").mkdir()
    imported = ws / "x[" / "]bad.csv"
    imported.write_text('address\n"""[bold]x""@example.com"\n')
    run(ws, capsys, "suppress", "import", str(imported))
    listed = run(ws, capsys, "suppress", "list")
    assert squeezed(HOSTILE_LOCAL) in squeezed(listed)
    assert '"[bold]x"@example.com' in squeezed(listed)
    assert "import:]bad.csv" in squeezed(listed)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_campaign_show_and_report_print_reply_texts_as_they_are(
    hostile_server: Callable[[Script], HostileServer], tmp_path: Path, capsys
) -> None:
    reply = b"550 5.1.1 [/] [bold]no such user \x1b[31m here\r\n"
    server = hostile_server(Script(replies={"RCPT": reply}))
    ws, csv = hostile_workspace(tmp_path, server.port)
    (ws / "profiles.yaml").write_text(
        (ws / "profiles.yaml").read_text()
        + textwrap.indent("breakers: {bounce_rate: 1, min_sent: 1000}\n", "    ")
    )
    run(ws, capsys, "send", str(csv.parent / "]c.yaml"), "--json")
    said = squeezed("550 5.1.1 [/] [bold]no such user ?[31m here")
    shown = squeezed(run(ws, capsys, "campaign", "show", "news"))
    assert "[bold]a[/]c.yaml" in shown and said in shown
    assert said in squeezed(run(ws, capsys, "report", "news"))
