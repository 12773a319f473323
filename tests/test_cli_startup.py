"""CLI start-up: the root lists every command without importing it, and loads one on use.

Behaviour, not timing (the figures are in bench/startup_bench.py): which modules a fresh
process has imported after `import mailctl.cli`, `mailctl --help` and shell completion, and
that the root's table of short helps says what each command's own help says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer._click import Context
from typer._click.utils import make_default_short_help

from mailctl.cli import COMMANDS, app, run

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / "mailctl" / "cli"
# What a short command must not pay for: the domain and the heavy libraries behind it.
HEAVY = (
    "jinja2",
    "aiosmtplib",
    "aiosmtpd",
    "dns",
    "starlette",
    "uvicorn",
    "yaml",
    "cryptography",
    "rich.progress",
    "email.message",
    "mailctl.store",
    "mailctl.config",
    "mailctl.delivery",
    "mailctl.replies",
)


def imported_after(code: str, env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """Run `code` in a fresh interpreter; its stdout and the modules it imported (sorted)."""
    script = (
        "import contextlib, io, json, sys\n"
        "out = io.StringIO()\n"
        f"with contextlib.redirect_stdout(out):\n    {code}\n"
        "print(json.dumps([out.getvalue(), sorted(sys.modules)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=REPO,
    )
    stdout, modules = json.loads(done.stdout.splitlines()[-1])
    return stdout, modules


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def command_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m.removeprefix("mailctl.cli.") in COMMANDS]


def test_importing_the_cli_imports_no_command_module_and_none_of_the_domain() -> None:
    _, modules = imported_after("import mailctl.cli")
    assert "mailctl.cli" in modules
    assert command_modules(modules) == []
    assert heavy(modules) == []


def test_root_help_lists_every_command_without_importing_one() -> None:
    stdout, modules = imported_after("from mailctl.cli import run\n    assert run(['--help']) == 0")
    listed = stdout.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == list(COMMANDS)
    assert command_modules(modules) == []
    assert heavy(modules) == []


def test_a_command_imports_its_own_module_and_no_other_command() -> None:
    _, modules = imported_after(
        "from mailctl.cli import run\n    assert run(['dkim', '--help']) == 0"
    )
    assert command_modules(modules) == ["mailctl.cli.dkim"]


def test_shell_completion_lists_commands_from_the_table_without_importing_them() -> None:
    stdout, modules = imported_after(
        "from mailctl.cli import run\n    run([])",
        env={"_MAILCTL_COMPLETE": "complete_bash", "COMP_WORDS": "mailctl s", "COMP_CWORD": "1"},
    )
    assert stdout.split() == ["send", "sim", "suppress"]
    assert command_modules(modules) == []


def test_shell_completion_of_a_group_loads_that_group() -> None:
    stdout, modules = imported_after(
        "from mailctl.cli import run\n    run([])",
        env={
            "_MAILCTL_COMPLETE": "complete_bash",
            "COMP_WORDS": "mailctl queue d",
            "COMP_CWORD": "2",
        },
    )
    assert stdout.split() == ["drop"]
    assert command_modules(modules) == ["mailctl.cli.queue"]


def test_each_short_help_in_the_table_is_the_first_sentence_of_the_commands_own_help() -> None:
    root = typer.main.get_command(app)
    ctx = Context(root, info_name="mailctl")
    for name, entry in COMMANDS.items():
        command = root.get_command(ctx, name)
        assert command is not None, name
        assert isinstance(command, typer.core.TyperGroup) == entry.group, name
        for limit in (45, 60, 1000):
            assert make_default_short_help(entry.short_help, limit) == (
                command.get_short_help_str(limit)
            ), (name, limit)


def test_every_module_that_exports_a_typer_app_is_in_the_table() -> None:
    exporting = {
        path.stem
        for path in CLI.glob("*.py")
        if path.stem != "__init__" and "\napp = typer.Typer(" in path.read_text(encoding="utf-8")
    }
    assert exporting == set(COMMANDS)


def test_a_mistyped_command_is_refused_with_the_closest_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["sen"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "Error: No such command 'sen'. Did you mean 'send'?"
    )


def test_groups_without_a_command_show_their_help_unless_they_act_on_their_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["dkim"]) == 2  # a group with nothing of its own: its help, as a usage error
    assert capsys.readouterr().err.startswith("Usage: mailctl dkim [OPTIONS] COMMAND")
    assert run(["--db", str(tmp_path / "m.db"), "queue", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"by": "lane", "waiting": 0, "groups": []}
